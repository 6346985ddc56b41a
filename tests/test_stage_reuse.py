"""Which finished stages a pipeline rerun reuses (no Ray)."""

import json

from raylam.config import from_dict, to_dict
from raylam.pipeline import stage_is_done
from raylam.train.config import TrainConfig


def test_a_field_added_later_at_its_default_keeps_a_run_done(tmp_path):
    cfg = from_dict(TrainConfig, {"storage_path": str(tmp_path), "run_name": "lam", "steps": 7})
    run = tmp_path / "lam"
    run.mkdir()
    recorded = to_dict(cfg)
    del recorded["threads_per_worker"], recorded["data"]["share_bytes"]  # fields a newer raylam added
    (run / "artifact.json").write_text(json.dumps({"requested_config": recorded}))
    assert stage_is_done(cfg)
    changed = from_dict(TrainConfig, {**to_dict(cfg), "threads_per_worker": 2})
    assert not stage_is_done(changed)  # a new field set away from its default: train again
    other = from_dict(TrainConfig, {**to_dict(cfg), "steps": 8})
    assert not stage_is_done(other)
