"""Configuration of a training stage (one Ray Train run)."""

from __future__ import annotations

from dataclasses import dataclass

from raylam.config import ConfigError, deep_merge, from_dict, spec
from raylam.models.config import LAMS, ModelConfig


@dataclass(frozen=True)
class StageKind:
    """One kind of stage: what it trains, which streams it reads, which earlier run it needs."""

    methods: tuple[str, ...]  # model methods it may train; () for relabel, which trains nothing
    labeled_only: bool  # its training stream holds only the labeled episodes (the rest have no actions)
    labeled_stream: tuple[str, ...] = ()  # methods that also read the labeled episodes as a second stream
    reads_labels: bool = False  # joins a relabel stage's latents to its windows
    trains: bool = True  # a Ray Train run (relabel: Ray Data batch inference)
    needs: tuple[str, ...] = ()  # run fields naming the upstream run it reads (one of them must be set)
    needs_what: str = ""  # what that upstream run is, for the error message


STAGE_KINDS: dict[str, StageKind] = {
    "lam": StageKind(LAMS, labeled_only=False, labeled_stream=("laom_sup",)),
    "idm": StageKind(("idm",), labeled_only=True),
    "relabel": StageKind((), labeled_only=False, trains=False, needs=("lam_run",),
                         needs_what="the run directory of a trained LAM or IDM"),
    "latent_bc": StageKind(("latent_bc",), labeled_only=False, reads_labels=True, needs=("labels",),
                           needs_what="the output directory of a relabel stage"),
    "action_decoder": StageKind(("action_decoder",), labeled_only=True, reads_labels=True,
                                needs=("policy_run", "labels"),
                                needs_what="the latent-BC run it decodes (or labels: a relabel stage, to decode "
                                           "the LAM's z instead)"),
    "bc": StageKind(("bc",), labeled_only=True),
}
STAGES = tuple(STAGE_KINDS)
TRAINED_STAGES = tuple(name for name, kind in STAGE_KINDS.items() if kind.trains)
# the run fields by which a stage names an earlier one
UPSTREAM_FIELDS = tuple(dict.fromkeys(field for kind in STAGE_KINDS.values() for field in kind.needs))


@dataclass
class DataLoaderConfig:
    """How windows stream from shards to the workers."""

    clips_per_task: int = spec(4, ge=1, help="clips decoded per Ray Data map task (and per block a worker takes)")
    read_cpus: float = spec(1.0, gt=0.0, help="CPUs per Ray Data decode task")
    max_cpus: float | None = spec(None, gt=0.0, help="CPUs this stage's Ray Data work may hold at once (Ray "
                                                     "Data's resource_limits); null: Ray Data's own share. A "
                                                     "Tune sweep sets it to its data_cpus per trial")
    prefetch_batches: int = spec(2, ge=0, help="blocks of clips prefetched per worker")
    cache_bytes: int = spec(8 << 30, ge=0, help="a worker's share of the training split whose decoded frames fit "
                                                "this budget is decoded once and kept on its device (i.i.d. "
                                                "epochs, mid-epoch resume); bigger data streams every epoch")
    share_bytes: int = spec(2 << 30, ge=0, help="cached stages: clip sets whose decoded frames fit this budget are "
                                                "decoded once per driver into the object store and shared by "
                                                "every later stage that reads them (0: decode per stage)")
    pool_clips: int = spec(512, ge=1, help="streaming: clips each worker holds to draw batches from "
                                           "(memory: pool_clips x clip_length frames; mixing grows with it; at least the "
                                           "batch per worker)")
    stream_order: str = spec("clips", choices=("clips", "shards"),
                             help="streaming: clips = every clip in a seeded global random order, fetched by "
                                  "ranged reads (a worker's pool spans many episodes); shards = shard by shard")
    shuffle_seed: int | None = spec(0, help="shard order seed (reshuffled every epoch); null: no shuffle")
    progress_bars: bool = spec(False, help="Ray Data's progress bars for the stage's datasets (relabel shows "
                                           "them regardless: it is one long pass)")


@dataclass
class WandbConfig:
    enabled: bool = spec(False, help="log to Weights & Biases from rank 0")
    project: str = spec("raylam")
    mode: str = spec("offline", choices=("online", "offline"), help="offline needs no network")
    entity: str | None = spec(None)


