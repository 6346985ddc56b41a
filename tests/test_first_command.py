"""A new user's first commands: every bad input is one line and exit status 2, before Ray starts;
help that teaches and answers at once; quiet logs; a held-out split that training can use.

These run the real `raylam` entry point in-process (or in a fresh interpreter where imports matter);
none of them starts Ray."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_checks import fails_with
from test_ingest import LEROBOT_KEYS, frames_of, write_jpgs, write_laom_hdf5, write_lerobot_v3, write_video

from raylam.cli import build_parser, main
from raylam.config import from_dict

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = str(ROOT / "configs" / "ingest_example.yaml")


def ingest_cli(capsys, tmp_path, *overrides: str, message: str) -> str:
    """`raylam ingest` with the example config, output in tmp_path; fails with ``message`` on one line."""
    out = tmp_path / "out"
    return fails_with(capsys, ["ingest", "--config", EXAMPLE, f"ingest.output={out}", f"train.dataset={out}",
                               *overrides], message)


@pytest.fixture
def videos(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    for i in range(3):
        write_video(folder / f"v{i}.mp4", frames_of(i, 10, 32, 32))
    return folder


# ---------------------------------------------------------------- 1. one line, exit 2


def test_ingest_bad_inputs_are_one_line(capsys, tmp_path, videos):
    empty = tmp_path / "empty"
    empty.mkdir()
    ingest_cli(capsys, tmp_path, f"ingest.paths=[{empty}]", message=f"paths [{str(empty)!r}]: no episodes found")
    ingest_cli(capsys, tmp_path, f"ingest.paths=[{tmp_path / 'nope'}]",
               message=f"paths: {tmp_path / 'nope'} is not a folder (expected a folder of videos")

    np.save(videos / "v0.npy", np.zeros((7, 2), np.float32))
    ingest_cli(capsys, tmp_path, f"ingest.paths=[{videos}]",
               message="v0.npy: 7 action rows for 10 frames of episode v0")
    (videos / "v0.npy").unlink()

    write_video(videos / "v3.mp4", frames_of(3, 10, 24, 32))
    ingest_cli(capsys, tmp_path, f"ingest.paths=[{videos}]", message="v3.mp4: frames are 24x32; expected 32x32")
    (videos / "v3.mp4").unlink()

    write_laom_hdf5(tmp_path / "paper.hdf5", episodes=1, length=4)
    ingest_cli(capsys, tmp_path, "ingest.source=hdf5", f"ingest.paths=[{tmp_path / 'paper.hdf5'}]",
               "ingest.hdf5.action_key=rewards", message="paper.hdf5:/0: no dataset 'rewards'")

    write_lerobot_v3(tmp_path / "lerobot", lengths=(4,))
    ingest_cli(capsys, tmp_path, "ingest.source=lerobot", f"ingest.paths=[{tmp_path / 'lerobot'}]",
               *(f"ingest.lerobot.{k}={v}" for k, v in LEROBOT_KEYS.items() if k != "state_key"),
               "ingest.lerobot.state_key=observation.joints",
               message="lerobot.state_key 'observation.joints' is not a feature")
    assert not (tmp_path / "out").exists()  # every check ran before anything was written


def test_an_output_made_from_other_inputs_is_one_line(capsys, tmp_path, videos):
    from raylam.data.ingest import IngestConfig
    from raylam.data.ingest.sources import scan
    from raylam.data.ingest.writer import _check_same_plan, _plan_fields
    from raylam.data.storage import resolve

    out = tmp_path / "out"
    earlier = from_dict(IngestConfig, {"paths": [str(videos)], "output": str(out), "image_size": 32})
    resolve(str(out)).makedirs()
    _check_same_plan(resolve(str(out)), _plan_fields(earlier, scan(earlier)))  # as a first ingest leaves it
    ingest_cli(capsys, tmp_path, f"ingest.paths={videos}", "ingest.image_size=48",
               message=f"{out} already holds an ingest made from other inputs (image_size: 32 there, 48 now)")


def test_overrides_are_named_with_a_suggestion(capsys, tmp_path):
    err = ingest_cli(capsys, tmp_path, "ingest.num_labled=3",
                     message="override ingest.num_labled=3: unknown key ingest.num_labled (did you mean 'num_labeled'?)")
    assert "ingest_example.yaml" not in err  # the file is not to blame
    fails_with(capsys, ["train", "--config", EXAMPLE, "train.stepz=3"],
               "override train.stepz=3: unknown key train.stepz (did you mean 'steps'?)")
    bad = tmp_path / "bad.yaml"
    bad.write_text("ingest: {num_labled: 3}\n")
    fails_with(capsys, ["ingest", "--config", str(bad)],
               f"{bad}: unknown key ingest.num_labled (did you mean 'num_labeled'?)")


def test_export_of_a_relabel_run_is_one_line(capsys, tmp_path):
    run = tmp_path / "labels"
    run.mkdir()
    (run / "artifact.json").write_text(json.dumps({"stage": "relabel", "config": {}, "labels": str(run / "labels")}))
    fails_with(capsys, ["export", str(run), "-o", str(tmp_path / "x")],
               f"{run} holds a 'relabel' run, expected one of ['lam', 'idm', 'bc', 'latent_bc']")


def test_a_single_path_is_a_list_of_one(tmp_path):
    from raylam.experiment import load_experiment

    exp = load_experiment(EXAMPLE, [f"ingest.paths={tmp_path}"])
    assert exp.ingest.paths == [str(tmp_path)]


# ---------------------------------------------------------------- 2. held-out split


def test_example_config_holds_episodes_out_of_a_few_videos(tmp_path):
    from raylam.data.ingest.sources import scan
    from raylam.data.ingest.writer import assign_splits
    from raylam.experiment import load_experiment

    for i in range(4):
        write_jpgs(tmp_path / "src" / f"ep{i}", frames_of(i, 3, 8, 8))
    exp = load_experiment(EXAMPLE, [f"ingest.paths={tmp_path / 'src'}", "ingest.source=frame_folders"])
    splits = assign_splits(exp.ingest, scan(exp.ingest))
    assert list(splits.values()).count("heldout") == 1  # heldout_fraction 0.1 of 4 episodes is 0: at least 1

    cfg = from_dict(type(exp.ingest), {**_ingest(exp), "min_heldout": 2})
    assert list(assign_splits(cfg, scan(cfg)).values()).count("heldout") == 2
    cfg = from_dict(type(exp.ingest), {**_ingest(exp), "heldout_episodes": ["ep3", "ep0"]})
    assert assign_splits(cfg, scan(cfg)) == {"ep0": "heldout", "ep1": "train", "ep2": "train", "ep3": "heldout"}


def _ingest(exp) -> dict:
    from raylam.config import to_dict

    return to_dict(exp.ingest)


def test_heldout_split_is_checked_at_ingest(capsys, tmp_path, videos):
    ingest_cli(capsys, tmp_path, f"ingest.paths={videos}", "ingest.heldout_fraction=0",
               message="ingest.heldout_fraction 0.0: holds out none of the 3 episodes, but stage laom_sup "
                       "(eval_every 100) evaluates on held-out episodes; set ingest.min_heldout: 1")
    ingest_cli(capsys, tmp_path, f"ingest.paths={videos}", "ingest.heldout_episodes=[v1, v7]",
               message="heldout_episodes: 'v7' is not an episode of")
    ingest_cli(capsys, tmp_path, f"ingest.paths={videos}", "ingest.heldout_episodes=[v0, v1, v2]",
               message="ingest.heldout_episodes ['v0', 'v1', 'v2']: all 3 episodes would be held out")


def test_heldout_split_is_checked_before_training_starts_ray(capsys, tmp_path):
    from raylam.data.synthetic import write_synthetic_dataset

    data = tmp_path / "data"
    write_synthetic_dataset(str(data), episodes=2, episode_length=20, image_size=32, clip_length=12, overlap=4,
                            num_labeled=1)
    fails_with(capsys, ["train", "--config", EXAMPLE, f"train.dataset={data}", f"train.storage_path={tmp_path}",
                        "train.num_labeled=1"],
               f"stages[0] (laom_sup).eval_every: got 100, but dataset {data} has no held-out episodes to evaluate "
               "on; collect with collect.heldout_episodes > 0, or set train.eval_every=0")


def test_heldout_hint_names_the_keys_of_the_data_source():
    from raylam.checks import heldout_hint

    assert "ingest.min_heldout" in heldout_hint({"imported": True})
    assert "ingest.heldout_episodes" in heldout_hint({"imported": True})
    assert heldout_hint({}) == "collect with collect.heldout_episodes > 0"


# ---------------------------------------------------------------- 5. help


def test_help_teaches_every_command(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse keeps them here
    assert set(commands) >= {"collect", "ingest", "train", "tune", "evaluate", "metrics", "report", "pipeline",
                             "export", "inspect"}
    for name in commands:
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0
        text = capsys.readouterr().out
        assert f"examples:\n  raylam {name}" in text, name
        assert "``" not in text and ":class:" not in text, name  # no RST markup
        assert "collect.episodes=4 collect.env.preset=hard" not in text or name == "collect", name
    main_help = parser.format_help()
    assert "``" not in main_help and "raylam pipeline --config configs/quickstart.yaml" in main_help


def test_ingest_help_lists_sources_keys_and_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["ingest", "--help"])
    text = capsys.readouterr().out
    for source in ("video_folder", "frame_folders", "lerobot", "hdf5"):
        assert f"\n  {source} " in text, source
    for key in ("heldout_fraction [0.1]", "min_heldout [null]", "heldout_episodes [null]", "image_size [64]",
                "camera_key", "obs_key"):
        assert key in text, key
    with pytest.raises(SystemExit):
        main(["metrics", "--help"])
    assert "(default: 20)" in capsys.readouterr().out


def test_version_and_help_import_nothing_heavy():
    """`--help` answers at once because it imports neither Ray nor torch (checked by module, not by clock)."""
    code = ("import sys\nfrom raylam.cli import main\n"
            "for argv in (['--help'], ['ingest', '--help'], ['train', '--help'], ['--version']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('ray', 'torch', 'numpy', 'pyarrow', 'h5py', 'av') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
    from raylam import __version__

    assert f"raylam {__version__}" in out.stdout


# ---------------------------------------------------------------- 4. quiet


@pytest.mark.parametrize("name, message", [
    ("ray._private.authentication.authentication_token_setup", "Token authentication is enabled for this Ray cluster."),
    ("ray.data._internal.progress", "Progress bars disabled. To enable, set ..."),
    ("ray.data.dataset", "Warning: The Ray cluster currently does not have any available CPUs. The Dataset job "
                         "will hang unless more CPUs are freed up."),
])
def test_known_ray_noise_is_dropped_and_the_rest_kept(monkeypatch, name, message):
    from raylam.console import VERBOSE_ENV, quiet_ray

    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger(name)
    saved = list(logger.filters)
    logger.addHandler(handler)
    try:
        quiet_ray()
        quiet_ray()  # twice adds nothing
        logger.warning(message)
        logger.warning("something else went wrong")
        assert seen == ["something else went wrong"]
        monkeypatch.setenv(VERBOSE_ENV, "1")  # --verbose: a fresh process shows everything
        logger.filters = []
        quiet_ray()
        logger.warning(message)
        assert seen[-1] == message
    finally:
        logger.removeHandler(handler)
        logger.filters = saved


def test_a_local_ray_gets_no_preemption_watcher(monkeypatch):
    import os

    from raylam.console import VERBOSE_ENV, quiet_ray_environment

    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    for key in ("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "PYTHONWARNINGS", "RAY_ADDRESS"):
        monkeypatch.delenv(key, raising=False)
    quiet_ray_environment()
    assert os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0"
    monkeypatch.delenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER")
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")  # a cluster: left as its operator set it
    quiet_ray_environment()
    assert "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER" not in os.environ


def test_a_local_rays_workers_know_its_address_and_that_it_is_local(monkeypatch):
    """With another Ray on the machine, a worker's State API lookup without an address finds several and
    Ray Train's PlacementGroupCleaner dies with a 30-line traceback: the CLI's local Ray tells each worker."""
    import os
    import types

    import ray

    from raylam import console

    env = console.local_runtime_env()
    assert env["env_vars"] == {console.LOCAL_RAY_ENV: "1"}
    assert env["worker_process_setup_hook"] == "raylam.console.export_cluster_address"
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "get_runtime_context", lambda: types.SimpleNamespace(gcs_address="10.0.0.1:6379"))
    console.export_cluster_address()
    assert os.environ["RAY_ADDRESS"] == "10.0.0.1:6379"
    monkeypatch.setenv("RAY_ADDRESS", "local")  # the way the Ray was started, not an address
    console.export_cluster_address()
    assert os.environ["RAY_ADDRESS"] == "10.0.0.1:6379"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.2:6379")  # an address already set stays
    console.export_cluster_address()
    assert os.environ["RAY_ADDRESS"] == "10.0.0.2:6379"

    def broken():
        raise RuntimeError("not connected")

    monkeypatch.setattr(ray, "get_runtime_context", broken)
    console.export_cluster_address()  # a hook that raised would stop the worker


def test_relabel_actors_restart_on_a_cluster_only(monkeypatch):
    """Restarts (and Ray's error-level line about them) where a node may be lost, none on a local Ray."""
    from raylam.console import LOCAL_RAY_ENV
    from raylam.data import pipeline  # the options of every actor pool (relabel, probes)

    def map_batches(fn, **ray_remote_args):
        pass

    def named_only(fn, *, num_cpus=None):
        pass

    monkeypatch.setattr("raylam.cluster.started_here", lambda: False)
    monkeypatch.delenv(LOCAL_RAY_ENV, raising=False)
    assert pipeline.actor_pool_options(map_batches) == {}
    monkeypatch.setenv(LOCAL_RAY_ENV, "1")  # a worker of the CLI's local Ray (a stage run as a task)
    assert pipeline.actor_pool_options(map_batches) == {"max_restarts": 0}
    assert pipeline.actor_pool_options(named_only) == {}  # a Ray that no longer takes it: left out
    monkeypatch.delenv(LOCAL_RAY_ENV)
    monkeypatch.setattr("raylam.cluster.started_here", lambda: True)  # the process that started Ray
    assert pipeline.actor_pool_options(map_batches) == {"max_restarts": 0}


def test_tune_says_it_starts_ray(monkeypatch, tmp_path):
    """`raylam tune` announces Ray like every other command: after its checks, before connecting."""

    class Started(Exception):
        pass

    def start_ray():
        raise Started

    monkeypatch.setattr("raylam.console.start_ray", start_ray)
    with pytest.raises(Started):
        main(["tune", "--config", str(ROOT / "configs" / "tune_quickstart.yaml"),
              f"train.storage_path={tmp_path / 'runs'}", f"train.dataset={tmp_path / 'data'}"])


# ---------------------------------------------------------------- 7. grids without repeats


def test_grid_clips_never_repeat(tmp_path):
    from raylam.data.inspect import sample_clips
    from raylam.data.synthetic import write_synthetic_dataset

    data = str(tmp_path / "data")
    manifest = write_synthetic_dataset(data, episodes=2, episode_length=20, image_size=16, clip_length=8, overlap=2,
                                       episodes_per_shard=2)
    assert len(manifest["shards"]) == 1 and manifest["num_samples"] >= 5
    keys = [clip.key for clip in sample_clips(data, 5, seed=1)]
    assert len(keys) == 5 and len(set(keys)) == 5
    assert len(sample_clips(data, 100)) == manifest["num_samples"]  # fewer clips than asked: each once
