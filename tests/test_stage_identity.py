"""Stage identity (no Ray): what makes a finished stage reusable, and what makes it stale."""

import json

from raylam.config import from_dict, to_dict
from raylam.pipeline import stage_is_done
from raylam.train.config import RelabelConfig, TrainConfig
from raylam.train.identity import stage_identity


def _dataset(tmp_path, content: str = '{"shards": ["a.tar"]}'):
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "manifest.json").write_text(content)
    return data


def _finish(cfg: TrainConfig, **extra) -> dict:
    """The artifact a finished run of ``cfg`` leaves (the fields stage_is_done reads)."""
    run = tmp_root(cfg) / cfg.run_name
    run.mkdir(parents=True, exist_ok=True)
    artifact = {"stage": cfg.stage, "config": to_dict(cfg), "requested_config": to_dict(cfg),
                "identity": stage_identity(cfg), "checkpoint": str(run / "ckpt"), **extra}
    (run / "artifact.json").write_text(json.dumps(artifact))
    return artifact


def tmp_root(cfg):
    from pathlib import Path

    return Path(cfg.storage_path)


def test_placement_and_location_do_not_change_identity_but_the_recipe_does(tmp_path):
    data = _dataset(tmp_path)
    base = from_dict(TrainConfig, {"dataset": str(data), "storage_path": str(tmp_path / "runs"), "run_name": "lam"})
    same = [
        {"num_workers": 1, "cpus_per_worker": 3.0, "report_every": 7, "checkpoint_every": 14, "max_failures": 5},
        {"storage_path": str(tmp_path / "elsewhere"), "run_name": "other"},
        {"data": {**to_dict(base.data), "read_cpus": 0.25, "progress_bars": True}},
    ]
    for change in same:
        assert stage_identity(from_dict(TrainConfig, {**to_dict(base), **change})) == stage_identity(base), change
    different = [{"steps": base.steps + 1}, {"seed": 1}, {"num_labeled": 3},
                 {"model": {**to_dict(base.model), "lr": base.model.lr * 2}}]
    for change in different:
        assert stage_identity(from_dict(TrainConfig, {**to_dict(base), **change})) != stage_identity(base), change


def test_a_recollected_dataset_changes_identity_a_rewritten_manifest_does_not(tmp_path):
    data = _dataset(tmp_path, '{"shards": ["a.tar"], "created": "2026-01-01", "config": {"num_workers": 2}}')
    cfg = from_dict(TrainConfig, {"dataset": str(data), "storage_path": str(tmp_path / "runs"), "run_name": "lam"})
    first = stage_identity(cfg)
    # collection rerun over finished shards: a new date, other placement settings, the same data
    _dataset(tmp_path, '{"shards": ["a.tar"], "created": "2026-02-02", "config": {"num_workers": 8}}')
    assert stage_identity(cfg) == first
    _dataset(tmp_path, '{"shards": ["a.tar", "b.tar"], "created": "2026-02-02"}')
    assert stage_identity(cfg) != first


def test_a_retrained_upstream_makes_downstream_stale(tmp_path):
    data = _dataset(tmp_path)
    runs = tmp_path / "runs"
    lam = from_dict(TrainConfig, {"dataset": str(data), "storage_path": str(runs), "run_name": "lam"})
    _finish(lam, finished="2026-01-01T00:00:00")
    relabel = from_dict(RelabelConfig, {"dataset": str(data), "storage_path": str(runs), "run_name": "labels",
                                        "lam_run": str(runs / "lam")})
    _finish(relabel)
    assert stage_is_done(lam) and stage_is_done(relabel)
    retrained = from_dict(TrainConfig, {**to_dict(lam), "steps": lam.steps + 1})
    assert not stage_is_done(retrained)  # its own config changed
    _finish(retrained, finished="2026-01-02T00:00:00")
    assert stage_is_done(retrained)
    assert not stage_is_done(relabel)  # nothing in its config changed; its input did


def test_a_missing_input_makes_a_stage_stale(tmp_path):
    data = _dataset(tmp_path)
    runs = tmp_path / "runs"
    lam = from_dict(TrainConfig, {"dataset": str(data), "storage_path": str(runs), "run_name": "lam"})
    _finish(lam)
    relabel = from_dict(RelabelConfig, {"dataset": str(data), "storage_path": str(runs), "run_name": "labels",
                                        "lam_run": str(runs / "lam")})
    _finish(relabel)
    (runs / "lam" / "artifact.json").unlink()
    assert not stage_is_done(relabel)


def test_stage_inputs_follow_the_chain():
    from pathlib import Path

    from raylam.experiment import load_experiment
    from raylam.pipeline import stage_inputs

    exp = load_experiment(Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml")
    names = [s["run_name"] for s in exp.stages]
    reads = {names[i]: [names[j] for j in stage_inputs(exp, i)] for i in range(len(names))}
    assert reads["laom_sup"] == [] and reads["bc"] == []
    assert reads["laom_sup_labels"] == ["laom_sup"]
    assert reads["laom_sup_bc"] == ["laom_sup_labels"]
    assert reads["laom_sup_decoder"] == ["laom_sup_bc"]
