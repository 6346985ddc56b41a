"""Validate a collected dataset and show what is in it.

``inspect_dataset`` re-reads every shard: it checks the manifest against the files (presence,
size, sha256), every sample against the manifest (members, shapes, dtypes, labeled flags) and
the whole against itself (sample and episode counts, no duplicate clip). Every problem names the
shard (and the sample) it was found in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from raylam.data.manifest import load_manifest
from raylam.data.shards import Clip, HashingStream, ShardError, decode_sample, iter_tar_samples
from raylam.data.storage import Location, resolve


@dataclass
class InspectReport:
    uri: str
    manifest: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    checked_shards: int = 0
    checked_samples: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        m = self.manifest
        lines = [f"dataset {self.uri}"]
        if m:
            ret = m.get("episode_return", {})
            lines += [f"  imported from {m['source']}; available: "
                      + ", ".join(f"{k} {v}" for k, v in m.get("available", {}).items())] if m.get("imported") else []
            lines += [
                f"  task {m.get('task')}  frames {m.get('frame_shape')} ({m.get('frames_format')})"
                f"  action_dim {m.get('action_dim')}  state_dim {m.get('state_dim')}",
                f"  episodes {m.get('num_episodes')}  transitions {m.get('num_transitions')}"
                f"  clips {m.get('num_samples')} (length {m.get('clip_length')}, overlap {m.get('overlap')})",
                f"  shards {len(m.get('shards', []))}: "
                + ", ".join(f"{k} {len(v)}" for k, v in m.get("splits", {}).items())
                + f"  size {sum(s.get('bytes', 0) for s in m.get('shards', [])) / 2**20:.1f} MiB",
                f"  labeled episodes {m.get('num_labeled')}: {', '.join(m.get('labeled_episodes', [])[:8])}"
                + (" ..." if m.get("num_labeled", 0) > 8 else ""),
            ]
            if ret:  # imported data without returns has none
                lines.append(f"  episode return {ret['mean']:.1f} ± {ret['std']:.1f}"
                             f" (min {ret['min']:.1f}, max {ret['max']:.1f})")
        lines.append(f"  checked {self.checked_shards} shards, {self.checked_samples} clips")
        if self.ok:
            lines.append("  OK")
        else:
            lines.append(f"  {len(self.problems)} problem(s):")
            lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


def check_clip(clip: Clip, manifest: dict, labeled: set[str], where: str) -> list[str]:
    """Shape/dtype/flag problems of one decoded clip against the manifest."""
    problems = []
    n = len(clip)
    expected = {
        "frames": (n, *manifest["frame_shape"]),
        "actions": (n, manifest["action_dim"]),
        "states": (n, manifest["state_dim"]),
        "rewards": (n,),
        "physics": (n, manifest["physics_dim"]),
    }
    for name, shape in expected.items():
        actual = getattr(clip, name).shape
        if tuple(actual) != tuple(shape):
            problems.append(f"{where}: {name} has shape {list(actual)}, expected {list(shape)}")
    if n > manifest["clip_length"]:
        problems.append(f"{where}: clip has {n} frames, more than clip_length {manifest['clip_length']}")
    episode = clip.meta.get("episode_id")
    if bool(clip.meta.get("labeled")) != (episode in labeled):
        problems.append(
            f"{where}: meta.labeled is {clip.meta.get('labeled')} but episode {episode} is "
            f"{'' if episode in labeled else 'not '}in the manifest's labeled set"
        )
    if clip.meta.get("has_actions", True):
        if not np.isfinite(clip.actions).all() or not np.isfinite(clip.states).all():
            problems.append(f"{where}: actions or states hold NaN/inf")
    elif not np.isnan(clip.actions).all():  # imported episode without actions: absent, never made up
        problems.append(f"{where}: meta.has_actions is false but actions.npy holds values (expected NaN)")
    elif episode in labeled:
        problems.append(f"{where}: episode {episode} is labeled but has no actions")
    return problems


def inspect_shard(location: Location, entry: dict, manifest: dict, labeled: set[str]) -> tuple[list[str], list[str]]:
    """Check one shard; returns (problems, clip keys)."""
    name = entry["name"]
    url = location.url(name)
    if not location.exists(name):
        return [f"{url}: shard listed in the manifest is missing"], []
    problems, keys, episodes = [], [], set()
    with location.open_read(name) as raw:
        stream = HashingStream(raw)
        try:
            for sample in iter_tar_samples(stream, url):
                key = sample["__key__"]
                try:
                    clip = decode_sample(sample, url)
                except ShardError as err:
                    problems.append(str(err))
                    continue
                keys.append(key)
                episodes.add(clip.meta.get("episode_id"))
                problems += check_clip(clip, manifest, labeled, f"{url}:{key}")
        except ShardError as err:
            problems.append(f"{err} (corrupt or truncated shard)")
        stream.read()  # hash any trailing bytes (tar padding) too
    if stream.size != entry["bytes"]:
        problems.append(f"{url}: size {stream.size} bytes, manifest says {entry['bytes']} (truncated or replaced)")
    elif stream.sha256.hexdigest() != entry["sha256"]:
        problems.append(f"{url}: sha256 does not match the manifest (corrupt shard)")
    if len(keys) != entry["samples"]:
        problems.append(f"{url}: {len(keys)} readable clips, manifest says {entry['samples']}")
    if episodes != set(entry["episodes"]) and not problems:
        problems.append(f"{url}: episodes {sorted(episodes)} differ from the manifest's {entry['episodes']}")
    return problems, keys


def inspect_dataset(uri: str) -> InspectReport:
    """Validate the dataset at ``uri`` (local path or URI); never raises for a bad shard, reports it."""
    location = resolve(uri)
    report = InspectReport(uri=uri)
    report.manifest = manifest = load_manifest(location)
    labeled = set(manifest["labeled_episodes"])
    seen_keys: dict[str, str] = {}
    for entry in manifest["shards"]:
        problems, keys = inspect_shard(location, entry, manifest, labeled)
        report.problems += problems
        report.checked_shards += 1
        report.checked_samples += len(keys)
        for key in keys:
            if key in seen_keys:
                report.problems.append(f"clip {key} appears in {seen_keys[key]} and {entry['name']}")
            seen_keys[key] = entry["name"]
    listed = {entry["name"] for entry in manifest["shards"]}
    extra = [n for n in location.list() if n.endswith(".tar") and n not in listed]
    report.problems += [f"{location.url(n)}: shard file not listed in the manifest" for n in extra]
    episodes = {s["name"]: len(s["episodes"]) for s in manifest["shards"]}
    if sum(episodes.values()) != manifest["num_episodes"]:
        report.problems.append(
            f"manifest: num_episodes {manifest['num_episodes']} but its shards list {sum(episodes.values())}"
        )
    return report


# ---------------------------------------------------------------- pictures


def render_clean(task: str, physics: np.ndarray, image_size: int, camera_id: int = 0) -> np.ndarray:
    """Re-render stored physics states without any distractor (plain dm-control)."""
    from dm_control import suite

    domain, name = task.split("-", 1)
    env = suite.load(domain, name)
    try:
        frames = []
        for state in physics:
            with env.physics.reset_context():
                env.physics.set_state(state)
            frames.append(env.physics.render(image_size, image_size, camera_id=camera_id))
        return np.stack(frames)
    finally:
        env.close()
        env.physics.free()


def sample_clips(uri: str, count: int, seed: int = 0) -> list[Clip]:
    """Up to ``count`` distinct clips chosen by seed, spread over as many shards as there are: one
    per shard in a seeded shard order, then a second from each, and so on (never the same clip twice;
    fewer when the dataset holds fewer)."""
    location = resolve(uri)
    manifest = load_manifest(location)
    rng = np.random.default_rng(seed)
    entries = [manifest["shards"][i] for i in rng.permutation(len(manifest["shards"]))]
    picks: dict[str, list[int]] = {}  # shard -> sample indices, in the order they are taken
    orders = {e["name"]: list(rng.permutation(e["samples"])) for e in entries}
    while sum(map(len, picks.values())) < count and any(orders.values()):
        for entry in entries:
            if orders[entry["name"]] and sum(map(len, picks.values())) < count:
                picks.setdefault(entry["name"], []).append(int(orders[entry["name"]].pop(0)))
    clips: list[Clip] = []
    for name, indices in picks.items():
        with location.open_read(name) as stream:
            samples = list(iter_tar_samples(stream, location.url(name)))
        clips += [decode_sample(samples[i], location.url(name)) for i in indices if i < len(samples)]
    return clips


def frame_grid(uri: str, png_path: str, clips: int = 3, frames_per_clip: int = 6, seed: int = 0) -> str:
    """Write a PNG: for each sampled clip, a row of recorded (distracted) frames above the same
    instants re-rendered clean from the stored physics state."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    manifest = load_manifest(resolve(uri))
    physics = manifest.get("physics_dim", 0) > 0  # imported data has no physics state to re-render
    camera = manifest["config"]["env"].get("camera_id", 0) if physics else 0
    rows = []
    for clip in sample_clips(uri, clips, seed):
        steps = np.linspace(0, len(clip) - 1, frames_per_clip).round().astype(int)
        rows.append(clip.frames[steps])
        if physics:
            rows.append(render_clean(manifest["task"], clip.physics[steps], clip.frames.shape[1], camera))
    size = rows[0].shape[1]
    pad = 2
    grid = np.full(
        (len(rows) * (size + pad), frames_per_clip * (size + pad), 3), 255, dtype=np.uint8
    )
    for r, row in enumerate(rows):
        for c, frame in enumerate(row):
            grid[r * (size + pad): r * (size + pad) + size, c * (size + pad): c * (size + pad) + size] = frame
    scale = max(1, 256 // size)
    fig, ax = plt.subplots(figsize=(grid.shape[1] * scale / 100, grid.shape[0] * scale / 100 + 0.4), dpi=100)
    ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    title = "recorded (odd rows) vs clean re-render (even rows)" if physics else f"recorded frames ({manifest.get('source')})"
    ax.set_title(f"{manifest['task']}: {title}", fontsize=8)
    fig.savefig(png_path, bbox_inches="tight")
    plt.close(fig)
    return png_path
