"""Clip-level random access into WebDataset shards, for streams that mix episodes like i.i.d. sampling.

A shard holds a few whole episodes, so a stream that reads shards one after another delivers one
episode's clips in a row, and a training worker's pool of clips spans few episodes (the released
code samples i.i.d. over all transitions: a batch of 512 spans ~490 episodes). Here each shard's
tar headers are read once into an index (where each clip's members lie, and its ``meta.json``);
the stream then visits clips in a seeded global random order and fetches each clip with one ranged
read (one GET on object storage) of its members, which are adjacent in the tar. The index is tiny
(a row per clip) and lets a labeled-only stream skip unlabeled clips before reading a byte of them.
"""

from __future__ import annotations

import json
import tarfile

import numpy as np

from raylam.data.shards import ShardError
from raylam.data.storage import resolve


def index_shard(url: str) -> list[dict]:
    """One row per clip of the tar at ``url``: its byte range, member offsets and meta.json."""
    parent, name = url.rsplit("/", 1)
    location = resolve(parent)
    rows: list[dict] = []
    current: dict | None = None
    try:
        with location.open_read(name) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                stem, dot, suffix = info.name.rpartition("/")[2].partition(".")
                key = f"{info.name.rpartition('/')[0]}/{stem}" if "/" in info.name else stem
                if not dot:
                    raise ShardError(f"{url}: member {info.name!r} has no extension")
                if current is None or current["key"] != key:
                    current = {"url": url, "key": key, "offset": info.offset_data, "end": info.offset_data,
                               "members": {}, "meta": None}
                    rows.append(current)
                current["members"][suffix] = [info.offset_data, info.size]
                current["end"] = info.offset_data + info.size
                if suffix == "meta.json":
                    current["meta"] = json.loads(tar.extractfile(info).read())
    except (tarfile.TarError, EOFError, OSError) as err:
        raise ShardError(f"{url}: not a readable tar ({type(err).__name__}: {err})") from None
    for row in rows:
        if row["meta"] is None:
            raise ShardError(f"{url}:{row['key']}: member meta.json is missing")
        row["members"] = {s: [o - row["offset"], n] for s, (o, n) in row["members"].items()}
        row["length"] = row.pop("end") - row["offset"]
    return rows


_INDEX: dict[tuple, list[dict]] = {}


def clip_index(info, split: str, num_cpus: float = 0.5) -> list[dict]:
    """The index rows of every clip of ``split`` in manifest order (shards indexed in parallel as
    Ray tasks; kept for the life of this process, so the stages of a pipeline index once)."""
    import ray

    urls = info.shard_urls(split)
    key = (info.uri, split, tuple(urls), tuple(s.get("sha256", "") for s in info.manifest["shards"]))
    if key not in _INDEX:
        task = ray.remote(index_shard).options(num_cpus=num_cpus)
        _INDEX[key] = [row for rows in ray.get([task.remote(url) for url in urls]) for row in rows]
    return _INDEX[key]


def random_clip_order(rows: list[dict], labeled: set[str] | None, seed: int | None) -> list[dict]:
    """The clips a stream visits: only ``labeled`` episodes' when given, in a seeded random order
    (the manifest's order when ``seed`` is None)."""
    if labeled is not None:
        rows = [row for row in rows if row["meta"]["episode_id"] in labeled]
    if seed is None:
        return list(rows)
    order = np.random.default_rng(seed).permutation(len(rows))
    return [rows[i] for i in order]


class FetchClips:
    """``map_batches`` callable: index rows -> the raw samples read_webdataset would give (member
    bytes by name), one ranged read per clip; then ``decode`` (a :class:`DecodeClips`)."""

    def __init__(self, decode, members: list[str]):
        self.decode, self.members = decode, members

    def __call__(self, batch: dict[str, np.ndarray]) -> dict:
        samples = []
        for url, key, offset, length, members in zip(batch["url"], batch["key"], batch["offset"], batch["length"],
                                                     batch["members"], strict=True):
            parent, name = str(url).rsplit("/", 1)
            location = resolve(parent)
            with location.fs.open_input_file(location.path(name)) as f:
                data = f.read_at(int(length), int(offset))
            if len(data) != int(length):
                raise ShardError(f"{url}:{key}: read {len(data)} of {int(length)} bytes")
            layout = json.loads(members)
            samples.append({suffix: data[o:o + n] for suffix, (o, n) in layout.items() if suffix in self.members})
        raw = {"__key__": np.array([str(k) for k in batch["key"]])}
        for member in self.members:
            if all(member in s for s in samples):
                raw[member] = np.array([s[member] for s in samples], dtype=object)
        return self.decode(raw)


def fetch_rows(rows: list[dict]) -> list[dict]:
    """Index rows as Ray Data items (members as JSON text, meta left out: the fetched meta.json is
    what decoding reads)."""
    return [{"url": r["url"], "key": r["key"], "offset": r["offset"], "length": r["length"],
             "members": json.dumps(r["members"])} for r in rows]


def clip_stream_dataset(items: list[dict], decode, clips_per_task: int, num_cpus: float):
    """A Ray Dataset over ``items`` (:func:`fetch_rows`, in their order) that fetches and decodes each
    clip with ``decode`` (a :class:`DecodeClips`): blocks of a few decode tasks' worth of clips."""
    import ray

    from raylam.data.clips import CLIP_MEMBERS

    blocks = max(1, min(len(items) // (4 * clips_per_task), 1024))
    return ray.data.from_items(items, override_num_blocks=blocks).map_batches(FetchClips(decode, CLIP_MEMBERS), batch_size=clips_per_task, batch_format="numpy",
                             num_cpus=num_cpus)
