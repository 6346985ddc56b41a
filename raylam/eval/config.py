"""Configuration of an evaluation: which runs, which probes, which rollouts, where the report goes."""

from __future__ import annotations

from dataclasses import dataclass

from raylam.config import ConfigError, spec
from raylam.envs.config import PRESET_SETTINGS, PRESETS, SPLITS

# How a rollout's background split is labeled in results and reports.
SPLIT_LABELS = {"train": "paper protocol: train backgrounds", "eval": "held-out backgrounds"}


def uses_backgrounds(setting: str) -> bool:
    """Whether the preset ``setting`` shows background videos (then the split matters)."""
    return PRESET_SETTINGS[setting][2] != 0


def rollout_key(setting: str, split: str | None) -> str:
    """The key of one rollout condition in results.json: ``vanilla``, ``scale_easy_video_hard/train`` ..."""
    return setting if split is None else f"{setting}/{split}"


@dataclass
class ProbeConfig:
    """Linear probes fitted on frozen LAM outputs, streamed from shards (never loaded whole)."""

    enabled: bool = spec(True, help="fit and report probes for every method that has a LAM")
    fit_split: str = spec("train", help="dataset split the probe is fitted on")
    test_split: str = spec("heldout", help="dataset split the probe is scored on (never seen by the LAM)")
    max_fit_windows: int | None = spec(20000, ge=1, help="windows of fit_split used for the fit; null: all")
    ridge: float = spec(1e-3, ge=0.0, help="ridge penalty, relative to the number of fit windows")
    batch_size: int = spec(256, ge=1, help="windows per inference batch")
    stats_windows: int = spec(4096, ge=1, help="windows a probe actor summarises into one x'x, x'y record "
                                               "(bigger: fewer records for the driver to sum)")
    num_actors: int = spec(1, ge=1, help="probe actors at most (each loads the LAM once and computes features; "
                                         "the pool grows to this as resources allow)")
    use_gpu: bool | None = spec(None, help="probe actors take a GPU each; null: when the cluster has GPUs now "
                                           "(set true on a cluster that scales GPU nodes up from zero)")
    state_features: str = spec("pooled", choices=("pooled", "flat"),
                               help="encoder features for the state probe: spatial mean (pooled) or all (flat)")


@dataclass
class RolloutConfig:
    """Online evaluation: policies act in the distracting environment on Ray actors."""

    episodes: int = spec(5, ge=0, help="episodes per method, setting and background split (0: no rollouts); "
                                       "the paper's configs use 25, as LAOM's released configs")
    settings: list[str] = spec(["vanilla", "scale_easy_video_hard"], choices=PRESETS,
                               help="distractor presets to act in (vanilla = control condition)")
    background_splits: list[str] = spec(
        ["train", "eval"], choices=SPLITS,
        help="background videos each setting with backgrounds is rolled out with: train = the paper's protocol "
             "(LAOM's released configs evaluate with dcs_backgrounds_split: train, the videos of the training "
             "data), eval = held-out videos the training data never showed; settings without backgrounds "
             "(vanilla) run once")
    background_split: str | None = spec(None, choices=SPLITS,
                                        help="deprecated: one split; the same as background_splits: [<split>]")
    background_dir: str | None = spec(None, help="background videos folder for the rollouts (e.g. DAVIS "
                                                 "JPEGImages/480p where the rollout actors run, docs/DAVIS.md); "
                                                 "null: the dataset's own, as its manifest records it")
    episode_length: int | None = spec(None, ge=2, help="steps per episode; null: the dataset's episode length")
    task: str | None = spec(None, help="imported data (raylam ingest) records no environment: the dm-control task "
                                       "to roll policies out in (e.g. cheetah-run); null: no rollouts for such data")
    seed: int = spec(1000, ge=0, help="episode i uses seed (seed, i), the same for every method")
    num_actors: int | None = spec(None, ge=1, help="episodes acting at once (Ray tasks for placement actor, "
                                                   "environment actors for batched); null: every episode of a "
                                                   "condition at once, and an autoscaling cluster grows to them. "
                                                   "Never sized from the CPUs present now")
    cpus_per_actor: float = spec(1.0, gt=0.0, help="CPUs of each episode task / environment actor")
    max_retries: int = spec(3, ge=0, help="times an episode is retried after its worker process or node dies; "
                                          "seeds are deterministic, so a retried episode is the same episode")
    placement: str = spec("actor", choices=("actor", "batched"),
                          help="actor: every episode is a Ray task that loads the policy and runs it whole; "
                               "batched: actors hold envs only, one policy actor acts on all of them per step")
    use_gpu: bool = spec(False, help="batched placement: the policy actor takes a GPU")
    render_backend: str = spec("auto", choices=("auto", "osmesa", "egl", "glfw"))
    strip_frames: int = spec(8, ge=0, help="frames of the first episode kept for the report's strip")
    references: bool = spec(True, help="also roll out the expert and a uniform random policy: the 1 and the 0 "
                                       "of the normalized-return scale, measured on the same episodes")

    def validate(self) -> None:
        if self.background_split is not None:  # the old single-split key
            self.background_splits = [self.background_split]
            self.background_split = None
        if not self.background_splits:
            raise ConfigError("background_splits: got [], expected at least one of ['train', 'eval']")
        if len(set(self.background_splits)) != len(self.background_splits):
            raise ConfigError(f"background_splits: got {self.background_splits}, expected each split once")

    def runs(self) -> list[tuple[str, str | None]]:
        """The (setting, background split) pairs rolled out, in order; the split is None for a
        setting without background videos (it would not change a frame)."""
        out: list[tuple[str, str | None]] = []
        for setting in self.settings:
            if uses_backgrounds(setting):
                out += [(setting, split) for split in self.background_splits]
            else:
                out.append((setting, None))
        return out


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
    seed: int = spec(0, ge=0, help="training seed recorded for runs whose artifact does not record one (runs "
                                   "trained before TrainConfig.seed existed); otherwise the artifact's seed is used")

    def validate(self) -> None:
        names = [m.name for m in self.methods]
        if len(set(names)) != len(names):
            raise ConfigError(f"evaluate.methods: names must be unique, got {names}")
        for i, m in enumerate(self.methods):
            if m.decoder and not m.policy:
                raise ConfigError(f"evaluate.methods[{i}] ({m.name}): a decoder needs a policy")
