"""Windows cut on the training device from decoded clips, and the samplers that draw batches.

Clips arrive from Ray Data (:mod:`raylam.data.clips`) as rows of padded uint8 frames plus the
range of episode steps each clip owns. A :class:`ClipStore` keeps a set of clips as tensors on
the device; a window for (clip c, episode step t, offset k) is three gathers by index:

    obs        frames[c, max(t - S + 1 .. t, 0) - start]          frame stack ending at t
    next_obs   frames[c, max(t - S + 2 .. t + 1, 0) - start]      the stack one step later
    future_obs frames[c, max(t + k - S + 1 .. t + k, 0) - start]  the stack k steps later

with k ~ U{1..min(K, L-1-t)}, never past the episode's end, exactly as
:func:`raylam.data.windows.clip_windows` cuts them on the CPU (a test checks they are equal).

Samplers:
- :class:`EpochSampler`: the whole (cached) set, a fresh permutation of every owned transition
  per epoch -- i.i.d. batches, each transition once per epoch, as the paper's loader
  (``DataLoader(shuffle=True)``). Its position is (epoch, batch index): a restore resumes mid-epoch.
- :class:`LabeledSampler`: i.i.d. draws with replacement over the labeled transitions (the
  paper's labeled batch), forever.
- :class:`StreamingPool`: data larger than the cache. A pool of clips fed by the Ray Data stream
  (clips in a global random order, :mod:`raylam.data.clip_index`); each batch takes one not yet
  drawn transition from each of ``batch`` distinct clips of the pool (all clips, and then
  uniformly over the rest, when the pool holds fewer), and a clip whose transitions are all drawn
  makes room for the next one: a shuffle buffer over transitions whose memory is clips (one copy
  of each frame). Drawing across clips rather than uniformly over transitions is what makes a
  batch span as many episodes as the pool holds clips (a uniform draw favours the clips with the
  most transitions left, and spans fewer).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch import Tensor

from raylam.models import Batch

_SCALARS = ("episode", "start", "episode_length", "length", "owned_lo", "owned_hi", "labeled")


class ClipStore:
    """Decoded clips as device tensors: frames [N, T, H, W, C] uint8 and per-clip metadata."""

    def __init__(self, columns: dict[str, Tensor]):
        self.frames = columns["frames"]
        self.actions = columns["actions"]
        self.states = columns["states"]
        self.latents = columns.get("latents")
        self.episode = columns["episode"].long()
        self.start = columns["start"].long()
        self.episode_length = columns["episode_length"].long()
        self.owned_lo = columns["owned_lo"].long()
        self.owned_hi = columns["owned_hi"].long()
        self.labeled = columns["labeled"].bool()

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    @property
    def device(self) -> torch.device:
        return self.frames.device

    @classmethod
    def from_batches(cls, batches: Iterable[dict[str, np.ndarray]], device: torch.device | str = "cpu",
                     pin_memory: bool = False) -> ClipStore:
        """Collect clip rows (numpy batches from Ray Data) into one store, ordered by (episode, start)
        so that the same data gives the same store whatever order the decode tasks finished in."""
        parts: dict[str, list[np.ndarray]] = {}
        for batch in batches:
            if not len(batch.get("episode", ())):
                continue
            for name, column in batch.items():
                parts.setdefault(name, []).append(np.asarray(column))
        if not parts:
            raise ValueError("the clip stream holds no clips: check the split, num_labeled and the dataset's labels")
        columns = {name: np.concatenate(chunks) for name, chunks in parts.items()}
        order = np.lexsort((columns["start"], columns["episode"]))
        return cls({name: _to_device(column[order], device, pin_memory) for name, column in columns.items()})

    def transitions(self, labeled_only: bool = False) -> tuple[Tensor, Tensor]:
        """(clip index, episode step) of every owned transition, in store order."""
        counts = (self.owned_hi - self.owned_lo).clamp_min(0)
        if labeled_only:
            counts = counts * self.labeled
        clip = torch.repeat_interleave(torch.arange(len(self), device=self.device), counts)
        first = torch.cumsum(counts, 0) - counts  # position of each clip's first transition
        step = self.owned_lo[clip] + torch.arange(len(clip), device=self.device) - first[clip]
        return clip, step

    def draw_offsets(self, clip: Tensor, step: Tensor, max_offset: int, generator: torch.Generator) -> Tensor:
        """k ~ U{1..min(K, L-1-t)} per window: the future view never crosses the episode's end."""
        limit = torch.clamp(self.episode_length[clip] - 1 - step, max=max_offset)
        u = torch.rand(len(clip), generator=generator, device=generator.device).to(self.device)
        return 1 + (u * limit).long().clamp_max(limit - 1)

    def windows(self, clip: Tensor, step: Tensor, offset: Tensor, frame_stack: int) -> Batch:
        """The Batch of windows (clip, t, k), gathered on the store's device."""
        stack = torch.arange(-frame_stack + 1, 1, device=self.device)
        start = self.start[clip][:, None]
        rows = clip[:, None]

        def frames_at(t: Tensor) -> Tensor:
            return self.frames[rows, (t[:, None] + stack).clamp_min(0) - start]

        local = step - self.start[clip]
        return Batch(
            obs=frames_at(step),
            next_obs=frames_at(step + 1),
            future_obs=frames_at(step + offset),
            offset=offset,
            actions=self.actions[clip, local],
            states=self.states[clip, local],
            labeled=self.labeled[clip],
            latents=None if self.latents is None else self.latents[clip, local],
        )


