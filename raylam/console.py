"""What the command line prints around Ray: a "starting Ray…" line, and Ray's known noise kept out.

A first ``raylam`` command spends 15-45 s starting a local Ray in silence, then Ray prints lines that
look like trouble and are not: a token-authentication notice on every start, "Progress bars
disabled" (raylam turns them off on purpose: training reports its own progress), "The Dataset
job will hang" while Train workers hold the CPUs (it does not hang), deprecation warnings from
Ray's own internals and a C++ error-level line about the PreemptionWatcher actor of every Train
run. :func:`quiet_ray` drops exactly those lines (each by its logger and its words, so anything
new still shows); ``raylam --verbose`` (``RAYLAM_VERBOSE=1``) keeps everything.
"""

from __future__ import annotations

import logging
import os
import sys
import time

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
    if _starts_local_ray():
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")


def _starts_local_ray() -> bool:
    return os.environ.get("RAY_ADDRESS", "local") in ("", "local")


def announce_ray_start() -> bool:
    """Say "starting Ray…" when the next Ray call will connect or start one (Ray's connect-on-first-use);
    returns whether it did."""
    import ray

    if ray.is_initialized():
        return False
    where = os.environ.get("RAY_ADDRESS")
    print("starting Ray… (a local start takes 15-45 s)" if _starts_local_ray() else f"connecting to Ray at {where}…",
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
    connect()
    cpus = ray.cluster_resources().get("CPU", 0)
    print(f"Ray ready in {time.perf_counter() - started:.0f} s ({cpus:g} CPUs)", file=sys.stderr, flush=True)
