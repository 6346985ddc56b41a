"""Everything on object storage: a real S3-compatible server on 127.0.0.1 (moto, its own process)
holds the dataset, the runs, the relabel tables and the report; nothing is written to local disk
by the pipeline. This is what a cluster whose nodes share no disk needs."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from conftest import run_cluster_script
from test_pipeline import tiny_overrides

from raylam.cli import main
from raylam.data.storage import resolve
from raylam.experiment import load_experiment
from raylam.pipeline import select_methods, stage_is_done
from raylam.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")

pytestmark = pytest.mark.slow


def s3_overrides(bucket: str) -> list[str]:
    """The tiny quickstart of test_pipeline with everything in ``bucket``, run for 4 steps."""
    return [
        *tiny_overrides(bucket), "train.steps=4",
        "evaluate.rollout.settings=[vanilla]", "train.cpus_per_worker=0.5", "concurrent_stages=2",
        # the LAM loses its worker at step 3 and resumes from the step-2 checkpoint on S3 (its uploads
        # synchronous under the test hook); the other stages upload their checkpoints asynchronously
        "stages.laom_sup.fail_at_step=3", "stages.laom_sup.max_failures=1",
    ]


def test_pipeline_on_s3(ray_with_s3, tmp_path, monkeypatch):
    bucket = ray_with_s3()
    monkeypatch.chdir(tmp_path)  # anything written to a relative local path would show up here
    overrides = s3_overrides(bucket)
    assert main(["pipeline", "--config", QUICKSTART, "--methods", "laom_sup,bc", *overrides]) == 0
    exp = load_experiment(QUICKSTART, overrides)
    for i in select_methods(exp, ["laom_sup", "bc"]):
        stage = exp.stage(i)
        assert stage_is_done(stage), stage.run_name
    results = resolve(exp.eval_output()).read_json("results.json")
    assert {row["method"] for row in results["rows"]} >= {"laom_sup", "bc"}
    # two stages at once: BC reads nothing upstream, so it ran beside the LAOM+sup chain
    root = resolve(exp.seed_root())
    bc = resolve(f"{exp.seed_root()}/bc").read_json("artifact.json")
    decoder = resolve(f"{exp.seed_root()}/laom_sup_decoder").read_json("artifact.json")
    assert bc["metrics"]["timing/loop_start_unix"] < datetime.fromisoformat(decoder["finished"]).timestamp()
    assert root.uri.startswith("s3://")
    fs, root = pafs.FileSystem.from_uri(bucket)
    names = [info.path for info in fs.get_file_info(pafs.FileSelector(root, recursive=True))]
    assert any(name.endswith("report.md") for name in names)
    assert any(name.endswith("eval/training_loss.png") for name in names)  # the LAM's history, read from S3
    # the training history and TensorBoard events live beside each run, on the object store
    history = read_metrics(f"{exp.seed_root()}/laom_sup")
    assert [row["step"] for row in history] == [1, 2, 3, 4] and all(row["loss"] == row["loss"] for row in history)
    lam = resolve(f"{exp.seed_root()}/laom_sup").read_json("artifact.json")
    steps = []
    for info in fs.get_file_info(pafs.FileSelector(f"{root}/runs/quickstart/laom_sup/{lam['attempt']}")):
        if info.base_name.startswith("checkpoint_") and info.type == pafs.FileType.Directory:
            with fs.open_input_stream(f"{info.path}/meta.json") as stream:
                steps.append(json.loads(stream.read())["step"])
    assert sorted(steps) == [2, 4]  # restored from step 2 after the failure at 3, not from scratch
    assert any("/laom_sup/train-" in name and "/tensorboard/events.out.tfevents" in name for name in names)
    assert list(tmp_path.iterdir()) == [], "the pipeline wrote to the local working directory"


def test_multinode_training_with_storage_only_on_s3(s3_server, tmp_path):
    """A 3-node Cluster (head without CPUs) in a subprocess: local paths are refused; with data and
    runs on S3, a 2-node DDP stage survives a worker failure and relabeling writes from the workers."""
    bucket = s3_server()
    result = run_cluster_script(ROOT / "tests" / "multinode_s3.py", [bucket], tmp_path / "multinode", timeout=1200)
    assert "train" in result, result

    code, message = result["local_refused"]
    assert code == 2 and "train.storage_path" in message and "is a local path" in message, message
    assert "s3://" in message and "shared_filesystem=true" in message
    assert not result["local_written"]
    code, message = result["train"]
    assert code == 0, message
    assert result["nodes"] == 3
    # failure at step 3: restored from the step-2 checkpoint, so the checkpoints are 2, 4, 6 once each
    assert result["checkpoint_steps"] == [2, 4, 6] and result["lam_step"] == 6
    assert result["checkpoint"].startswith(bucket.removeprefix("s3://"))
    assert result["history_steps"] == [1, 2, 3, 4, 5, 6]
    assert result["logs"] == ["tensorboard", "wandb"]  # uploaded beside the run from the worker node
    assert result["labels"].startswith(f"{bucket}/runs/multinode/labels")
    assert result["num_labels"] == 7 * 39  # every transition of the 6 training + 1 held-out episodes


def test_background_videos_from_s3_are_mirrored_once_per_node(s3_server, tmp_path, monkeypatch):
    """background_dir as a URI: the folder is copied whole into the node's cache (marker written
    last) and the environment shows the user's video, exactly as from a local folder."""
    from test_envs import _sky_colour, _write_jpgs, cfg

    from raylam.data.storage import local_mirror
    from raylam.envs import make_env
    from raylam.envs.backgrounds import list_clips

    local = tmp_path / "davis"
    local.mkdir()
    _write_jpgs(local / "blackswan", (20, 20, 200))  # DAVIS-2017 val: the eval split
    _write_jpgs(local / "bear", (200, 20, 20))  # DAVIS-2017 train
    uri = f"{s3_server()}/backgrounds/davis"
    fs, root = pafs.FileSystem.from_uri(uri)
    pafs.copy_files(str(local), root, destination_filesystem=fs)
    monkeypatch.setenv("RAYLAM_CACHE", str(tmp_path / "cache"))
    assert [c.name for c in list_clips("eval", uri)] == ["blackswan"]
    mirror = Path(local_mirror(uri))
    assert (mirror / ".complete").is_file() and sorted(p.name for p in (mirror / "bear").iterdir()) == \
        sorted(p.name for p in (local / "bear").iterdir())
    assert local_mirror(uri) == str(mirror)  # once: the second call finds the finished copy
    env = make_env(cfg(preset="vanilla", num_videos=2, split="eval", background_dir=uri), seed=0)
    try:
        sky = _sky_colour(env.reset().frame)
    finally:
        env.close()
    assert sky[2] > max(sky[0], sky[1]) + 60  # the user's blue video is the sky
    with pytest.raises(FileNotFoundError, match="no such folder"):
        local_mirror(f"{uri}-missing")
