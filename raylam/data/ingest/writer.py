"""Ingest as Ray tasks: one task per output shard, the same tar layout and manifest as collection.

The driver scans the source (cheap checks, no decoding), plans the shards (a pure function of the
config and the episode list), skips shards already whole and submits the rest. A task streams its
episodes, cuts them into overlapping clips as they decode, writes the tar under a temporary name
and renames it when whole, so an interrupted or failed ingest keeps every finished shard and a
rerun writes only the missing ones. A task that fails on bad input does not stop the others; the
driver reports every failure at the end, naming the file.

What the source lacks is absent, never invented: no states -> ``states.npy`` is [T, 0]
(state_dim 0: no state probe exists); no physics -> [T, 0]; no rewards -> NaN; an episode without
actions among episodes with actions -> NaN actions (the manifest's ``available.actions`` is
"some" and ``action_episodes`` lists those with true actions). Readers check ``available``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time

import numpy as np

from raylam import __version__
from raylam.config import did_you_mean, to_dict
from raylam.console import announce_ray_start
from raylam.data.ingest.config import IngestConfig
from raylam.data.ingest.episodes import EpisodeRef, IngestError, check_action_rows
from raylam.data.ingest.sources import read_episode, scan, source_dims
from raylam.data.manifest import FORMAT, MANIFEST
from raylam.data.plan import ShardPlan, finished_shards
from raylam.data.shards import Clip, clip_key, encode_clip, write_tar
from raylam.data.storage import Location, resolve

PLAN = "ingest_config.json"


# ---------------------------------------------------------------- split and labels


def _unit_hash(*parts) -> float:
    """A number in [0, 1) from the parts: the same for an episode whatever other episodes exist."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_heldout(episode_id: str, seed: int, fraction: float) -> bool:
    return _unit_hash("heldout", seed, episode_id) < fraction


def assign_splits(cfg: IngestConfig, refs: list[EpisodeRef]) -> dict[str, str]:
    """{episode id: "train" | "heldout"}: the named ``heldout_episodes``, else those whose hash of (id,
    seed) falls under ``heldout_fraction``, topped up to ``min_heldout`` in the same hash order (so a
    few videos still hold one out, and adding episodes moves few of them)."""
    ids = [r.episode_id for r in refs]
    if cfg.heldout_episodes is not None:
        unknown = [e for e in cfg.heldout_episodes if e not in ids]
        if unknown:
            raise IngestError(f"heldout_episodes: {unknown[0]!r} is not an episode of {cfg.paths}"
                              f"{did_you_mean(unknown[0], ids)}; episodes: {', '.join(ids[:10])}"
                              + (" ..." if len(ids) > 10 else ""))
        held = set(cfg.heldout_episodes)
    else:
        by_hash = sorted(ids, key=lambda e: _unit_hash("heldout", cfg.split_seed, e))
        held = {e for e in ids if is_heldout(e, cfg.split_seed, cfg.heldout_fraction)}
        wanted = cfg.wanted_heldout()
        if cfg.min_heldout is None:  # the implicit one held-out episode never takes the only training one
            wanted = min(wanted, len(ids) - 1)
        held.update(e for e in by_hash if e not in held and len(held) < wanted)
    splits = {e: "heldout" if e in held else "train" for e in ids}
    if "train" not in splits.values():
        raise IngestError(f"{heldout_keys(cfg)}: all {len(ids)} episodes would be held out; expected at least one "
                          "training episode")
    return splits


def heldout_keys(cfg: IngestConfig) -> str:
    """The settings that chose the held-out split, for a message."""
    if cfg.heldout_episodes is not None:
        return f"ingest.heldout_episodes {cfg.heldout_episodes}"
    return (f"ingest.heldout_fraction {cfg.heldout_fraction}"
            + (f", ingest.min_heldout {cfg.min_heldout}" if cfg.min_heldout is not None else ""))