def _to_device(array: np.ndarray, device, pin_memory: bool) -> Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if pin_memory and torch.cuda.is_available():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def _generator(seed: int | tuple[int, ...]) -> torch.Generator:
    """A CPU generator seeded from a tuple of ints (index draws are cheap; the gathers run on the device)."""
    entropy = np.random.SeedSequence(seed if isinstance(seed, int) else list(seed))
    return torch.Generator().manual_seed(int(entropy.generate_state(1, np.uint64)[0] >> 1))


class EpochSampler:
    """i.i.d. batches over every owned transition of a store, each once per epoch (drop_last)."""

    def __init__(self, store: ClipStore, batch_size: int, frame_stack: int, max_offset: int,
                 seed: tuple[int, ...], labeled_only: bool = False):
        self.store, self.batch_size = store, batch_size
        self.frame_stack, self.max_offset, self.seed = frame_stack, max_offset, seed
        self.clip, self.step = store.transitions(labeled_only)
        if len(self.clip) < batch_size:
            raise ValueError(f"{len(self.clip)} transitions for this worker, fewer than one batch of {batch_size}")
        self.epoch, self.position = 0, 0  # position: batches already drawn this epoch

    @property
    def batches_per_epoch(self) -> int:
        return len(self.clip) // self.batch_size

    def state(self) -> dict[str, int]:
        """Where the data order stands: checkpointed, so a restored run continues this epoch's order
        (``batches_per_epoch`` is recorded so the position can be read as a count of batches drawn)."""
        return {"epoch": self.epoch, "position": self.position, "batches_per_epoch": self.batches_per_epoch}

    def restore(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def __iter__(self) -> Iterator[Batch]:
        while True:
            generator = _generator((*self.seed, self.epoch))
            order = torch.randperm(len(self.clip), generator=generator).to(self.store.device)
            for _ in range(self.position):  # replay the draws of a restored position (offsets too)
                self.store.draw_offsets(self.clip[:self.batch_size], self.step[:self.batch_size],
                                        self.max_offset, generator)
            while self.position < self.batches_per_epoch:
                pick = order[self.position * self.batch_size:(self.position + 1) * self.batch_size]
                clip, step = self.clip[pick], self.step[pick]
                offset = self.store.draw_offsets(clip, step, self.max_offset, generator)
                self.position += 1
                yield self.store.windows(clip, step, offset, self.frame_stack)
            self.epoch, self.position = self.epoch + 1, 0


class LabeledSampler:
    """Endless i.i.d. batches (with replacement) over the labeled transitions of a store."""

    def __init__(self, store: ClipStore, batch_size: int, frame_stack: int, max_offset: int, seed: tuple[int, ...]):
        self.store, self.batch_size, self.frame_stack, self.max_offset = store, batch_size, frame_stack, max_offset
        self.clip, self.step = store.transitions(labeled_only=True)
        if not len(self.clip):
            raise ValueError("the labeled set holds no transitions: check num_labeled and the dataset's labels")
        self.generator = _generator(seed)

    def __iter__(self) -> Iterator[Batch]:
        while True:
            pick = torch.randint(len(self.clip), (self.batch_size,), generator=self.generator).to(self.store.device)
            clip, step = self.clip[pick], self.step[pick]
            offset = self.store.draw_offsets(clip, step, self.max_offset, self.generator)
            yield self.store.windows(clip, step, offset, self.frame_stack)


def fixed_windows(store: ClipStore, frame_stack: int, max_offset: int, limit: int | None, batch_size: int,
                  seed: int = 0) -> Iterator[Batch]:
    """The same windows every call (held-out evaluation): a seeded subset of ``limit`` transitions
    with seeded offsets, in batches."""
    clip, step = store.transitions()
    generator = _generator((seed,))
    if limit is not None and limit < len(clip):
        pick = torch.randperm(len(clip), generator=generator)[:limit].sort().values.to(store.device)
        clip, step = clip[pick], step[pick]
    offset = store.draw_offsets(clip, step, max_offset, generator)
    for i in range(0, len(clip), batch_size):
        yield store.windows(clip[i:i + batch_size], step[i:i + batch_size], offset[i:i + batch_size], frame_stack)


class StreamingPool:
    """A shuffle buffer over transitions whose memory is a pool of clips (see module doc).

    ``clip_batches`` yields numpy clip rows (one Ray Data pass); the pool keeps up to ``pool_clips``
    clips on ``device`` and yields batches of windows until the pass and the pool are exhausted;
    every owned transition of the pass is drawn exactly once (less the last partial batch).
    """

    def __init__(self, clip_batches: Iterable[dict[str, np.ndarray]], pool_clips: int, batch_size: int,
                 frame_stack: int, max_offset: int, seed: tuple[int, ...], device: torch.device | str = "cpu",
                 pin_memory: bool = False):
        self.source = iter(clip_batches)
        # at least a clip per batch row: with every slot holding a clip that has a transition left,
        # a batch can always be drawn (a clip's slot frees only when all its transitions are drawn)
        self.pool_clips, self.batch_size = max(pool_clips, batch_size), batch_size
        self.frame_stack, self.max_offset = frame_stack, max_offset
        self.device, self.pin_memory = torch.device(device), pin_memory
        self.rng = np.random.default_rng(list(seed))
        self.generator = _generator(seed)
        self.store: ClipStore | None = None
        self.free: list[int] = []
        self.pending: dict[int, list[int]] = {}  # slot -> its episode steps not yet drawn
        self.exhausted = False

    @property
    def num_pending(self) -> int:
        return sum(len(steps) for steps in self.pending.values())

    def _allocate(self, row: dict[str, np.ndarray]) -> None:
        columns = {name: np.zeros((self.pool_clips, *np.asarray(v).shape), np.asarray(v).dtype) for name, v in row.items()}
        self.store = ClipStore({name: _to_device(c, self.device, self.pin_memory) for name, c in columns.items()})
        self.free = list(range(self.pool_clips))

    def _put(self, row: dict[str, np.ndarray]) -> None:
        if self.store is None:
            self._allocate(row)
        lo, hi = int(row["owned_lo"]), int(row["owned_hi"])
        if hi <= lo:
            return  # owns no transition (a short episode's tail clip): nothing to draw
        slot = self.free.pop()
        store = self.store
        for name, value in row.items():
            target = getattr(store, name, None)
            if isinstance(target, Tensor):
                target[slot] = torch.as_tensor(np.asarray(value)).to(self.device)
        self.pending[slot] = list(range(lo, hi))

    def _fill(self) -> None:
        while not self.exhausted and (self.store is None or self.free):
            try:
                batch = next(self.source)
            except StopIteration:
                self.exhausted = True
                return
            for i in range(len(batch.get("episode", ()))):
                row = {name: column[i] for name, column in batch.items()}
                if self.store is not None and not self.free:
                    self._overflow.append(row)
                else:
                    self._put(row)

    def _draw(self) -> list[tuple[int, int]]:
        """One pending transition from each of ``batch_size`` distinct clips (all of them, and the
        rest uniformly over the remaining transitions, when fewer clips hold any)."""
        slots = np.array(sorted(self.pending))
        if len(slots) >= self.batch_size:
            picked = self.rng.choice(slots, self.batch_size, replace=False)
        else:  # one from every clip, the rest uniformly over what is left
            extra = np.concatenate([np.full(len(self.pending[s]) - 1, s) for s in slots])
            picked = np.concatenate([slots, self.rng.choice(extra, self.batch_size - len(slots), replace=False)])
        chosen = []
        for slot in picked.tolist():
            steps = self.pending[slot]
            i = int(self.rng.integers(len(steps)))
            steps[i], steps[-1] = steps[-1], steps[i]  # swap-remove
            chosen.append((slot, steps.pop()))
            if not steps:
                del self.pending[slot]
                self.free.append(slot)
        return chosen

    def __iter__(self) -> Iterator[Batch]:
        self._overflow: list[dict[str, np.ndarray]] = []
        while True:
            while self._overflow and self.free:
                self._put(self._overflow.pop())
            if not self._overflow:
                self._fill()
            if self.num_pending < self.batch_size:
                if self.exhausted and not self._overflow:
                    return  # the pass ends; leftover transitions (< one batch) are dropped
                if not self.free:
                    raise ValueError(f"a pool of {self.pool_clips} clips holds fewer transitions than one batch "
                                     f"({self.batch_size}): raise data.pool_clips")
                continue
            chosen = self._draw()
            clip = torch.tensor([s for s, _ in chosen], device=self.device)
            step = torch.tensor([t for _, t in chosen], device=self.device)
            offset = self.store.draw_offsets(clip, step, self.max_offset, self.generator)
            batch = self.store.windows(clip, step, offset, self.frame_stack)
            self.last_episodes = self.store.episode[clip]  # for mixing figures
            yield batch
