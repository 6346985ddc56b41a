"""Dataset access shared by every reader, and the window stream of one-pass batch inference.

``DatasetInfo`` (manifest, shard URLs, label budget) and ``WindowSpec`` serve training too; the
window stream (read_webdataset -> ``map_batches`` that decodes clips and cuts every window in CPU
tasks) feeds relabeling and the probes, which visit each transition once with a frozen model.
Training does not use it: its clips travel whole and windows are cut on the training device
(:mod:`raylam.data.clips`, :mod:`raylam.train.sampling`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from raylam.config import ConfigError
from raylam.data.manifest import MANIFEST, load_manifest
from raylam.data.shards import decode_sample
from raylam.data.storage import resolve
from raylam.data.windows import clip_windows, required_overlap

WINDOW_COLUMNS = ("obs", "next_frame", "future_obs", "offset", "actions", "states", "labeled", "episode", "step")


@dataclass(frozen=True)
class WindowSpec:
    frame_stack: int = 3
    max_offset: int = 10
    num_labeled: int | None = None  # label budget: the first n of the manifest's order; None = all
    seed: int | None = None  # fixes the future offsets k (tests); None draws fresh ones every epoch


class DatasetInfo:
    """A dataset's manifest plus the URLs of its shards; fails early on a missing or bad dataset."""

    def __init__(self, uri: str):
        self.location = resolve(uri)
        try:
            self.manifest = load_manifest(self.location)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"dataset {uri}: {err}") from None
        self.uri = uri

    def shard_urls(self, split: str = "train", labeled_only: bool = False, num_labeled: int | None = None) -> list[str]:
        if split not in self.manifest["splits"]:
            raise ConfigError(f"dataset {self.uri}: no split {split!r} (has {sorted(self.manifest['splits'])})")
        names = set(self.manifest["splits"][split])
        labeled = set(self.labeled_episodes(num_labeled))
        shards = [s for s in self.manifest["shards"] if s["name"] in names]
        if labeled_only:
            shards = [s for s in shards if labeled & set(s["episodes"])]
        if not shards:
            what = "labeled " if labeled_only else ""
            raise ValueError(f"dataset {self.uri}: the {split} split has no {what}shards")
        return [self.location.url(s["name"]) for s in shards]

    def labeled_episodes(self, num_labeled: int | None = None) -> list[str]:
        order = self.manifest["labeled_episodes"]
        if num_labeled is None:
            return list(order)
        if num_labeled > len(order):
            raise ConfigError(
                f"num_labeled: got {num_labeled}, but dataset {self.uri} was collected with "
                f"{len(order)} labeled episodes ({self.location.url(MANIFEST)})"
            )
        return list(order[:num_labeled])

    def check_model(self, model) -> None:
        """A model (``ModelConfig``) reads this dataset's frames: same size and channels, and windows
        of its frame_stack and max_offset fit the clips' overlap."""
        shape = self.manifest["frame_shape"]
        if shape[0] != model.image_size or shape[1] != model.image_size:
            raise ConfigError(f"dataset {self.uri} has {shape[0]}x{shape[1]} frames, model.image_size is "
                              f"{model.image_size}")
        if shape[2] != model.frame_channels:
            raise ConfigError(f"dataset {self.uri} has {shape[2]} channels, model.frame_channels is "
                              f"{model.frame_channels}")
        self.check_windows(WindowSpec(frame_stack=model.frame_stack, max_offset=model.max_offset))

    def check_windows(self, spec: WindowSpec) -> None:
        need = required_overlap(spec.frame_stack, spec.max_offset)
        if self.manifest["overlap"] < need and self.manifest["episode_length"] > self.manifest["clip_length"]:
            raise ConfigError(
                f"dataset {self.uri} has clips overlapping by {self.manifest['overlap']} frames; windows with "
                f"frame_stack {spec.frame_stack} and max_offset {spec.max_offset} need >= {need} "
                "(collect again with a larger collect.overlap, or lower max_offset)"
            )


class ClipsToWindows:
    """``map_batches`` callable: a batch of raw clip samples -> a batch of windows."""

    def __init__(self, spec: WindowSpec, clip_length: int, overlap: int, labeled_episodes: list[str] | None,
                 labeled_only: bool = False, labels: str | None = None):
        self.spec, self.clip_length, self.overlap = spec, clip_length, overlap
        self.labeled = None if labeled_episodes is None else frozenset(labeled_episodes)
        self.labeled_only = labeled_only
        self.labels = None if labels is None else EpisodeLabels(labels)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        parts, template = [], None
        keys, urls = batch["__key__"], batch.get("__url__")
        for i in range(len(keys)):
            sample = {name: batch[name][i] for name in batch}
            clip = decode_sample(sample, "" if urls is None else str(urls[i]))
            if self.labeled is not None:
                clip.meta["labeled"] = clip.meta["episode_id"] in self.labeled
            entropy = None if self.spec.seed is None else [self.spec.seed, zlib.crc32(clip.key.encode())]
            windows = clip_windows(clip, self.spec.frame_stack, self.spec.max_offset,
                                   np.random.default_rng(entropy), self.overlap, self.clip_length)
            if self.labels is not None:
                windows["latents"] = self.labels.lookup(int(clip.meta["episode_index"]), windows["step"])
            if self.labeled_only and not clip.meta["labeled"]:
                template = windows
                continue
            parts.append(windows)
        if not parts:  # only unlabeled clips: zero rows, but the schema (shapes, dtypes) stays
            return {name: column[:0] for name, column in template.items()}
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