def label_order(cfg: IngestConfig, refs: list[EpisodeRef], splits: dict[str, str]) -> list[str]:
    """Training episodes whose actions may train, in a seeded, stable order (a budget n takes the first n)."""
    with_actions = {r.episode_id for r in refs if r.has_actions}
    if cfg.labeled_episodes is not None:
        for episode in cfg.labeled_episodes:
            if episode not in splits:
                raise IngestError(f"labeled_episodes: {episode!r} is not an episode of {cfg.paths}")
            if episode not in with_actions:
                raise IngestError(f"labeled_episodes: episode {episode!r} has no actions (no sidecar / action key)")
            if splits[episode] != "train":
                raise IngestError(f"labeled_episodes: episode {episode!r} is held out by the split "
                                  f"({heldout_keys(cfg)}, split_seed {cfg.split_seed})")
        return list(cfg.labeled_episodes)
    candidates = sorted((e for e in with_actions if splits[e] == "train"),
                        key=lambda e: _unit_hash("label", cfg.split_seed, e))
    if cfg.num_labeled is not None and cfg.num_labeled > len(candidates):
        raise IngestError(f"num_labeled: got {cfg.num_labeled}, but only {len(candidates)} training episodes have actions")
    return candidates if cfg.num_labeled is None else candidates[:cfg.num_labeled]


def plan_shards(cfg: IngestConfig, refs: list[EpisodeRef], splits: dict[str, str]) -> list[ShardPlan]:
    """Training shards first, then held-out ones; episodes in id order; a shard never mixes splits."""
    plans: list[ShardPlan] = []
    for split in ("train", "heldout"):
        indices = [i for i, r in enumerate(refs) if splits[r.episode_id] == split]
        for lo in range(0, len(indices), cfg.episodes_per_shard):
            plans.append(ShardPlan(index=len(plans), split=split,
                                   episodes=tuple(indices[lo:lo + cfg.episodes_per_shard])))
    return plans


# ---------------------------------------------------------------- clips from a stream


class ClipCutter:
    """Cuts a stream of frames into the clips :func:`raylam.data.shards.clip_starts` gives for the
    episode's length, without knowing the length in advance: memory is one clip of frames."""

    def __init__(self, clip_length: int, overlap: int):
        self.clip_length, self.stride = clip_length, clip_length - overlap
        self.frames: list[np.ndarray] = []
        self.base = 0  # episode step of frames[0]
        self.count = 0
        self.next_start = 0
        self.last_start: int | None = None

    def push(self, frame: np.ndarray) -> list[tuple[int, np.ndarray]]:
        self.frames.append(frame)
        self.count += 1
        out = []
        if self.count == self.next_start + self.clip_length:
            out.append(self._take(self.next_start, self.count))
            self.last_start = self.next_start
            self.next_start += self.stride
        keep_from = min(self.next_start, self.count - self.clip_length)  # finish() may need the last clip
        if keep_from > self.base:
            del self.frames[:keep_from - self.base]
            self.base = keep_from
        return out

    def finish(self) -> list[tuple[int, np.ndarray]]:
        if self.count == 0:
            return []
        if self.last_start is None:  # shorter than one clip: the whole episode
            return [self._take(0, self.count)]
        if self.last_start + self.clip_length < self.count:
            return [self._take(self.count - self.clip_length, self.count)]
        return []

    def _take(self, start: int, stop: int) -> tuple[int, np.ndarray]:
        return start, np.stack(self.frames[start - self.base:stop - self.base])