@dataclass
class TrainConfig:
    """One stage: which data, which model, how many workers, how long, where results go."""

    stage: str = spec("lam", choices=TRAINED_STAGES, help="what this run trains (a relabel stage has its own "
                                                          "config: RelabelConfig)")
    dataset: str = spec("data/quickstart", help="dataset directory or URI written by `raylam collect`")
    model: ModelConfig = spec(ModelConfig(), help="model; model.method selects the method")
    num_labeled: int | None = spec(None, ge=0, help="label budget (first n of the dataset's order); null: all")
    storage_path: str = spec("runs", help="where runs live: local directory or s3:// / gs:// URI")
    run_name: str | None = spec(None, help="run directory name; null: <experiment>-<stage>-<method>")
    lam_run: str | None = spec(None, help="the LAM a stage reads (set by the stage table; relabel stages: "
                                         "RelabelConfig.lam_run)")
    labels: str | None = spec(None, help="latent_bc: directory written by the relabel stage (action_decoder: "
                                         "the LAM's z as inputs instead of the policy's outputs)")
    policy_run: str | None = spec(None, help="action_decoder: the frozen latent-BC run whose outputs the decoder "
                                             "learns to decode (the released protocol)")

    seed: int = spec(0, ge=0, help="training seed: model init, future offsets k, batch sampling, augmentation")

    # scale
    num_workers: int = spec(1, ge=1, help="Ray Train workers (DDP ranks)")
    use_gpu: bool = spec(False, help="train on GPUs (gpus_per_worker each)")
    gpus_per_worker: float = spec(1.0, gt=0.0, help="GPUs per worker when use_gpu; fractions share a GPU "
                                                    "between runs (one worker per run: DDP ranks cannot share one)")
    cpus_per_worker: float = spec(1.0, gt=0.0)
    threads_per_worker: int | None = spec(None, ge=1, help="torch threads in each worker; null: Ray's default "
                                                          "(cpus_per_worker). On a CPU node with a cached dataset the "
                                                          "decode CPUs are idle after the first pass: give them to torch")
    resources_per_worker: dict[str, float] = spec({}, help="extra (custom) resources each worker needs, e.g. "
                                                          "{accelerator_type:H100: 0.001} or a node label resource")

    # optimisation
    steps: int = spec(1000, ge=1, help="optimizer steps in total")
    batch_size: int = spec(512, ge=1, help="windows per step, the whole job (each of N workers takes 1/N)")
    labeled_batch_size: int = spec(128, ge=1, help="labeled windows per step (laom_sup), the whole job")
    precision: str = spec("fp32", choices=("fp32", "bf16"), help="bf16: autocast on the device")
    compile: bool = spec(False, help="torch.compile the model")
    data: DataLoaderConfig = spec(DataLoaderConfig())

    # reporting and fault tolerance
    report_every: int = spec(50, ge=1, help="steps between ray.train.report calls")
    checkpoint_every: int = spec(500, ge=1, help="steps between checkpoints (also at the end)")
    eval_every: int = spec(0, ge=0, help="steps between held-out evaluations (probe and head MSE/R^2 on the "
                                         "dataset's heldout split, reported as heldout/...); 0: never")
    eval_windows: int | None = spec(2048, ge=1, help="held-out windows per evaluation; null: the whole split")
    keep_checkpoints: int = spec(2, ge=1, help="checkpoints kept (newest by step)")
    max_failures: int = spec(2, ge=0, help="worker failures survived by restoring the last checkpoint")
    wandb: WandbConfig = spec(WandbConfig())
    progress: bool = spec(True, help="one line per report from rank 0: step/total, loss, samples/s, ETA")
    log_level: str = spec("WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                          help="Ray Train's own console logs (INFO: a line per worker per report, worker-group "
                               "start-up); its log files keep everything")
    fail_at_step: int | None = spec(None, ge=1, help="test hook: raise once at this step (never on a resumed run), "
                                                     "once Train has registered the checkpoint before it")
    step_delay_s: float = spec(0.0, ge=0.0, help="test hook: sleep after every step (a slow GPU step on tiny data, so "
                                                 "a failure can land mid-run)")
    wait_at_step: int | None = spec(None, ge=1, help="test hook: after reporting this step (and its checkpoint), every "
                                                    "worker writes <wait_for_file>.waiting-<rank> and waits until "
                                                    "wait_for_file exists (never on a resumed run): chaos tests act "
                                                    "on an event, not on timing")
    wait_for_file: str | None = spec(None, help="test hook: the file wait_at_step waits for")

    @property
    def kind(self) -> StageKind:
        return STAGE_KINDS[self.stage]

    @property
    def reads_labeled_stream(self) -> bool:
        """Besides its training stream, the labeled episodes as a second one (LAOM+sup)."""
        return self.model.method in self.kind.labeled_stream

    def validate(self) -> None:
        allowed = STAGE_KINDS[self.stage].methods
        if allowed and self.model.method not in allowed:
            raise ConfigError(
                f"model.method: got {self.model.method!r}, stage {self.stage!r} expects one of {list(allowed)}"
            )
        if self.checkpoint_every % self.report_every:
            raise ConfigError(
                f"checkpoint_every: got {self.checkpoint_every}, expected a multiple of report_every "
                f"({self.report_every}): checkpoints are saved at report steps"
            )
        if self.eval_every % self.report_every:
            raise ConfigError(
                f"eval_every: got {self.eval_every}, expected a multiple of report_every ({self.report_every})"
            )
        if (self.wait_at_step is None) != (self.wait_for_file is None):
            raise ConfigError("wait_at_step and wait_for_file: set both or neither (a test hook)")
        if self.use_gpu and self.num_workers > 1 and self.gpus_per_worker != int(self.gpus_per_worker):
            # Ray may place two ranks on one GPU, and NCCL cannot run a group whose ranks share a device
            raise ConfigError(f"gpus_per_worker: got {self.gpus_per_worker} with num_workers={self.num_workers}, "
                              "expected a whole number of GPUs: DDP ranks cannot share a GPU (NCCL); use "
                              "gpus_per_worker=1, or num_workers=1 to share a GPU between runs")
        kind = STAGE_KINDS[self.stage]
        if kind.needs and not any(getattr(self, field) for field in kind.needs):
            raise ConfigError(f"{kind.needs[0]}: stage {self.stage} needs {kind.needs_what}")
        for name in ("batch_size", "labeled_batch_size"):
            if getattr(self, name) % self.num_workers:
                raise ConfigError(f"{name}: got {getattr(self, name)}, expected a multiple of num_workers "
                                  f"({self.num_workers}): each worker takes an equal share of the job's batch")


