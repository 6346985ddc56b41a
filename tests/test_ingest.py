"""`raylam ingest` end to end on tiny data made here: mp4 folders with action sidecars, jpg folders,
the LAOM paper's HDF5 layout and a LeRobot v3 dataset; read back through inspect, webdataset and
Ray Data; LAOM+sup trains on imported data without states; a failed shard and a rerun; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from raylam.config import from_dict
from raylam.data.ingest import IngestConfig, IngestError, ingest
from raylam.data.ingest.sources import scan
from raylam.data.ingest.writer import ClipCutter, assign_splits
from raylam.data.shards import clip_starts, decode_sample

SIZE = 32


# ---------------------------------------------------------------- tiny data


def episode_colour(episode: int, step: int) -> np.ndarray:
    """A frame whose top half tells the episode and whose bottom half tells the step."""
    return np.array([40 + 50 * episode, 200 - 40 * episode, (step * 9) % 250], np.uint8)


def frames_of(episode: int, length: int, h: int, w: int) -> np.ndarray:
    frames = np.zeros((length, h, w, 3), np.uint8)
    for t in range(length):
        frames[t, : h // 2] = episode_colour(episode, t)[:2].mean()
        frames[t, h // 2:] = episode_colour(episode, t)[2]
    return frames


def write_video(path: Path, frames: np.ndarray, fps: int = 10, codec: str = "libx264") -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps, options={"crf": "10"} if codec == "libx264" else {})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_jpgs(folder: Path, frames: np.ndarray) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{t}.jpg", quality=95)


def ingest_config(source: str, paths, output, **changes) -> IngestConfig:
    data = {"source": source, "paths": [str(p) for p in paths], "output": str(output), "image_size": SIZE,
            "clip_length": 16, "overlap": 12, "episodes_per_shard": 2, "heldout_fraction": 0.0, "progress": False}
    data.update(changes)
    return from_dict(IngestConfig, data)


def read_back(output: str) -> list:
    """Every sample of the dataset through the webdataset library, decoded by raylam's reader."""
    import webdataset as wds

    manifest = json.loads((Path(output) / "manifest.json").read_text())
    urls = [str(Path(output) / s["name"]) for s in manifest["shards"]]
    return [decode_sample(s) for s in wds.WebDataset(urls, shardshuffle=False)]


LENGTHS = {"cam0": 30, "cam1": 27, "cam2": 33, "cam3": 24}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """4 mp4s of 48x40 frames; cam1 has an .npy sidecar (one row per frame), cam2 a CSV with one row
    fewer than its frames (the last frame is dropped)."""
    root = tmp_path_factory.mktemp("videos")
    for i, (name, length) in enumerate(LENGTHS.items()):
        write_video(root / f"{name}.mp4", frames_of(i, length, 48, 40))
    rng = np.random.default_rng(0)
    actions = {"cam1": rng.normal(size=(27, 2)).astype(np.float32), "cam2": rng.normal(size=(32, 2)).astype(np.float32)}
    np.save(root / "cam1.npy", actions["cam1"])
    (root / "cam2.csv").write_text("a,b\n" + "\n".join(f"{x:.6f},{y:.6f}" for x, y in actions["cam2"]) + "\n")
    return root, actions


@pytest.fixture(scope="module")
def video_dataset(ray_local, videos, tmp_path_factory):
    root, _ = videos
    out = tmp_path_factory.mktemp("ingested") / "videos"
    manifest = ingest(ingest_config("video_folder", [root], out))
    return str(out), manifest


# ---------------------------------------------------------------- pure parts


@pytest.mark.parametrize("length", [5, 16, 17, 20, 28, 40])
def test_clip_cutter_cuts_a_stream_as_clip_starts(length):
    frames = np.arange(length)[:, None, None, None].astype(np.uint8) * np.ones((1, 2, 2, 3), np.uint8)
    cutter, clips = ClipCutter(16, 12), []
    for frame in frames:
        clips += cutter.push(frame)
    clips += cutter.finish()
    starts = clip_starts(length, 16, 12)
    assert [s for s, _ in clips] == starts
    for start, clip in clips:
        assert np.array_equal(clip, frames[start:start + 16])


