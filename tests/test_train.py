"""Streaming training end to end on a local Ray: Ray Data windows -> TorchTrainer workers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from raylam.config import ConfigError, from_dict, to_dict
from raylam.data.clips import clip_dataset
from raylam.data.pipeline import DatasetInfo, WindowSpec
from raylam.data.synthetic import write_synthetic_dataset
from raylam.models.config import ModelConfig
from raylam.train.config import RelabelConfig, TrainConfig
from raylam.train.metrics import read_metrics
from raylam.train.trainer import ARTIFACT, train


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "data"
    manifest = write_synthetic_dataset(str(out), episodes=6, episode_length=40, image_size=32,
                                       clip_length=24, overlap=12, num_labeled=2, heldout_episodes=1)
    return str(out), manifest


def train_config(dataset, storage, **changes) -> TrainConfig:
    data = {
        "stage": "lam", "dataset": dataset, "storage_path": str(storage),
        "model": to_dict(ModelConfig.small("laom_sup")),
        "steps": 6, "batch_size": 16, "labeled_batch_size": 8, "report_every": 2, "checkpoint_every": 2,
        "num_workers": 1, "data": {"clips_per_task": 2, "read_cpus": 0.5},
    }
    data.update(changes)
    return from_dict(TrainConfig, data)


def relabel_config(dataset, storage, **changes) -> RelabelConfig:
    return from_dict(RelabelConfig, {"dataset": dataset, "storage_path": str(storage),
                                     "data": {"clips_per_task": 2, "read_cpus": 0.5}, **changes})


def test_clip_stream_and_labeled_stream(ray_local, synthetic):
    dataset, manifest = synthetic
    info = DatasetInfo(dataset)
    rows = clip_dataset(info, WindowSpec(frame_stack=3, max_offset=10)).take_all()
    assert rows[0]["frames"].shape == (24, 32, 32, 3) and rows[0]["frames"].dtype == np.uint8
    owned = sorted((int(r["episode"]), t) for r in rows for t in range(r["owned_lo"], r["owned_hi"]))
    # every transition with a next frame, owned by exactly one clip; held-out shard excluded
    assert len(owned) == len(set(owned)) == 6 * 39
    labeled_rows = clip_dataset(info, WindowSpec(num_labeled=1), labeled_only=True).take_all()
    first = int(manifest["labeled_episodes"][0][2:])
    assert {int(r["episode"]) for r in labeled_rows} == {first}
    assert sum(int(r["owned_hi"] - r["owned_lo"]) for r in labeled_rows) == 39
    assert all(r["labeled"] for r in labeled_rows)


@pytest.mark.parametrize("materialized", [True, False])
def test_two_workers_see_disjoint_clips(ray_local, synthetic, tmp_path, materialized):
    """The training split through the stage's DataConfig, as Train hands it to 2 workers: the shared
    (materialized) clips by row ranges, where every clip is exactly one worker's; a lazy dataset by
    Train's streaming_split (equal shares, which may leave out fewer clips than there are workers)."""
    import ray

    from raylam.train.trainer import data_config

    dataset, _ = synthetic
    ds = clip_dataset(DatasetInfo(dataset), WindowSpec())
    every = sorted((int(r["episode"]), int(r["start"])) for r in ds.take_all())
    if materialized:
        ds = ds.materialize()
    shards = data_config(train_config(dataset, tmp_path, num_workers=2)).configure(
        {"train": ds}, world_size=2, worker_handles=None, worker_node_ids=None)

    @ray.remote(num_cpus=0)
    def keys(it):
        return [(int(e), int(s)) for batch in it.iter_batches(batch_size=4)
                for e, s in zip(batch["episode"], batch["start"], strict=True)]

    ka, kb = ray.get([keys.remote(shard["train"]) for shard in shards])
    assert ka and kb and not set(ka) & set(kb)
    if materialized:
        assert sorted(ka + kb) == every and abs(len(ka) - len(kb)) <= 1
    else:
        assert len(ka) == len(kb) and len(every) - 1 <= len(ka) + len(kb) <= len(every)


def test_job_batch_must_split_evenly_across_workers(synthetic, tmp_path):
    with pytest.raises(ConfigError, match="batch_size: got 15, expected a multiple of num_workers \\(2\\)"):
        train_config(synthetic[0], tmp_path, num_workers=2, batch_size=15)


@pytest.fixture(scope="module")
def laom_sup_run(ray_local, synthetic, tmp_path_factory):
    """A 2-worker LAOM+sup run that loses a worker at step 5 (test hook) and must resume; it also
    evaluates on the held-out split and logs to TensorBoard and to wandb in offline mode."""
    runs = tmp_path_factory.mktemp("runs")
    cfg = train_config(synthetic[0], runs, num_workers=2, cpus_per_worker=0.5, run_name="laom2", steps=8,
                       fail_at_step=5, max_failures=1, keep_checkpoints=10, eval_every=4,
                       wandb={"enabled": True, "mode": "offline", "project": "raylam-test"})
    return train(cfg), runs / "laom2"


