"""Configuration of the collection job."""

from __future__ import annotations

from dataclasses import dataclass

from raylam.config import ConfigError, spec
from raylam.envs.config import EnvConfig


@dataclass
class CollectConfig:
    """Roll out expert episodes in the distracting environment and write WebDataset shards."""

    output: str = spec("data/quickstart", help="local directory or URI (s3://bucket/path, gs://...)")
    env: EnvConfig = spec(EnvConfig(), help="task, distractor preset, image size")
    episodes: int = spec(10, ge=1, help="episodes in the training split")
    heldout_episodes: int = spec(0, ge=0, help="extra episodes written to separate held-out shards")
    episodes_per_shard: int = spec(1, ge=1, help="episodes per tar shard (one shard = one Ray task)")
    clip_length: int = spec(64, ge=2, help="frames per WebDataset sample")
    overlap: int = spec(12, ge=0, help="frames shared by consecutive clips (>= frame_stack-1 + max offset)")
    frames_format: str = spec("mp4", choices=("mp4", "npy"), help="mp4: H.264 RGB; npy: raw uint8")
    crf: int = spec(0, ge=0, le=51, help="H.264 quality; 0 is lossless")
    num_labeled: int = spec(2, ge=0, help="episodes that keep their action labels (chosen by seed)")
    clip_actions: bool = spec(False, help="store actions clipped to [-1, 1]; false (as LAOM's released data): "
                                          "store the action the expert produced, which the env clips when "
                                          "stepping (the PPO experts' raw actions mostly lie outside [-1, 1])")
    action_noise: float = spec(0.0, ge=0.0, le=2.0,
                               help="std of Gaussian noise added to expert actions: to the raw action when "
                                    "clip_actions is false (sampling the PPO expert's Gaussian; a small std "
                                    "seldom changes the executed, clipped action), else to the clipped one")
    seed: int = spec(0, ge=0, help="root seed: episodes, distractors, noise and labeled set derive from it")
    num_workers: int | None = spec(None, ge=1, help="concurrent rollout tasks; null = all shards submitted, Ray runs one per free CPU "
                                                        "(and an autoscaler adds nodes for the rest)")
    max_retries: int = spec(3, ge=0, help="Ray task retries when a worker or node dies")
    render_backend: str = spec("auto", choices=("auto", "osmesa", "egl", "glfw"),
                               help="MuJoCo OpenGL backend; auto: egl with a GPU, else osmesa")
    progress: bool = spec(True, help="show a progress bar")

    def validate(self) -> None:
        if self.overlap >= self.clip_length:
            raise ConfigError(
                f"overlap: got {self.overlap}, expected a value < clip_length ({self.clip_length})"
            )
        if self.num_labeled > self.episodes:
            raise ConfigError(
                f"num_labeled: got {self.num_labeled}, expected a value <= episodes ({self.episodes})"
            )