class EpisodeLabels:
    """Latents written by the relabel stage, read one episode at a time (clips of an episode are
    adjacent in a shard, so one read serves all of them)."""

    def __init__(self, uri: str):
        self.location = resolve(uri)
        self.uri = uri
        self._episode, self._table = None, None
        self.dim: int | None = None

    def lookup(self, episode: int, steps: np.ndarray) -> np.ndarray:
        import pyarrow.parquet as pq

        if episode != self._episode:
            path = self.location.path(f"episode={episode}")
            try:
                table = pq.read_table(path, filesystem=self.location.fs, columns=["step", "latent"])
            except (FileNotFoundError, OSError) as err:
                raise FileNotFoundError(f"labels {self.uri}: no labels for episode {episode} ({err})") from None
            latent = table.column("latent").combine_chunks()
            self.dim = latent.type.list_size
            values = latent.values.to_numpy(zero_copy_only=False).reshape(-1, self.dim)
            order = table.column("step").to_numpy()
            dense = np.full((order.max() + 1, self.dim), np.nan, dtype=np.float32)
            dense[order] = values
            self._episode, self._table = episode, dense
        if steps.size and (steps.max() >= len(self._table) or np.isnan(self._table[steps, 0]).any()):
            raise ValueError(f"labels {self.uri}: episode {episode} lacks labels for some of steps "
                             f"{int(steps.min())}..{int(steps.max())}; relabel the dataset again")
        return self._table[steps]


def actor_pool_options(map_batches) -> dict:
    """Extra ``map_batches`` arguments of an actor pool (the labeling and probe actors): none (Ray
    Data's default, restarted forever) on a cluster, whose nodes may be lost; ``max_restarts=0`` on a
    Ray this machine runs alone (no node to lose; an actor that crashes fails the stage, and a rerun
    redoes it). Ray logs an error-level line for every actor it creates with restarts and arguments
    in the object store, as Ray Data's are (held by Ray Data for the whole run, so the restart it
    warns about would work): locally it only alarmed. Ray 2.60 takes ``max_restarts`` only among the
    ``ray_remote_args`` it deprecates (gone in 2.64 unless named there by then): then it is left out."""
    import inspect

    from raylam.console import on_local_ray

    params = inspect.signature(map_batches).parameters
    takes = "max_restarts" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return {"max_restarts": 0} if takes and on_local_ray() else {}


def map_with_actor_pool(ds, fn, **kwargs):
    """``ds.map_batches(fn, **kwargs)`` for a pool of actors, with :func:`actor_pool_options` (and
    without Ray's deprecation warning for the ``ray_remote_args`` they are passed as)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return ds.map_batches(fn, **kwargs, **actor_pool_options(ds.map_batches))


# An actor pool (labeling, probes) replaces this many actors in a row that die while starting
# before it fails the stage. Ray Data's default, 0, fails a pipeline hours in on one labeling actor
# lost as it loaded the LAM (seen here on a loaded 2-core machine); a constructor that always fails
# still fails the stage, after this many more tries.
ACTOR_INIT_DEATHS_TOLERATED = 2


def configure_data_context(progress: bool) -> None:
    """Ray Data's per-dataset progress output, on or off, for datasets built after this call, and
    its tolerance of actors that die while starting (:data:`ACTOR_INIT_DEATHS_TOLERATED`).

    A training run re-executes its datasets every epoch (and the held-out one at every
    evaluation); their progress bars and "execution finished" lines bury the training log, which
    reports its own progress. Ray Train copies the driver's DataContext to its workers.
    """
    from ray.data import DataContext

    from raylam.console import quiet_ray

    quiet_ray()  # bars off on purpose: no "Progress bars disabled" from this process (Train workers included)
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = progress
    ctx.print_on_execution_start = progress
    ctx.max_consecutive_actor_init_deaths = ACTOR_INIT_DEATHS_TOLERATED


def read_shards(info: DatasetInfo, spec: WindowSpec, split: str, labeled_only: bool, shuffle_seed: int | None,
                num_cpus: float, suffixes: list[str] | None = None):
    """The raw samples of the ``split`` shards (``suffixes``: only those members), shard order
    reshuffled every epoch unless ``shuffle_seed`` is None; fails early on windows the clips cannot hold."""
    import ray
    from ray.data import FileShuffleConfig

    info.check_windows(spec)
    urls = info.shard_urls(split, labeled_only, spec.num_labeled)
    shuffle = None if shuffle_seed is None else FileShuffleConfig(seed=shuffle_seed, reseed_after_execution=True)
    # read tasks get the same CPU share as the decode tasks (Ray Data's default is a whole CPU each,
    # which a trial sharing a small node with others may never get)
    return ray.data.read_webdataset(urls, decoder=None, shuffle=shuffle, include_paths=False, num_cpus=num_cpus,
                                    suffixes=suffixes)


def window_dataset(info: DatasetInfo, spec: WindowSpec, split: str = "train", labeled_only: bool = False,
                   clips_per_task: int = 4, shuffle_seed: int | None = 0, num_cpus: float = 1.0,
                   labels: str | None = None):
    """A streaming Ray Dataset of windows from the ``split`` shards of ``info``."""
    ds = read_shards(info, spec, split, labeled_only, shuffle_seed, num_cpus)
    make_windows = ClipsToWindows(spec, info.manifest["clip_length"], info.manifest["overlap"],
                                  info.labeled_episodes(spec.num_labeled), labeled_only, labels)
    return ds.map_batches(make_windows, batch_size=clips_per_task, batch_format="numpy", num_cpus=num_cpus)
