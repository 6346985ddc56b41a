"""Configuration of an evaluation: which runs, which probes, which rollouts, where the report goes."""

from __future__ import annotations

from dataclasses import dataclass

from raylam.config import ConfigError, spec
from raylam.envs.config import PRESETS


@dataclass
class ProbeConfig:
    """Linear probes fitted on frozen LAM outputs, streamed from shards (never loaded whole)."""

    enabled: bool = spec(True, help="fit and report probes for every method that has a LAM")
    fit_split: str = spec("train", help="dataset split the probe is fitted on")
    test_split: str = spec("heldout", help="dataset split the probe is scored on (never seen by the LAM)")
    max_fit_windows: int | None = spec(20000, ge=1, help="windows of fit_split used for the fit; null: all")
    ridge: float = spec(1e-3, ge=0.0, help="ridge penalty, relative to the number of fit windows")
    batch_size: int = spec(256, ge=1, help="windows per inference batch")
    state_features: str = spec("pooled", choices=("pooled", "flat"),
                               help="encoder features for the state probe: spatial mean (pooled) or all (flat)")


@dataclass
class RolloutConfig:
    """Online evaluation: policies act in the distracting environment on Ray actors."""

    episodes: int = spec(5, ge=0, help="episodes per method and setting (0: no rollouts)")
    settings: list[str] = spec(["vanilla", "scale_easy_video_hard"], choices=PRESETS,
                               help="distractor presets to act in (vanilla = control condition)")
    background_split: str = spec("eval", choices=("train", "eval"),
                                 help="background videos: eval = held out from the training data")
    episode_length: int | None = spec(None, ge=2, help="steps per episode; null: the dataset's episode length")
    seed: int = spec(1000, ge=0, help="episode i uses seed (seed, i), the same for every method")
    num_actors: int | None = spec(None, ge=1, help="environment actors; null: one per CPU (at most episodes)")
    cpus_per_actor: float = spec(1.0, gt=0.0)
    placement: str = spec("actor", choices=("actor", "batched"),
                          help="actor: every actor holds the policy and runs whole episodes; batched: "
                               "actors hold envs only, one policy acts on all of them per step")
    use_gpu: bool = spec(False, help="batched placement: run the policy on a GPU")
    render_backend: str = spec("auto", choices=("auto", "osmesa", "egl", "glfw"))
    strip_frames: int = spec(8, ge=0, help="frames of the first episode kept for the report's strip")
    references: bool = spec(True, help="also roll out the expert and a uniform random policy: the 1 and the 0 "
                                       "of the normalized-return scale, measured on the same episodes")


@dataclass
class MethodRuns:
    """One method's runs, by run name of the experiment (or a path)."""

    name: str = spec(help="the method's label in tables and plots (e.g. laom_sup)")
    lam: str | None = spec(None, help="LAM or IDM run: probes")
    policy: str | None = spec(None, help="policy run (bc, or latent_bc on relabeled data): rollouts")
    decoder: str | None = spec(None, help="action decoder run mapping the policy's latent to actions")


@dataclass
class EvalConfig:
    output: str | None = spec(None, help="report directory; null: <storage_path>/<experiment>/eval")
    methods: list[MethodRuns] = spec([], help="what to evaluate")
    probe: ProbeConfig = spec(ProbeConfig())
    rollout: RolloutConfig = spec(RolloutConfig())
    seed: int = spec(0, ge=0, help="recorded in results.json (the training seed of these runs)")

    def validate(self) -> None:
        names = [m.name for m in self.methods]
        if len(set(names)) != len(names):
            raise ConfigError(f"evaluate.methods: names must be unique, got {names}")
        for i, m in enumerate(self.methods):
            if m.decoder and not m.policy:
                raise ConfigError(f"evaluate.methods[{i}] ({m.name}): a decoder needs a policy")