def test_two_worker_laom_sup_survives_a_failure(laom_sup_run):
    result, run_dir = laom_sup_run
    assert result.metrics["step"] == 8 and result.artifact["stage"] == "lam"
    assert np.isfinite(result.metrics["loss"])
    artifact = json.loads((run_dir / ARTIFACT).read_text())
    assert artifact["stage"] == "lam" and artifact["method"] == "laom_sup"
    assert Path(artifact["checkpoint"]).is_dir()
    steps = [json.loads((p / "meta.json").read_text())["step"]
             for p in sorted(run_dir.glob("train-*/checkpoint_*")) if p.is_dir()]
    # checkpoints at 2 and 4, failure at 5, restore from 4, and the counter goes on: 6, 8
    # (a restart from scratch would have written 2, 4 again)
    assert steps == [2, 4, 6, 8]


def test_a_restored_run_continues_the_epoch_where_its_checkpoint_left_it(laom_sup_run):
    """Counting on the real path: every checkpoint records how many batches its rank-0 sampler has
    drawn from the epoch order (epoch x batches per epoch + position). Restored from step 4 after
    the failure at step 5, the run draws on from batch 4: at step s exactly s batches have been drawn,
    so the only batch trained twice is the one between the checkpoint and the failure (a restart of
    the epoch order would show 2 drawn at step 6)."""
    import torch

    _, run_dir = laom_sup_run
    drawn = {}
    for checkpoint in (p for p in run_dir.glob("train-*/checkpoint_*") if p.is_dir()):
        state = torch.load(checkpoint / "model.pt", map_location="cpu", weights_only=True)
        data = state["data"]
        drawn[state["step"]] = data["epoch"] * data["batches_per_epoch"] + data["position"]
    assert drawn == {2: 2, 4: 4, 6: 6, 8: 8}