def test_split_is_stable_as_episodes_are_added(tmp_path):
    for i in range(12):
        (tmp_path / f"ep{i}").mkdir()
        write_jpgs(tmp_path / f"ep{i}", frames_of(0, 3, 8, 8))
    cfg = ingest_config("frame_folders", [tmp_path], tmp_path / "out", heldout_fraction=0.4, max_episodes=6)
    few = assign_splits(cfg, scan(cfg))
    cfg_all = ingest_config("frame_folders", [tmp_path], tmp_path / "out", heldout_fraction=0.4)
    everything = assign_splits(cfg_all, scan(cfg_all))
    assert len(few) == 6 and len(everything) == 12
    assert all(everything[e] == split for e, split in few.items())
    assert set(everything.values()) == {"train", "heldout"}


# ---------------------------------------------------------------- sources


@pytest.mark.slow
def test_video_folder_with_sidecars(video_dataset, videos):
    from raylam.data.inspect import inspect_dataset

    output, manifest = video_dataset
    _, actions = videos
    assert manifest["available"] == {"actions": "some", "states": False, "rewards": False, "physics": False}
    assert sorted(manifest["labeled_episodes"]) == ["cam1", "cam2"] == sorted(manifest["action_episodes"])
    assert manifest["state_dim"] == 0 and manifest["action_dim"] == 2
    assert manifest["episode_lengths"] == {**LENGTHS, "cam2": 32}  # CSV one row short: last frame dropped
    report = inspect_dataset(output)
    assert report.ok, report.summary()

    clips = read_back(output)
    assert len(clips) == manifest["num_samples"] == sum(len(clip_starts(n, 16, 12))
                                                        for n in manifest["episode_lengths"].values())
    for clip in clips:
        episode = clip.meta["episode_id"]
        assert clip.frames.shape[1:] == (SIZE, SIZE, 3) and clip.states.shape == (len(clip), 0)
        start = clip.meta["start"]
        if episode in actions:
            assert clip.meta["labeled"] and np.allclose(clip.actions, actions[episode][start:start + len(clip)],
                                                        atol=1e-5)
        else:
            assert not clip.meta["labeled"] and np.isnan(clip.actions).all()
        # the episode shows through the resize and the lossy source codec
        i = sorted(LENGTHS).index(episode)
        assert abs(float(clip.frames[0, 2, :, 0].mean()) - episode_colour(i, 0)[:2].mean()) < 12


@pytest.mark.slow
def test_ray_data_reads_ingested_shards(video_dataset):
    import ray

    output, manifest = video_dataset
    urls = [str(Path(output) / s["name"]) for s in manifest["shards"]]
    rows = ray.data.read_webdataset(urls, decoder=None).take_all()
    assert len(rows) == manifest["num_samples"]
    keys = {r["__key__"] for r in rows}
    assert len(keys) == len(rows)
    clip = decode_sample(rows[0])
    assert clip.frames.shape[1:] == (SIZE, SIZE, 3)


@pytest.mark.slow
def test_cli_ingest_and_inspect_with_grid(ray_local, videos, tmp_path, capsys):
    from raylam.cli import main

    root, _ = videos
    config = tmp_path / "ingest.yaml"
    config.write_text(f"ingest:\n  source: video_folder\n  paths: [{root}]\n  output: {tmp_path / 'data'}\n"
                      f"  image_size: {SIZE}\n  clip_length: 16\n  overlap: 12\n  progress: false\n")
    assert main(["ingest", "--config", str(config), "ingest.heldout_fraction=0.0"]) == 0
    assert main(["inspect", str(tmp_path / "data"), "--grid", str(tmp_path / "grid.png")]) == 0
    out = capsys.readouterr().out
    assert "imported from video_folder" in out and "OK" in out
    from PIL import Image

    assert Image.open(tmp_path / "grid.png").size[0] > 3 * SIZE


