"""Ray Data streaming of decoded *clips*: the unit that travels from the decode tasks to training.

read_webdataset (one read task per tar, only the members training reads) -> ``map_batches`` that
decodes each clip (CPU tasks, never on a GPU worker) -> one row per clip:

    frames    uint8   [T, H, W, C]  padded to the dataset's clip_length (``length`` frames are real)
    actions   float32 [T, A]        states float32 [T, S]        latents float32 [T, D] (latent BC)
    episode, start, episode_length, length, owned_lo, owned_hi (int64), labeled (bool)

``owned_lo <= t < owned_hi`` are the episode steps whose windows this clip owns
(:func:`raylam.data.windows.owned_ranges`), so one pass over the clips is one pass over the
transitions. Windows (frame stacks, next frame, future stack) are cut where the model runs
(:mod:`raylam.train.sampling`): each frame crosses the object store and the host-to-device copy
once, instead of seven times per window.
"""

from __future__ import annotations

import json

import numpy as np

from raylam.data.pipeline import DatasetInfo, EpisodeLabels, WindowSpec, read_shards
from raylam.data.shards import ShardError, _npy_load, clip_starts, decode_frames_mp4
from raylam.data.windows import owned_ranges

# Members a training clip needs; physics and rewards are never read (``suffixes`` skips them in the read task).
CLIP_MEMBERS = ["frames.mp4", "frames.npy", "actions.npy", "states.npy", "meta.json"]


class DecodeClips:
    """``map_batches`` callable: raw clip samples -> decoded, padded clip rows (see module doc).

    Labeled-ness comes from ``meta.json`` and the label budget *before* any frame is decoded, so a
    labeled-only stream never decodes an unlabeled clip.
    """

    def __init__(self, spec: WindowSpec, manifest: dict, labeled_episodes: list[str],
                 labeled_only: bool = False, labels: str | None = None):
        self.spec, self.clip_length, self.overlap = spec, manifest["clip_length"], manifest["overlap"]
        self.shapes = {"frames": tuple(manifest["frame_shape"]), "actions": (manifest["action_dim"],),
                       "states": (manifest["state_dim"],)}
        self.labeled = frozenset(labeled_episodes)
        self.labeled_only = labeled_only
        self.labels = None if labels is None else EpisodeLabels(labels)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows: list[dict[str, np.ndarray]] = []
        keys, urls = batch["__key__"], batch.get("__url__")
        members = {name.lstrip("."): column for name, column in batch.items() if not name.startswith("__")}
        for i in range(len(keys)):
            where = f"{'' if urls is None else urls[i]}:{keys[i]}"
            meta = members.get("meta.json")
            if meta is None:
                raise ShardError(f"{where}: member meta.json is missing")
            meta = json.loads(meta[i]) if isinstance(meta[i], (bytes, bytearray)) else dict(meta[i])
            labeled = meta["episode_id"] in self.labeled
            if self.labeled_only and not labeled:
                continue
            rows.append(self._row(members, i, meta, labeled, where))
        if not rows:  # every clip was unlabeled: zero rows, with the schema the other blocks have
            return self._empty()
        return {name: np.stack([r[name] for r in rows]) for name in rows[0]}

    def _empty(self):
        t = self.clip_length
        out = {"frames": np.zeros((0, t, *self.shapes["frames"]), np.uint8),
               "actions": np.zeros((0, t, *self.shapes["actions"]), np.float32),
               "states": np.zeros((0, t, *self.shapes["states"]), np.float32)}
        out.update({name: np.zeros(0, np.int64) for name in
                    ("episode", "start", "episode_length", "length", "owned_lo", "owned_hi")})
        out["labeled"] = np.zeros(0, np.bool_)
        if self.labels is not None:
            out["latents"] = np.zeros((0, t, self.labels.dim or 0), np.float32)
        # built as Arrow tensors here: Ray Data cannot infer a tensor type from zero rows and would
        # fall back to pickled objects, a schema the other blocks do not have
        import pyarrow as pa
        from ray.data.extensions.tensor_extension import ArrowTensorArray

        return pa.table({name: ArrowTensorArray.from_numpy(a, column_name=name) if a.ndim > 1 else pa.array(a)
                         for name, a in out.items()})

    def _row(self, members, i: int, meta: dict, labeled: bool, where: str) -> dict[str, np.ndarray]:
        if members.get("frames.mp4") is not None and members["frames.mp4"][i] is not None:
            try:
                frames = decode_frames_mp4(bytes(members["frames.mp4"][i]))
            except ShardError as err:
                raise ShardError(f"{where}: {err}") from None
        elif members.get("frames.npy") is not None:
            frames = _npy_load(bytes(members["frames.npy"][i]), f"{where}: frames.npy")
        else:
            raise ShardError(f"{where}: no frames member (has {sorted(members)})")
        actions = _npy_load(bytes(members["actions.npy"][i]), f"{where}: actions.npy").astype(np.float32)
        states = _npy_load(bytes(members["states.npy"][i]), f"{where}: states.npy").astype(np.float32)
        n, start, length = len(frames), int(meta["start"]), int(meta["episode_length"])
        if len(actions) != n or len(states) != n:
            raise ShardError(f"{where}: {len(actions)} actions and {len(states)} states for {n} frames")
        ranges = {s: (lo, hi) for s, lo, hi in owned_ranges(length, self.clip_length, self.overlap,
                                                              self.spec.frame_stack, self.spec.max_offset)}
        if start not in ranges:
            raise ShardError(f"{where}: start {start} is not a clip start for this dataset's layout")
        lo, hi = ranges[start]
        pad = self.clip_length - n
        row = {
            "frames": _pad(frames, pad),
            "actions": _pad(actions, pad),
            "states": _pad(states, pad),
            "episode": np.int64(meta["episode_index"]),
            "start": np.int64(start),
            "episode_length": np.int64(length),
            "length": np.int64(n),
            "owned_lo": np.int64(lo),
            "owned_hi": np.int64(hi),
            "labeled": np.bool_(labeled),
        }
        if self.labels is not None:
            latents = np.zeros((n, 0), np.float32)
            owned = np.arange(lo, hi)
            if len(owned):
                values = self.labels.lookup(int(meta["episode_index"]), owned)
                latents = np.zeros((n, values.shape[1]), np.float32)
                latents[owned - start] = values
            elif self.labels.dim:
                latents = np.zeros((n, self.labels.dim), np.float32)
            row["latents"] = _pad(latents, pad)
        return row