def episode_samples(cfg: IngestConfig, ref: EpisodeRef, index: int, split: str, labeled: bool,
                    dims: dict[str, int]) -> tuple[list[dict], int]:
    """Stream one episode into encoded samples (frames compressed as each clip completes); returns
    the samples and the episode's length."""
    data = read_episode(cfg, ref)
    where = ref.sidecar or ref.path
    for name, array in (("action", data.actions), ("state", data.states)):
        if array is not None and array.shape[1] != dims[f"{name}_dim"]:
            raise IngestError(f"{where}: {array.shape[1]} {name} dims for episode {ref.episode_id}; expected "
                              f"{dims[f'{name}_dim']} as the dataset's first episode")
    cutter, clips, seen = ClipCutter(cfg.clip_length, cfg.overlap), [], 0
    limit = data.max_frames
    for frame in data.frames:
        seen += 1
        if limit is not None and seen > limit + 1:
            break  # more frames than actions + 1: reported below without decoding the rest
        if limit is None or seen <= limit:
            clips += cutter.push(frame)
    clips += cutter.finish()
    if data.actions is not None:
        check_action_rows(ref, len(data.actions), seen)
    length = cutter.count
    if length < cfg.min_length:
        raise IngestError(f"{ref.path}: {length} frames; expected at least min_length {cfg.min_length}")
    samples = []
    for clip_index, (start, frames) in enumerate(clips):
        n, window = len(frames), slice(start, start + len(frames))
        actions = (data.actions[window] if data.actions is not None
                   else np.full((n, dims["action_dim"]), np.nan, np.float32))
        states = data.states[window] if data.states is not None else np.zeros((n, 0), np.float32)
        clip = Clip(key=clip_key(ref.episode_id, clip_index), frames=frames, actions=actions, states=states,
                    rewards=np.full(n, np.nan, np.float32), physics=np.zeros((n, 0), np.float64))
        sample = encode_clip(clip, cfg.frames_format, cfg.crf)
        meta = {"task": cfg.task, "episode_id": ref.episode_id, "episode_index": index, "clip_index": clip_index,
                "start": start, "episode_length": length, "labeled": labeled, "split": split,
                "has_actions": data.actions is not None, **data.meta}
        sample["meta.json"] = json.dumps(meta, sort_keys=True).encode()
        samples.append(sample)
    return samples, length


def write_shard(cfg: IngestConfig, plan: ShardPlan, refs: list[EpisodeRef], labeled: frozenset[str],
                dims: dict[str, int]) -> dict:
    """Read a shard's episodes and write its tar under a temporary name, then rename (as collection)."""
    location = resolve(cfg.output)
    started = time.perf_counter()
    samples, frames, lengths = [], 0, {}
    for index, ref in zip(plan.episodes, refs, strict=True):
        episode, length = episode_samples(cfg, ref, index, plan.split, ref.episode_id in labeled, dims)
        samples += episode
        frames += length
        lengths[ref.episode_id] = length
    tmp, stats = location.write_temporary(plan.name, lambda stream: write_tar(stream, samples))
    info = {
        "name": plan.name, "index": plan.index, "split": plan.split,
        "episodes": [r.episode_id for r in refs],
        "labeled_episodes": [r.episode_id for r in refs if r.episode_id in labeled],
        "action_episodes": [r.episode_id for r in refs if r.has_actions],
        "episode_lengths": lengths,
        "returns": {r.episode_id: r.extra["traj_return"] for r in refs if "traj_return" in r.extra},
        "frames": frames, "seconds": time.perf_counter() - started, **stats,
    }
    location.write_json(plan.info_name, info)
    location.rename(tmp, plan.name)
    return info


# ---------------------------------------------------------------- the job


def _plan_fields(cfg: IngestConfig, refs: list[EpisodeRef]) -> dict:
    data = to_dict(cfg)
    for key in ("num_workers", "max_retries", "progress", "output"):
        data.pop(key)
    data["episodes"] = [r.episode_id for r in refs]
    return data