@pytest.mark.slow
def test_frame_folders(ray_local, tmp_path):
    for i, length in enumerate((12, 20)):
        write_jpgs(tmp_path / "src" / f"run{i}", frames_of(i, length, 24, 24))
    np.save(tmp_path / "src" / "run1" / "actions.npy", np.ones((20, 3), np.float32))
    manifest = ingest(ingest_config("frame_folders", [tmp_path / "src"], tmp_path / "out"))
    assert manifest["episode_lengths"] == {"run0": 12, "run1": 20}
    assert manifest["labeled_episodes"] == ["run1"] and manifest["action_dim"] == 3
    clips = read_back(str(tmp_path / "out"))
    assert {c.meta["episode_id"] for c in clips} == {"run0", "run1"}
    short = [c for c in clips if c.meta["episode_id"] == "run0"]
    assert len(short) == 1 and len(short[0]) == 12  # shorter than a clip: one clip of the whole episode


def write_laom_hdf5(path: Path, episodes: int = 3, length: int = 20, hw: int = 24) -> None:
    """The layout of LAOM's collect_data.py: file attrs, one group per trajectory with obs/states/actions."""
    import h5py

    rng = np.random.default_rng(1)
    with h5py.File(path, "w", track_order=True) as f:
        f.attrs.update({"domain_name": "cheetah", "task_name": "run", "img_hw": hw, "difficulty": "easy"})
        for i in range(episodes):
            g = f.create_group(str(i))
            g.create_dataset("obs", data=frames_of(i, length, hw, hw), dtype=np.uint8)
            g.create_dataset("states", data=rng.normal(size=(length, 5)).astype(np.float32))
            g.create_dataset("actions", data=rng.normal(size=(length, 2)).astype(np.float32))
            g.attrs["traj_return"] = 10.0 * i


@pytest.mark.slow
def test_paper_hdf5(ray_local, tmp_path):
    import h5py

    path = tmp_path / "cheetah.hdf5"
    write_laom_hdf5(path)
    manifest = ingest(ingest_config("hdf5", [path], tmp_path / "out", num_labeled=1))
    assert manifest["available"] == {"actions": "all", "states": True, "rewards": False, "physics": False}
    assert (manifest["action_dim"], manifest["state_dim"], manifest["num_episodes"]) == (2, 5, 3)
    assert manifest["num_labeled"] == 1 and manifest["episode_return"]["max"] == 20.0
    clips = read_back(str(tmp_path / "out"))
    with h5py.File(path) as f:
        for clip in clips:
            group = f[clip.meta["source_item"]]
            window = slice(clip.meta["start"], clip.meta["start"] + len(clip))
            assert np.allclose(clip.actions, group["actions"][window]) and np.allclose(clip.states, group["states"][window])
            top = clip.frames[:, 2, :, 0].astype(float).mean(1)  # 24x24 resized to 32x32: flat regions stay
            assert np.allclose(top, frames_of(int(clip.meta["source_item"]), 20, 24, 24)[window][:, 2, :, 0].mean(1), atol=2)


