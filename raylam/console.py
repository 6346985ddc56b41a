"""What the command line prints around Ray: a "starting Ray…" line, and Ray's known noise kept out.

A first ``raylam`` command spends 15-45 s starting a local Ray in silence, then Ray prints lines that
look like trouble and are not: a token-authentication notice on every start, "Progress bars
disabled" (raylam turns them off on purpose: training reports its own progress), "The Dataset
job will hang" while Train workers hold the CPUs (it does not hang), deprecation warnings from
Ray's own internals and a C++ error-level line about the PreemptionWatcher actor of every Train
run. :func:`quiet_ray` drops exactly those lines (each by its logger and its words, so anything
new still shows); ``raylam --verbose`` (``RAYLAM_VERBOSE=1``) keeps everything. Two more are fixed
where they start, in the Ray the command line starts (:func:`local_runtime_env`): a C++
error-level line for each relabeling actor ("constructor arguments in the object store and
max_restarts > 0", see :func:`raylam.data.pipeline.actor_pool_options`), and a 30-line traceback of
Ray Train's PlacementGroupCleaner when another Ray runs on the machine.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from raylam.cluster import starts_local_ray

VERBOSE_ENV = "RAYLAM_VERBOSE"

# (logger name, words of the message): Ray's records that say nothing a raylam user can act on.
KNOWN_NOISE = (
    ("ray._private.authentication.authentication_token_setup", "Token authentication is"),
    ("ray.data._internal.progress", "Progress bars disabled"),
    ("ray.data._internal.progress", "Progress bars for operators disabled"),
    ("ray.data.dataset", "The Dataset job will hang"),
)


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


class _DropMessage(logging.Filter):
    def __init__(self, words: str):
        super().__init__()
        self.words = words

    def filter(self, record: logging.LogRecord) -> bool:
        return self.words not in record.getMessage()


def quiet_ray() -> None:
    """Drop Ray's known-noise log records in this process (a no-op with ``RAYLAM_VERBOSE=1``).

    Filters sit on the loggers that emit the records, so they hold whenever Ray configures its
    handlers; calling this twice adds nothing."""
    if verbose():
        return
    for name, words in KNOWN_NOISE:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessage) and f.words == words for f in logger.filters):
            logger.addFilter(_DropMessage(words))


def quiet_ray_environment() -> None:
    """Settings, inherited by the Ray processes this process starts, that keep noise from being made.

    A local Ray is one machine that nobody preempts: Ray Train's PreemptionWatcher actor (whose
    creation logs an error-level line per run) has nothing to watch there. Ray's own internals
    call APIs Ray has deprecated; their warnings are Ray's to fix. A cluster (``RAY_ADDRESS``) is
    left as its operator configured it."""
    if verbose():
        os.environ.setdefault("RAY_DATA_LOG_LEVEL", "INFO")
        return
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
    if starts_local_ray():
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")


LOCAL_RAY_ENV = "RAYLAM_LOCAL_RAY"  # "1" in the workers of a Ray that the command line started


def local_runtime_env() -> dict:
    """The job settings of a Ray the command line starts on this machine.

    Its workers are told they run on a local Ray (:data:`LOCAL_RAY_ENV`), and each learns its
    cluster's address (:func:`export_cluster_address`): a Ray worker that asks the State API
    without one looks for Ray on the machine, and finds several when another Ray runs beside it.
    Ray Train's PlacementGroupCleaner does so every few seconds; its thread then dies with a
    30-line traceback and nobody frees the placement group of a controller that dies."""
    return {"env_vars": {LOCAL_RAY_ENV: "1"}, "worker_process_setup_hook": f"{__name__}.export_cluster_address"}


def export_cluster_address() -> None:
    """Ray worker setup hook: ``RAY_ADDRESS`` = the address of the Ray this worker belongs to (unless
    it names one already; ``local`` and ``auto`` do not), so that Ray's own address lookups (the
    State API's) find this cluster and no other. Never raises: a failing hook would stop the worker."""
    try:
        import ray

        if os.environ.get("RAY_ADDRESS", "") in ("", "local", "auto"):
            os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    except Exception:  # without the address, the lookup is Ray's own, as before
        pass


def on_local_ray() -> bool:
    """This process runs on a Ray nobody preempts: one it started itself, or a worker of a Ray the
    command line started on this machine."""
    from raylam.cluster import started_here

    return started_here() or os.environ.get(LOCAL_RAY_ENV) == "1"


def announce_ray_start() -> bool:
    """Say "starting Ray…" when the next Ray call will connect or start one (Ray's connect-on-first-use);
    returns whether it did."""
    import ray

    if ray.is_initialized():
        return False
    where = os.environ.get("RAY_ADDRESS")
    print("starting Ray… (a local start takes 15-45 s)" if starts_local_ray() else f"connecting to Ray at {where}…",
          file=sys.stderr, flush=True)
    return True


def start_ray() -> None:
    """The CLI's connection to Ray (:func:`raylam.cluster.connect`), announced first and timed: a
    local start takes tens of seconds, which should not look like a hang."""
    import ray

    from raylam.cluster import connect

    quiet_ray()
    started = time.perf_counter()
    if not announce_ray_start():
        return
    connect(runtime_env=local_runtime_env() if starts_local_ray() else None)
    cpus = ray.cluster_resources().get("CPU", 0)
    print(f"Ray ready in {time.perf_counter() - started:.0f} s ({cpus:g} CPUs)", file=sys.stderr, flush=True)