def _check_same_plan(location: Location, wanted: dict) -> list[str]:
    """Refuse to mix two different ingests (or a source that gained episodes) in one output; returns
    the episodes of the first run that the source no longer holds (see :func:`_written_episodes`)."""
    if not location.exists(PLAN):
        location.write_json(PLAN, wanted)
        return []
    existing = location.read_json(PLAN)  # kept as first written: every rerun is compared with it
    dropped: list[str] = []
    for key in sorted(set(wanted) | set(existing)):
        if existing.get(key) == wanted.get(key):
            continue
        if key == "episodes" and set(wanted[key]) < set(existing.get(key) or []):
            dropped = [e for e in existing[key] if e not in set(wanted[key])]
            continue
        what = ("the source's episodes changed" if key == "episodes"
                else f"{key}: {existing.get(key)!r} there, {wanted.get(key)!r} now")
        raise IngestError(f"{location.uri} already holds an ingest made from other inputs ({what}); "
                          "choose another output or delete that directory")
    written = _written_episodes(location) if dropped else {}
    kept = sorted(e for e in dropped if e in written)
    if kept:
        raise IngestError(f"{location.uri} already holds an ingest made from other inputs (episode {kept[0]!r} "
                          f"is gone from the source but was written to {written[kept[0]]}; only an episode whose "
                          "shard failed may be dropped); choose another output or delete that directory")
    return dropped


def _written_episodes(location: Location) -> dict[str, str]:
    """{episode id: shard} of every shard already whole in ``location`` (its info file is written
    just before the tar is renamed into place, so a failed shard has none)."""
    names = set(location.list())
    out = {}
    for name in sorted(names):
        if name.startswith("shard-") and name.endswith(".json") and name.replace(".json", ".tar") in names:
            out.update({e: name.replace(".json", ".tar") for e in location.read_json(name)["episodes"]})
    return out


def _still_valid(info: dict, plan: ShardPlan, refs: list[EpisodeRef], labeled: frozenset[str]) -> bool:
    """A finished shard is reused only if it holds what the plan now puts there (after a dropped
    episode the shards after it hold other episodes, or other labeled flags)."""
    episodes = [refs[i].episode_id for i in plan.episodes]
    return (info.get("episodes") == episodes and info.get("split") == plan.split
            and info.get("labeled_episodes") == [e for e in episodes if e in labeled])


def build_manifest(cfg: IngestConfig, infos: list[dict], order: list[str], dims: dict[str, int],
                   refs: list[EpisodeRef]) -> dict:
    with_actions = [r.episode_id for r in refs if r.has_actions]
    available_actions = "all" if len(with_actions) == len(refs) else "some" if with_actions else "none"
    lengths = [n for info in infos for n in info["episode_lengths"].values()]
    returns = [r for info in infos for r in info["returns"].values()]
    manifest = {
        "format": FORMAT,
        "raylam_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "task": cfg.task,
        "source": cfg.source,
        "imported": True,
        "available": {"actions": available_actions, "states": dims["state_dim"] > 0, "rewards": False,
                      "physics": False},
        "action_episodes": with_actions if available_actions == "some" else [],
        "frame_shape": [cfg.image_size, cfg.image_size, 3],
        "action_dim": dims["action_dim"],
        "state_dim": dims["state_dim"],
        "physics_dim": 0,
        "frames_format": cfg.frames_format,
        "clip_length": cfg.clip_length,
        "overlap": cfg.overlap,
        "episode_length": max(lengths),  # the longest: readers use it as an upper bound
        "episode_lengths": {e: n for info in infos for e, n in info["episode_lengths"].items()},
        "num_episodes": sum(len(info["episodes"]) for info in infos),
        "num_transitions": sum(info["frames"] for info in infos),
        "num_samples": sum(info["samples"] for info in infos),
        "num_labeled": len(order),
        "labeled_episodes": order,
        "splits": {split: [i["name"] for i in infos if i["split"] == split] for split in ("train", "heldout")},
        "shards": [{k: info[k] for k in ("name", "split", "episodes", "labeled_episodes", "samples",
                                         "frames", "bytes", "sha256")} for info in infos],
        "config": to_dict(cfg),
    }
    if returns:
        manifest["episode_return"] = {"mean": float(np.mean(returns)), "std": float(np.std(returns)),
                                      "min": float(np.min(returns)), "max": float(np.max(returns))}
    return manifest