def write_lerobot_v3(root: Path, lengths=(12, 9, 15), hw: int = 24, fps: int = 10, codec: str = "libx264") -> None:
    """A LeRobot v3 dataset on disk: every episode's frames in one mp4, rows in one parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    key = "observation.images.cam"
    features = {key: {"dtype": "video", "shape": [hw, hw, 3], "names": ["height", "width", "channels"]},
                "action": {"dtype": "float32", "shape": [2], "names": None},
                "observation.state": {"dtype": "float32", "shape": [4], "names": None},
                "timestamp": {"dtype": "float32", "shape": [1]}, "frame_index": {"dtype": "int64", "shape": [1]},
                "episode_index": {"dtype": "int64", "shape": [1]}, "index": {"dtype": "int64", "shape": [1]},
                "task_index": {"dtype": "int64", "shape": [1]}}
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    (root / "data" / "chunk-000").mkdir(parents=True)
    (root / "videos" / key / "chunk-000").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps({
        "codebase_version": "v3.0", "fps": fps, "features": features, "total_episodes": len(lengths),
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"}))
    frames = np.concatenate([frames_of(e, n, hw, hw) for e, n in enumerate(lengths)])
    write_video(root / "videos" / key / "chunk-000" / "file-000.mp4", frames, fps, codec)
    starts = np.cumsum((0, *lengths))
    rows = {"episode_index": [], "frame_index": [], "index": [], "timestamp": [], "action": [], "observation.state": []}
    for e, n in enumerate(lengths):
        for t in range(n):
            rows["episode_index"].append(e)
            rows["frame_index"].append(t)
            rows["index"].append(int(starts[e]) + t)
            rows["timestamp"].append(t / fps)
            rows["action"].append([float(e), float(t)])
            rows["observation.state"].append([float(e)] * 4)
    pq.write_table(pa.table(rows), root / "data" / "chunk-000" / "file-000.parquet")
    pq.write_table(pa.table({
        "episode_index": list(range(len(lengths))), "length": list(lengths),
        "data/chunk_index": [0] * len(lengths), "data/file_index": [0] * len(lengths),
        "dataset_from_index": [int(s) for s in starts[:-1]], "dataset_to_index": [int(s) for s in starts[1:]],
        f"videos/{key}/chunk_index": [0] * len(lengths), f"videos/{key}/file_index": [0] * len(lengths),
        f"videos/{key}/from_timestamp": [float(s) / fps for s in starts[:-1]],
        f"videos/{key}/to_timestamp": [float(s) / fps for s in starts[1:]],
    }), root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")


LEROBOT_KEYS = {"camera_key": "observation.images.cam", "action_key": "action", "state_key": "observation.state"}


@pytest.mark.slow
@pytest.mark.parametrize("codec", ["libx264", "libsvtav1"])  # LeRobot encodes AV1 by default
def test_lerobot_v3(ray_local, tmp_path, codec):
    write_lerobot_v3(tmp_path / "lerobot", codec=codec)
    cfg = ingest_config("lerobot", [tmp_path / "lerobot"], tmp_path / "out", lerobot=LEROBOT_KEYS)
    manifest = ingest(cfg)
    assert manifest["episode_lengths"] == {"ep000000": 12, "ep000001": 9, "ep000002": 15}
    assert (manifest["action_dim"], manifest["state_dim"], manifest["available"]["actions"]) == (2, 4, "all")
    assert len(manifest["labeled_episodes"]) == 3
    for clip in read_back(str(tmp_path / "out")):
        e = int(clip.meta["episode_id"][2:])
        steps = np.arange(clip.meta["start"], clip.meta["start"] + len(clip))
        assert np.array_equal(clip.actions, np.stack([np.full(len(clip), e), steps], 1).astype(np.float32))
        assert np.all(clip.states == e)
        # frames come from this episode's part of the shared mp4 (the seek found the right frame)
        top = clip.frames[:, 2, :, 0].mean(1)
        assert np.abs(top - episode_colour(e, 0)[:2].mean()).max() < 12, (e, top)
        bottom = clip.frames[:, -3, :, 0].mean(1)
        assert np.abs(bottom - np.array([episode_colour(e, t)[2] for t in steps])).max() < 12


# ---------------------------------------------------------------- training on imported data


@pytest.mark.slow
def test_laom_sup_trains_on_imported_video_without_states(video_dataset, tmp_path):
    from raylam.config import to_dict
    from raylam.models.config import ModelConfig
    from raylam.train.config import TrainConfig
    from raylam.train.trainer import train

    output, _ = video_dataset
    cfg = from_dict(TrainConfig, {
        "stage": "lam", "dataset": output, "storage_path": str(tmp_path), "run_name": "laom_sup",
        "model": {**to_dict(ModelConfig.small("laom_sup")), "image_size": SIZE, "max_offset": 4},
        "steps": 3, "batch_size": 8, "labeled_batch_size": 4, "report_every": 1, "checkpoint_every": 3,
        "num_workers": 1, "eval_every": 0, "data": {"clips_per_task": 2, "read_cpus": 0.5}})
    metrics = train(cfg, "ingest-test").metrics
    assert metrics["step"] == 3
    assert np.isfinite(metrics["loss"]) and np.isfinite(metrics["probe/action_mse"])
    assert "probe/state_mse" not in metrics  # no states: no state probe


# ---------------------------------------------------------------- failures


@pytest.mark.slow
def test_failed_shard_keeps_finished_ones_and_rerun_completes(ray_local, tmp_path):
    from PIL import Image

    from raylam.data.inspect import inspect_dataset

    for i in range(3):
        write_jpgs(tmp_path / "src" / f"run{i}", frames_of(i, 10, 16, 16))
    broken = tmp_path / "src" / "run1" / "5.jpg"
    broken.write_bytes(b"not a jpeg")  # the scan reads only first frames: this fails inside the shard's task
    cfg = ingest_config("frame_folders", [tmp_path / "src"], tmp_path / "out", episodes_per_shard=1, num_workers=1)
    with pytest.raises(IngestError, match=r"1 of 3 shards failed.*run1/5\.jpg: unreadable image"):
        ingest(cfg)
    out = tmp_path / "out"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["ingest_config.json", "shard-000000.json", "shard-000000.tar",
                     "shard-000002.json", "shard-000002.tar"]  # no half shard, no temporary, no manifest
    kept = {n: (out / n).stat().st_mtime_ns for n in ("shard-000000.tar", "shard-000002.tar")}

    Image.fromarray(frames_of(1, 10, 16, 16)[5]).save(broken)
    (out / "shard-000001.tar.tmp-0badc0de").write_bytes(b"half a shard")  # as a killed task leaves it
    manifest = ingest(cfg)
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]
    assert {n: (out / n).stat().st_mtime_ns for n in kept} == kept  # finished shards were not rewritten
    assert manifest["num_episodes"] == 3 and len(manifest["shards"]) == 3
    report = inspect_dataset(str(out))
    assert report.ok, report.summary()
    keys = [c.key for c in read_back(str(out))]
    assert len(keys) == len(set(keys)) == manifest["num_samples"]


@pytest.mark.slow
def test_rerun_drops_an_episode_whose_decode_failed(ray_local, tmp_path):
    """The user removes the video that failed and reruns: the episode is dropped (named in the
    manifest), finished shards are kept; removing an episode that was written is still refused."""
    import shutil

    from raylam.data.inspect import inspect_dataset

    src, out = tmp_path / "src", tmp_path / "out"
    for i in range(3):
        write_jpgs(src / f"run{i}", frames_of(i, 10, 16, 16))
    (src / "run1" / "5.jpg").write_bytes(b"not a jpeg")
    cfg = ingest_config("frame_folders", [src], out, episodes_per_shard=1, num_workers=1)
    with pytest.raises(IngestError, match=r"1 of 3 shards failed.*an episode removed from the source is dropped"):
        ingest(cfg)
    first = (out / "shard-000000.tar").stat().st_mtime_ns
    shutil.rmtree(src / "run1")
    manifest = ingest(cfg)
    assert manifest["dropped_episodes"] == ["run1"] and manifest["num_episodes"] == 2
    assert [s["episodes"] for s in manifest["shards"]] == [["run0"], ["run2"]]
    assert (out / "shard-000000.tar").stat().st_mtime_ns == first  # the finished shard was kept
    report = inspect_dataset(str(out))
    assert report.ok, report.summary()
    shutil.rmtree(src / "run2")
    with pytest.raises(IngestError, match="episode 'run2' is gone from the source but was written to shard-000001"):
        ingest(cfg)


@pytest.mark.slow
def test_train_on_imported_data_without_heldout_names_the_ingest_keys(video_dataset, capsys, tmp_path):
    from raylam.cli import main

    root = Path(__file__).resolve().parents[1]
    assert main(["train", "--config", str(root / "configs" / "ingest_example.yaml"),
                 f"train.dataset={video_dataset[0]}", f"train.storage_path={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "eval_every: got 100" in err and "ingest.min_heldout" in err, err
    assert "collect.heldout_episodes" not in err


def test_bad_inputs_fail_before_any_work(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "a.mp4", frames_of(0, 10, 32, 32))
    (videos / "b.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(IngestError, match=r"b\.mp4: unreadable video"):
        scan(ingest_config("video_folder", [videos], tmp_path / "o"))

    (videos / "b.mp4").unlink()
    write_video(videos / "b.mp4", frames_of(1, 10, 24, 32))
    with pytest.raises(IngestError, match=r"b\.mp4: frames are 24x32; expected 32x32 as in .*a\.mp4"):
        scan(ingest_config("video_folder", [videos], tmp_path / "o"))

    (videos / "b.mp4").unlink()
    np.save(videos / "a.npy", np.zeros((7, 2), np.float32))
    with pytest.raises(IngestError, match=r"a\.npy: 7 action rows for 10 frames of episode a .*expected 10 \(or 9\)"):
        scan(ingest_config("video_folder", [videos], tmp_path / "o"))

    write_lerobot_v3(tmp_path / "lerobot", lengths=(4,))
    with pytest.raises(IngestError, match=r"info\.json: lerobot\.state_key 'observation\.joints' is not a feature"):
        scan(ingest_config("lerobot", [tmp_path / "lerobot"], tmp_path / "o",
                           lerobot={**LEROBOT_KEYS, "state_key": "observation.joints"}))

    write_laom_hdf5(tmp_path / "paper.hdf5", episodes=1, length=4)
    with pytest.raises(IngestError, match=r"paper\.hdf5:/0: no dataset 'rewards'.*hdf5\.action_key"):
        scan(ingest_config("hdf5", [tmp_path / "paper.hdf5"], tmp_path / "o", hdf5={"action_key": "rewards"}))
    assert not (tmp_path / "o").exists()  # nothing was written


@pytest.mark.slow
def test_probes_use_episodes_with_actions_and_skip_states(video_dataset):
    """The ridge probe streams every window but fits and scores only rows with true actions; the
    state probe is skipped (no states) and rollouts too (no environment), and the evaluation says so."""
    from raylam.data.pipeline import DatasetInfo
    from raylam.eval.config import EvalConfig, ProbeConfig
    from raylam.eval.evaluate import evaluations_run
    from raylam.eval.probes import stream_probes

    info = DatasetInfo(video_dataset[0])
    cfg = ProbeConfig(fit_split="train", test_split="train", batch_size=32, max_fit_windows=None)
    out = stream_probes(info, 3, cfg, lambda b: (b.actions, b.obs.flatten(1)[:, :4].float()))
    assert out["state"] == {"skipped": "the dataset has no states (state_dim 0)"}
    assert out["fit_windows"] == out["test_windows"] == (27 - 1) + (32 - 1)  # windows of cam1 and cam2 only
    assert out["action"]["r2"] > 0.999
    lines = evaluations_run(EvalConfig(), info, probes=True, rollouts=True)
    assert lines[0] == "action probe: ran" and lines[1].startswith("state probe: skipped")
    assert lines[2].startswith("rollouts: skipped, the dataset was imported (video_folder)")


@pytest.mark.slow
def test_laom_trains_on_video_without_any_actions(ray_local, tmp_path):
    """A folder of videos and nothing else: action_dim 0, no labels; unsupervised LAOM still trains."""
    from raylam.config import to_dict
    from raylam.models.config import ModelConfig
    from raylam.train.config import TrainConfig
    from raylam.train.trainer import train

    (tmp_path / "src").mkdir()
    for i in range(2):
        write_video(tmp_path / "src" / f"v{i}.mp4", frames_of(i, 30, 32, 32))
    manifest = ingest(ingest_config("video_folder", [tmp_path / "src"], tmp_path / "data"))
    assert manifest["available"]["actions"] == "none" and manifest["action_dim"] == 0
    assert manifest["num_labeled"] == 0
    cfg = from_dict(TrainConfig, {
        "stage": "lam", "dataset": str(tmp_path / "data"), "storage_path": str(tmp_path), "run_name": "laom",
        "model": {**to_dict(ModelConfig.small("laom")), "image_size": SIZE, "max_offset": 4},
        "steps": 2, "batch_size": 8, "report_every": 1, "checkpoint_every": 2, "num_workers": 1, "eval_every": 0,
        "data": {"clips_per_task": 2, "read_cpus": 0.5}})
    metrics = train(cfg, "ingest-test").metrics
    assert metrics["step"] == 2 and np.isfinite(metrics["loss"])
    assert not any(k.startswith("probe/") for k in metrics)  # neither actions nor states to probe


@pytest.mark.slow
def test_decoded_bytes_counts_clips_of_episodes_of_any_length(video_dataset):
    """The cache decision sizes imported data by each episode's own length, not the longest one's."""
    from raylam.data.clips import decoded_bytes
    from raylam.data.pipeline import DatasetInfo

    info = DatasetInfo(video_dataset[0])
    assert decoded_bytes(info) == info.manifest["num_samples"] * 16 * SIZE * SIZE * 3
    clips_cam1 = len(clip_starts(27, 16, 12)) + len(clip_starts(32, 16, 12))
    assert decoded_bytes(info, labeled_only=True) == clips_cam1 * 16 * SIZE * SIZE * 3


def test_labeled_subset_nests_and_bad_choices_are_named(tmp_path):
    from raylam.data.ingest.writer import label_order

    for i in range(8):
        write_jpgs(tmp_path / "src" / f"ep{i}", frames_of(0, 3, 8, 8))
        if i < 6:
            np.save(tmp_path / "src" / f"ep{i}" / "actions.npy", np.zeros((3, 1), np.float32))

    def order(**changes):
        cfg = ingest_config("frame_folders", [tmp_path / "src"], tmp_path / "o", heldout_fraction=0.3, **changes)
        refs = scan(cfg)
        return label_order(cfg, refs, assign_splits(cfg, refs)), assign_splits(cfg, refs)

    everything, splits = order()
    train_with_actions = sorted(e for e, s in splits.items() if s == "train" and int(e[2:]) < 6)
    assert sorted(everything) == train_with_actions and len(everything) >= 2
    two, _ = order(num_labeled=2)
    assert two == everything[:2]  # budgets nest: the 2-label set is the first 2 of the full order
    held_out = next(e for e, s in splits.items() if s == "heldout")
    with pytest.raises(IngestError, match=f"labeled_episodes: episode '{held_out}' is held out"):
        order(labeled_episodes=[held_out])
    with pytest.raises(IngestError, match="labeled_episodes: episode 'ep7' has no actions"):
        order(labeled_episodes=["ep7"])
    with pytest.raises(IngestError, match=f"num_labeled: got 9, but only {len(everything)} training episodes have"):
        order(num_labeled=9)


def test_example_config_loads_with_its_training_chain():
    from raylam.experiment import load_experiment

    root = Path(__file__).resolve().parents[1]
    exp = load_experiment(root / "configs" / "ingest_example.yaml", ["ingest.paths=[data/other_videos]"])
    assert exp.ingest.source == "video_folder" and exp.ingest.paths == ["data/other_videos"]
    assert exp.train.dataset == exp.ingest.output
    assert [exp.stage(i).stage for i in range(len(exp.stages))] == ["lam", "relabel", "latent_bc", "action_decoder"]