def test_run_logs_heldout_metrics_tensorboard_and_wandb(laom_sup_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result, run_dir = laom_sup_run
    for name in ("heldout/probe/action/mse", "heldout/probe/action/r2", "heldout/probe/state/mse"):
        assert np.isfinite(result.metrics[name]), name
    (attempt,) = run_dir.glob("train-*")
    events = EventAccumulator(str(attempt / "tensorboard")).Reload()
    assert "heldout/probe/action/mse" in events.Tags()["scalars"]
    assert [e.step for e in events.Scalars("loss")][-1] == 8
    # the persisted history reads as one run across the failure and the restore from step 4
    history = read_metrics(str(run_dir))
    assert [row["step"] for row in history] == [2, 4, 6, 8]  # report_every 2
    assert all(np.isfinite(row["loss"]) for row in history)
    assert "heldout/probe/action/mse" in history[1]  # eval_every 4
    offline = sorted((attempt / "wandb").glob("offline-run-*"))
    assert offline and all(list(p.glob("*.wandb")) for p in offline)


def test_streamed_run_trains_through_the_clip_pool(ray_local, synthetic, tmp_path, monkeypatch):
    """Data bigger than the cache (cache_bytes 0): 2 workers stream clips in clip order through their
    pools, epoch after epoch (6 episodes x 39 transitions = 234; batch 16: 14 steps an epoch). The
    dataset is named by a relative path, as users write it (workers run in a directory of their own)."""
    dataset, _ = synthetic
    monkeypatch.chdir(Path(dataset).parent)
    cfg = train_config(Path(dataset).name, tmp_path, model=to_dict(ModelConfig.small("laom")), num_workers=2,
                       cpus_per_worker=0.5, steps=20, report_every=5, checkpoint_every=10,
                       data={"clips_per_task": 2, "read_cpus": 0.5, "cache_bytes": 0, "pool_clips": 8})
    result = train(cfg)
    history = read_metrics(str(tmp_path / "raylam-lam-laom"))
    assert [row["step"] for row in history] == [5, 10, 15, 20]
    assert all(np.isfinite(row["loss"]) for row in history)
    assert history[-1]["epoch"] >= 1  # the stream passed over the data more than once
    assert result.metrics["step"] == 20


def test_a_streamed_run_resumes_its_epoch_after_a_failure(ray_local, synthetic, tmp_path):
    """Counting clips on the real path: a 2-worker clip-order stream loses a worker at step 6 and
    restores from step 4's checkpoint, which records how many of its clips each rank's pool had taken.
    The restored run skips those, so every finished epoch took each rank's share exactly once
    (restarting the pass would take the clips before the checkpoint twice)."""
    import torch

    dataset, _ = synthetic
    cfg = train_config(dataset, tmp_path, model=to_dict(ModelConfig.small("laom")), num_workers=2,
                       cpus_per_worker=0.5, steps=24, report_every=2, checkpoint_every=4, fail_at_step=6,
                       max_failures=1, keep_checkpoints=20,
                       data={"clips_per_task": 2, "read_cpus": 0.5, "cache_bytes": 0, "pool_clips": 4})
    train(cfg)
    run = tmp_path / "raylam-lam-laom"
    states = {}
    for checkpoint in (p for p in run.glob("train-*/checkpoint_*") if p.is_dir()):
        state = torch.load(checkpoint / "model.pt", map_location="cpu", weights_only=True)
        states[state["step"]] = state["data"]["ranks"]
    assert sorted(states) == [4, 8, 12, 16, 20, 24]
    clips = clip_dataset(DatasetInfo(dataset), WindowSpec()).count()  # the training split's clips
    shares = [len(range(rank, clips, 2)) for rank in range(2)]  # every other clip of each epoch's order
    assert states[24][0]["epoch_clips"], "the run should finish at least one epoch"
    for rank in range(2):
        for epoch, taken in states[24][rank]["epoch_clips"].items():
            assert taken == shares[rank], (rank, epoch, taken)
    # within an epoch, the clips taken never go back: the restore continued from step 4's count
    for rank in range(2):
        before, after = states[4][rank], states[8][rank]
        assert after["epoch"] > before["epoch"] or after["entered"] >= before["entered"]


def test_bad_artifacts_fail_early(ray_local, tmp_path, synthetic):
    with pytest.raises(FileNotFoundError, match="manifest.json does not exist"):
        train(train_config(str(tmp_path / "nothing"), tmp_path / "runs"))
    dataset, _ = synthetic
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        train(train_config(str(broken), tmp_path / "runs"))
    with pytest.raises(ValueError, match="64x64 frames|32x32 frames"):
        cfg = train_config(dataset, tmp_path / "runs", model=to_dict(ModelConfig.small("laom_sup", image_size=64)))
        train(cfg)
    with pytest.raises(ValueError, match="num_labeled: got 5, but dataset"):
        train(train_config(dataset, tmp_path / "runs", num_labeled=5))


def test_stage_and_method_must_agree(synthetic, tmp_path):
    with pytest.raises(ConfigError, match="stage 'lam' expects one of"):
        train_config(synthetic[0], tmp_path, model=to_dict(ModelConfig.small("bc")))


def test_lapo_stage_and_relabel_with_quantized_latents(ray_local, synthetic, tmp_path):
    """A LAPO LAM run, then relabel reads it by path and writes one (quantized) label per transition
    (the LAOM+sup chain down to the decoder runs in test_pipeline)."""
    import pyarrow.parquet as pq

    dataset, manifest = synthetic
    runs = tmp_path / "runs"
    lapo = ModelConfig.small("lapo", quantizer="vq", max_offset=1, augment=False)  # the LAPO paper's variant
    result = train(train_config(dataset, runs, run_name="lapo", model=to_dict(lapo), steps=2, keep_checkpoints=1))
    assert np.isfinite(result.metrics["loss"])
    assert len([p for p in (runs / "lapo").glob("train-*/checkpoint_*") if p.is_dir()]) == 1  # keep_checkpoints
    relabeled = train(relabel_config(dataset, runs, run_name="labels", lam_run=str(runs / "lapo"), batch_size=32))
    table = pq.read_table(relabeled["labels"])
    assert table.num_rows == manifest["num_transitions"] - manifest["num_episodes"]
    assert len({(int(e), int(s)) for e, s in zip(table["episode"].to_numpy(), table["step"].to_numpy(),
                                                 strict=True)}) == table.num_rows
    assert relabeled.metrics["num_labels"] == table.num_rows
    assert relabeled["latent_dim"] == lapo.latent_dim and table.schema.field("latent").type.list_size == lapo.latent_dim
    latents = np.stack(table["latent"].to_numpy(zero_copy_only=False))
    # vector quantization: every group of the latent is one of its codebook's vq_codes entries (up to the
    # float error of the straight-through estimator, z + (q - z))
    groups = np.round(latents.reshape(len(latents), lapo.vq_groups, -1), 4)
    assert all(len(np.unique(groups[:, g], axis=0)) <= lapo.vq_codes for g in range(lapo.vq_groups))
    with pytest.raises(ValueError, match="holds a 'lam' run, expected one of \\['relabel'\\]"):
        train(train_config(dataset, runs, stage="latent_bc", run_name="x", labels=str(runs / "lapo"),
                           model=to_dict(ModelConfig.small("latent_bc"))))
    with pytest.raises(FileNotFoundError, match="not a finished raylam run"):
        train(relabel_config(dataset, runs, run_name="y", lam_run=str(runs / "missing")))