def _pad(array: np.ndarray, pad: int) -> np.ndarray:
    if pad <= 0:
        return array
    return np.concatenate([array, np.zeros((pad, *array.shape[1:]), array.dtype)])


def clip_dataset(info: DatasetInfo, spec: WindowSpec, split: str = "train", labeled_only: bool = False,
                 clips_per_task: int = 4, shuffle_seed: int | None = 0, num_cpus: float = 1.0,
                 labels: str | None = None, order: str = "shards"):
    """A streaming Ray Dataset of decoded clips (one row per clip) of the ``split`` shards of ``info``.

    ``order="shards"``: read_webdataset over the shards, shard order reshuffled every epoch (a
    shard's clips arrive together). ``order="clips"``: every clip in a seeded global random order,
    fetched by ranged reads through the clip index (:mod:`raylam.data.clip_index`), so consecutive
    clips come from different episodes; for streams, whose pool of clips should span many episodes.
    """
    decode = DecodeClips(spec, info.manifest, info.labeled_episodes(spec.num_labeled), labeled_only, labels)
    if order == "clips":
        from raylam.data.clip_index import clip_index, clip_stream_dataset, fetch_rows, random_clip_order

        info.check_windows(spec)
        labeled = set(info.labeled_episodes(spec.num_labeled)) if labeled_only else None
        rows = random_clip_order(clip_index(info, split, num_cpus), labeled, shuffle_seed)
        if not rows:
            raise ValueError(f"dataset {info.uri}: the {split} split has no {'labeled ' if labeled_only else ''}clips")
        return clip_stream_dataset(fetch_rows(rows), decode, clips_per_task, num_cpus)
    if order != "shards":
        raise ValueError(f"order: got {order!r}, expected 'shards' or 'clips'")
    ds = read_shards(info, spec, split, labeled_only, shuffle_seed, num_cpus, suffixes=CLIP_MEMBERS)
    return ds.map_batches(decode, batch_size=clips_per_task, batch_format="numpy", num_cpus=num_cpus)


def decoded_bytes(info: DatasetInfo, split: str = "train", labeled_only: bool = False,
                  num_labeled: int | None = None) -> int:
    """Bytes of frames the clips of ``split`` take once decoded (padded to clip_length): the cache test."""
    names = set(info.manifest["splits"].get(split, []))
    labeled = set(info.labeled_episodes(num_labeled))
    clips = 0
    lengths = info.manifest.get("episode_lengths", {})  # imported data: episodes of any length
    clip_length, overlap = info.manifest["clip_length"], info.manifest["overlap"]
    for shard in info.manifest["shards"]:
        if shard["name"] not in names:
            continue
        episodes = [e for e in shard["episodes"] if not labeled_only or e in labeled]
        clips += sum(len(clip_starts(lengths.get(e, info.manifest["episode_length"]), clip_length, overlap))
                     for e in episodes)
    h, w, c = info.manifest["frame_shape"]
    return clips * info.manifest["clip_length"] * h * w * c


def read_clips_local(info: DatasetInfo, spec: WindowSpec, split: str = "train", labeled_only: bool = False,
                     clips_per_batch: int = 8):
    """The same decoded clip batches as :func:`clip_dataset`, read in this process without Ray (shard
    order of the manifest): for experiments and benchmarks that hold a dataset in memory."""
    from raylam.data.shards import iter_tar_samples

    info.check_windows(spec)
    decode = DecodeClips(spec, info.manifest, info.labeled_episodes(spec.num_labeled), labeled_only)
    for url in info.shard_urls(split, labeled_only, spec.num_labeled):
        name = url.rsplit("/", 1)[-1]
        with info.location.open_read(name) as stream:
            samples = [s for s in iter_tar_samples(stream, url)]
        for i in range(0, len(samples), clips_per_batch):
            chunk = samples[i:i + clips_per_batch]
            batch = {"__key__": np.array([s["__key__"] for s in chunk])}
            for member in CLIP_MEMBERS:
                if all(member in s for s in chunk):
                    batch[member] = np.array([s[member] for s in chunk], dtype=object)
            decoded = decode(batch)
            if isinstance(decoded, dict):  # an Arrow table here is the zero-row case: nothing to yield
                yield decoded
