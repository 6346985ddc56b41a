"""Checks of what a command will read and write, run before any work starts.

Config validation (``raylam.config``) sees one value at a time; these checks look at the world the
values point to: the dataset (its label budget), local folders (background videos, outputs) and
remote storage (an ``s3://`` bucket the cluster cannot reach). Each failure is a
:class:`~raylam.config.UserError` whose message names the field, the value and what was expected,
so a typo costs seconds instead of a pipeline's compute.
"""

from __future__ import annotations

import os

from raylam.config import ConfigError

REMOTE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "abfs", "abfss", "az")


def is_remote(path: str) -> bool:
    return "://" in path and path.split("://", 1)[0] in REMOTE_SCHEMES


def check_output_dir(path: str | None, key: str) -> None:
    """An output directory may not exist yet, but it must not be a file (or sit under one)."""
    if not path or "://" in path and not path.startswith("file://"):
        return
    local = os.path.abspath(os.path.expanduser(path.removeprefix("file://")))
    probe = local
    while probe and not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            return
        probe = parent
    if not os.path.isdir(probe):
        what = "is a file" if probe == local else f"lies under {probe}, which is a file"
        raise ConfigError(f"{key}: {path} {what}; expected a directory (or a path that does not exist yet)")


def check_reachable(uri: str | None, key: str) -> None:
    """A remote URI's filesystem answers (a missing object is fine; no connection or no access is not)."""
    if not uri or not is_remote(uri):
        return
    import pyarrow.fs as pafs

    try:
        fs, root = pafs.FileSystem.from_uri(uri)
        fs.get_file_info(root.rstrip("/") or root)
    except (OSError, ValueError) as err:  # pyarrow raises OSError (network, access) or ArrowInvalid (a ValueError)
        reason = " ".join(str(err).split())
        raise ConfigError(f"{key}: cannot reach {uri}: {reason[:300]}") from None


def check_background_dir(path: str | None, key: str) -> None:
    """Background videos: a local folder on every node that renders, or a folder URI each node
    copies once (:func:`raylam.data.storage.local_mirror`)."""
    if path is None:
        return
    if "://" in path and not path.startswith("file://"):
        from raylam.data.storage import resolve

        check_reachable(path, key)
        location = resolve(path)
        import pyarrow.fs as pafs

        if location.fs.get_file_info(location.root).type != pafs.FileType.Directory:
            raise ConfigError(f"{key}: folder {path} does not exist (a DAVIS JPEGImages/480p folder or a folder "
                              "of .mp4 files, docs/DAVIS.md)")
        return
    if not os.path.isdir(os.path.expanduser(path.removeprefix("file://"))):
        raise ConfigError(f"{key}: folder {path} does not exist (a DAVIS JPEGImages/480p folder or a folder of "
                          ".mp4 files, docs/DAVIS.md)")


def existing_dataset(dataset: str):
    """The dataset's :class:`DatasetInfo` when it exists now, else None (a dataset that a pipeline
    collects first is checked by the stage itself, once it is there). Read once per dataset: on
    object storage each read is a round trip before Ray starts."""
    from raylam.data.pipeline import DatasetInfo

    try:
        return DatasetInfo(dataset)
    except (FileNotFoundError, OSError):
        return None


def check_label_budget(info, num_labeled: int | None, key: str) -> None:
    """A label budget larger than the dataset's labeled episodes fails now, not in the stage."""
    if num_labeled is None:
        return
    have = len(info.manifest["labeled_episodes"])
    if num_labeled > have:
        raise ConfigError(f"{key}: got {num_labeled}, but dataset {info.uri} has {have} labeled episodes")


def check_dataset_fits(info, model, key: str) -> None:
    """The stage's model reads the dataset's frames (size, channels, window overlap): fail now, not
    in the stage's task once Ray has started."""
    try:
        info.check_model(model)
    except ConfigError as err:
        raise ConfigError(f"{key}: {err}") from None


def heldout_hint(manifest: dict) -> str:
    """How to give a dataset held-out episodes, in the keys of the command that made it."""
    if manifest.get("imported"):
        return ("re-ingest with ingest.min_heldout: 1 (or more), ingest.heldout_episodes: [<episode ids>] or a larger "
                "ingest.heldout_fraction into a new ingest.output")
    return "collect with collect.heldout_episodes > 0"


def check_heldout(info, eval_every: int, key: str) -> None:
    """A stage that evaluates every ``eval_every`` steps reads the dataset's held-out split: fail now,
    before Ray starts, when it has none."""
    if not eval_every:
        return
    if not info.manifest["splits"].get("heldout"):
        raise ConfigError(f"{key}: got {eval_every}, but dataset {info.uri} has no held-out episodes to evaluate on; "
                          f"{heldout_hint(info.manifest)}, or set train.eval_every=0")


def check_experiment(exp, command: str) -> None:
    """Everything ``command`` (collect, train, evaluate, pipeline, tune) will touch, before it starts."""
    collects = command in ("collect", "pipeline")
    trains = command in ("train", "pipeline", "tune")
    if collects:
        check_output_dir(exp.collect.output, "collect.output")
        check_reachable(exp.collect.output, "collect.output")
        check_background_dir(exp.collect.env.background_dir, "collect.env.background_dir")
    if trains or command == "evaluate":
        check_output_dir(exp.train.storage_path, "train.storage_path")
        check_reachable(exp.train.storage_path, "train.storage_path")
    if trains:
        datasets = {}  # dataset -> its DatasetInfo, or None when it is not there yet
        for i, entry in enumerate(exp.stages):
            stage = exp.stage(i)
            if stage.dataset not in datasets:
                check_reachable(stage.dataset, f"stages[{i}] ({entry['run_name']}).dataset")
                collected_first = collects and stage.dataset == exp.collect.output
                datasets[stage.dataset] = None if collected_first else existing_dataset(stage.dataset)
            info = datasets[stage.dataset]
            if stage.kind.trains and info is not None:
                where = f"stages[{i}] ({entry['run_name']})"
                check_label_budget(info, stage.num_labeled, f"{where}.num_labeled")
                check_heldout(info, stage.eval_every, f"{where}.eval_every")
                check_dataset_fits(info, stage.model, f"{where}.model")
    if command in ("evaluate", "pipeline"):
        check_output_dir(exp.evaluate.output, "evaluate.output")
        check_reachable(exp.evaluate.output, "evaluate.output")
        check_background_dir(exp.evaluate.rollout.background_dir, "evaluate.rollout.background_dir")


def check_runs_exist(methods, roots: dict) -> None:
    """``raylam evaluate`` on runs that already exist: every run a method names is a finished run."""
    from raylam.data.storage import resolve
    from raylam.eval.evaluate import run_path
    from raylam.train.artifacts import ARTIFACT

    for seed, root in roots.items():
        for i, m in enumerate(methods):
            for role in ("lam", "policy", "decoder"):
                path = run_path(getattr(m, role), root)
                if path is not None and not resolve(path).exists(ARTIFACT):
                    where = "" if len(roots) == 1 else f" (seed {seed})"
                    raise ConfigError(f"evaluate.methods[{i}] ({m.name}).{role}: {path}{where} is not a finished "
                                      f"run (no {ARTIFACT}); train it first, or fix the name")