def ingest(cfg: IngestConfig, heldout_for: str | None = None) -> dict:
    """Ingest on the current Ray cluster (starting a local one if none); returns the manifest.

    ``heldout_for`` names what will read the held-out split (``train.eval_every 100``): the ingest
    then refuses, before any work, a split that holds no episode out."""
    import ray
    from tqdm.auto import tqdm

    cfg.require_inputs()
    refs = scan(cfg)  # every cheap check, before any output is touched
    splits = assign_splits(cfg, refs)
    if heldout_for and "heldout" not in splits.values():
        raise IngestError(f"{heldout_keys(cfg)}: holds out none of the {len(refs)} episodes, but {heldout_for} "
                          "evaluates on held-out episodes; set ingest.min_heldout: 1, name them in "
                          "ingest.heldout_episodes, or set train.eval_every: 0")
    order = label_order(cfg, refs, splits)
    dims = source_dims(cfg, refs)
    plans = plan_shards(cfg, refs, splits)

    location = resolve(cfg.output)
    location.makedirs()
    dropped = _check_same_plan(location, _plan_fields(cfg, refs))
    stale = location.remove_stale_temporaries()
    labeled = frozenset(order)
    done = {i: info for i, info in finished_shards(location, plans).items()
            if _still_valid(info, plans[i], refs, labeled)}
    todo = [plan for plan in plans if plan.index not in done]

    announce_ray_start()  # after every cheap check: a bad input never waits for Ray
    workers = cfg.num_workers or max(1, len(todo))
    task = ray.remote(num_cpus=1, max_retries=cfg.max_retries)(write_shard)
    bar = tqdm(total=len(refs), unit="ep", desc=f"ingest {cfg.source}", disable=not cfg.progress)
    bar.update(sum(len(info["episodes"]) for info in done.values()))
    if stale:
        bar.write(f"removed {len(stale)} temporary file(s) left by an interrupted run")
    if dropped:
        bar.write(f"dropping {len(dropped)} episode(s) no longer in the source, named in the manifest as "
                  f"dropped_episodes: {', '.join(dropped)}")
    if done:
        bar.write(f"{len(done)} of {len(plans)} shards already written; ingesting the other {len(todo)}")
    started, frames, failures = time.perf_counter(), 0, []
    queue, running = list(todo), {}
    while queue or running:
        while queue and len(running) < workers:
            plan = queue.pop(0)
            running[task.remote(cfg, plan, [refs[i] for i in plan.episodes], labeled, dims)] = plan
        ready, _ = ray.wait(list(running), num_returns=1)
        plan = running.pop(ready[0])
        try:
            info = ray.get(ready[0])
        except ray.exceptions.RayError as err:  # bad input in the task, or a worker lost past max_retries
            cause = err.cause if isinstance(getattr(err, "cause", None), Exception) else err
            failures.append(f"{plan.name}: {cause}" if not isinstance(cause, IngestError) else str(cause))
            bar.write(f"failed: {failures[-1]}")
            continue
        done[plan.index] = info
        frames += info["frames"]
        bar.update(len(info["episodes"]))
        bar.set_postfix(frames_per_s=f"{frames / (time.perf_counter() - started):.0f}", shards=len(done))
    bar.close()
    if failures:
        raise IngestError(f"{len(failures)} of {len(plans)} shards failed, {len(done)} finished shards are kept and a "
                          f"rerun writes only the rest (fix or remove the bad file: an episode removed from the "
                          f"source is dropped, and named in the manifest); first: {failures[0]}")
    infos = [done[plan.index] for plan in plans]
    for name in location.list():  # shards of a longer plan, before an episode was dropped
        if name.startswith("shard-") and name not in {p.name for p in plans} | {p.info_name for p in plans}:
            location.fs.delete_file(location.path(name))
    manifest = build_manifest(cfg, infos, order, dims, refs)
    manifest["dropped_episodes"] = dropped
    location.write_json(MANIFEST, manifest)
    return manifest