@dataclass
class RelabelDataConfig:
    clips_per_task: int = spec(4, ge=1, help="clips decoded per Ray Data map task")
    read_cpus: float = spec(1.0, gt=0.0, help="CPUs per Ray Data decode task")


@dataclass
class RelabelConfig:
    """A relabel stage: a trained LAM (or IDM) labels every transition by Ray Data batch inference.
    It trains nothing, so it has its own fields: a training batch size or a DDP worker count never
    reaches it with another meaning. From the experiment's shared ``train`` section it takes only
    what means the same here (:data:`RELABEL_INHERITS`)."""

    stage: str = spec("relabel", choices=("relabel",))
    dataset: str = spec("data/quickstart", help="dataset directory or URI")
    lam_run: str | None = spec(None, help="run directory of the LAM (or IDM) that labels")
    storage_path: str = spec("runs", help="where runs live: local directory or s3:// / gs:// URI")
    run_name: str | None = spec(None, help="output directory name; null: <experiment>-relabel")
    batch_size: int = spec(256, ge=1, help="windows per inference call")
    max_actors: int = spec(1, ge=1, help="labeling actors at most (Ray Data's autoscaling actor pool, 1..max_actors); "
                                         "each holds the model once")
    use_gpu: bool = spec(False, help="each actor on one GPU")
    cpus_per_actor: float = spec(1.0, gt=0.0, help="CPUs per actor without a GPU")
    data: RelabelDataConfig = spec(RelabelDataConfig())

    @property
    def kind(self) -> StageKind:
        return STAGE_KINDS[self.stage]

    def validate(self) -> None:
        if not self.lam_run:
            raise ConfigError(f"lam_run: stage relabel needs {STAGE_KINDS['relabel'].needs_what}")


# the shared ``train`` settings a relabel stage takes (same meaning in both)
RELABEL_INHERITS = ("dataset", "storage_path", "use_gpu", "data.clips_per_task", "data.read_cpus")
StageConfig = TrainConfig | RelabelConfig


def is_relabel(entry: dict, shared: dict | None = None) -> bool:
    return entry.get("stage", (shared or {}).get("stage")) == "relabel"


def inherited(shared: dict, entry: dict) -> dict:
    """What a stage takes from the shared ``train`` settings: all of them, or for a relabel stage
    only :data:`RELABEL_INHERITS`."""
    if not is_relabel(entry, shared):
        return shared
    out: dict = {}
    for dotted in RELABEL_INHERITS:
        *parents, last = dotted.split(".")
        source, target = shared, out
        for part in parents:
            source = source.get(part) if isinstance(source, dict) else None
            target = target.setdefault(part, {})
        if isinstance(source, dict) and last in source:
            target[last] = source[last]
    return out


def stage_config(shared: dict, entry: dict) -> StageConfig:
    """One stage's config: the shared ``train`` settings (a mapping) with the stage's ``entry`` on
    top; a :class:`RelabelConfig` for a relabel stage, else a :class:`TrainConfig`."""
    merged = deep_merge(inherited(shared, entry), entry)
    if is_relabel(entry, shared):
        merged.pop("seed", None)  # labels do not depend on a training seed (the LAM's identity does)
        merged["stage"] = "relabel"
        return from_dict(RelabelConfig, merged)
    return from_dict(TrainConfig, merged)
