"""Connecting to Ray, and refusing what cannot work on the cluster found there.

On a cluster of several nodes (or one whose autoscaler may add nodes) a local path names a
different directory on every node: shards written by collection tasks, checkpoints written by
Train workers and reports would be scattered over disks that vanish with their nodes. Such paths
are refused before any work, unless the user declares them shared (an NFS/EFS mount at the same
place on every node). Any cluster raylam joins rather than starts counts as such: an autoscaled
one starts with its head alone.
"""

from __future__ import annotations

import os
import sys

from raylam.config import ConfigError


def connect(runtime_env: dict | None = None) -> None:
    """Join the cluster this process belongs to (``RAY_ADDRESS``, a submitted job's) or start a
    local one (with ``runtime_env``, :func:`raylam.console.local_runtime_env`): the CLI's single
    ``ray.init``.

    A local start is tried up to three times: Ray 2.60 gives a new raylet a fixed 30 s to register
    (``node.py``), which a busy laptop or CI machine can miss (twice in a row seen here, with a
    training job beside the test suite); the half-started processes of a failed try are killed
    before the next. Three misses are a :class:`MachineError`, said in one line."""
    import ray

    if ray.is_initialized():
        return
    started = _child_pids()
    for attempt in range(1, LOCAL_START_TRIES + 1):
        try:
            ray.init(runtime_env=runtime_env)
            return
        except Exception as exc:  # Ray raises a bare Exception here
            if not starts_local_ray() or RAY_START_TIMEOUT not in str(exc):
                raise
            _kill_children_except(started)
            if attempt == LOCAL_START_TRIES:
                raise MachineError(
                    f"Ray's local start timed out {LOCAL_START_TRIES} times (Ray 2.60 gives a new raylet a fixed 30 s "
                    "to register): this machine is too busy now; run again when it is quieter") from None
            print(f"Ray's local start timed out ({exc}); killed its processes, starting it again "
                  f"(try {attempt + 1} of {LOCAL_START_TRIES})", file=sys.stderr, flush=True)


LOCAL_START_TRIES = 3
RAY_START_TIMEOUT = "timed out during startup"  # ray/_private/node.py, Ray 2.60


def starts_local_ray() -> bool:
    """True when the next ``ray.init`` starts a Ray on this machine rather than joining one."""
    return os.environ.get("RAY_ADDRESS", "local") in ("", "local")


OOM_RETRIES_ENV = "RAY_task_oom_retries"


class MachineError(RuntimeError):
    """Nothing asked for was wrong, but the machine or cluster could not do it (out of memory, a Ray
    that would not start). Not a :class:`~raylam.config.UserError` (exit 1, not 2), but said in one
    line all the same: what failed, and what to change."""


class OutOfMemory(MachineError):
    """Ray's memory monitor killed a task of this job more often than ``oom_retries`` allows."""


def limit_oom_retries(retries: int) -> None:
    """Cap how often a task killed by Ray's memory monitor is retried, for the Ray this process
    starts or joins next (``-1`` leaves Ray's default).

    Ray 2.60 retries such a task without end (``RAY_task_oom_retries`` defaults to -1), and the
    monitor kills the newest task first: on a node that stays over its threshold, stage drivers are
    killed and restarted over and over while the memory hogs live on, and the job neither advances
    nor fails (measured: two label-curve pipelines on one 24 GiB machine, 25 min without a finished
    stage). The owner of a task counts its retries, so this process's setting covers the tasks it
    submits (the stage drivers); a local Ray started from here passes it to every worker."""
    ray = sys.modules.get("ray")  # not imported for this: commands that never start Ray stay light
    if retries >= 0 and not (ray is not None and ray.is_initialized()):
        os.environ[OOM_RETRIES_ENV] = str(retries)


def error_chain(err: BaseException | None):
    """``err``, then each error that led to it (``raise ... from``, or raised while handling), once each."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def memory_kill(err: BaseException) -> str | None:
    """The node's memory as Ray reported it ("22.40GB used / 23.54GB limit"), when ``err`` or an
    error that led to it is a kill by Ray's memory monitor; else None."""
    import re

    for cause in error_chain(err):
        text = " ".join(str(cause).split())
        if "running low on memory" in text:
            found = re.search(r"was ([\d.]+ ?GB) used / ([\d.]+ ?GB)", text)
            return f"{found[1]} used of {found[2]}" if found else "above Ray's threshold"
    return None


PROCESS_DEATHS = ("ActorDiedError", "WorkerCrashedError", "NodeDiedError", "OwnerDiedError")


def process_death(err: BaseException) -> str | None:
    """One line for ``err`` when it, or an error that led to it, says a Ray process died under the job
    (an actor, a task's worker, a node): killed from outside raylam or crashed, nothing raylam's code
    raised. None for any other error (a bug keeps its traceback)."""
    import re

    ray = sys.modules.get("ray")  # an error from Ray means Ray is imported
    if ray is None:
        return None
    import ray.exceptions as rex

    kinds = tuple(getattr(rex, name) for name in PROCESS_DEATHS if hasattr(rex, name))
    err = next((cause for cause in error_chain(err) if isinstance(cause, kinds)), None)
    if err is None:
        return None
    kind = next(k.__name__ for k in kinds if isinstance(err, k))
    text = " ".join(str(err).split())
    name, pid = re.search(r"class_name: (\S+)", text), re.search(r"\bpid: (\d+)", text)
    what = f"actor {name[1].rsplit('.', 1)[-1]}" if name else "a worker" if kind != "NodeDiedError" else "a node"
    what += f" (pid {pid[1]})" if pid else ""
    exit_kind, detail = re.search(r"Worker exit type: (\w+)", text), re.search(r"Worker exit detail: (.+?)\.", text)
    how = f", worker exit {exit_kind[1]}" + (f": {detail[1]}" if detail else "") if exit_kind else ""
    return (f"a Ray process died under the job: {what}, {kind}{how}. It was killed from outside raylam (the kernel's "
            "OOM killer: see `dmesg`; a node that left; `ray stop`) or crashed; its log is under Ray's session "
            "folder (/tmp/ray/session_latest/logs by default) on its node. Finished stages are kept and a rerun "
            "goes on from them; --verbose shows the traceback")


def out_of_memory(what: str, memory: str) -> OutOfMemory:
    """The one line for ``what`` (a stage, a command) killed by Ray's memory monitor past its retries."""
    retries = os.environ.get(OOM_RETRIES_ENV, "")
    times = f" {int(retries) + 1} times" if retries.isdigit() else ""
    return OutOfMemory(
        f"out of memory: {what} was killed by Ray's memory monitor{times} (node memory {memory}); run fewer stages or workers at "
        "once (concurrent_stages, train.num_workers) or use a node with more memory; finished stages are kept and a "
        "rerun goes on from them")


def _child_pids() -> set[int]:
    import psutil  # Ray ships it (ray/thirdparty_files, on sys.path once ray is imported)

    return {child.pid for child in psutil.Process().children(recursive=True)}


def _kill_children_except(keep: set[int]) -> None:
    import psutil

    for child in psutil.Process().children(recursive=True):
        if child.pid not in keep:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass


def cluster_resources() -> dict[str, float]:
    """The resources of the cluster this process is connected to. Library code never calls
    ``ray.init``: like Ray's own APIs (``ray.get``, Ray Data, Train) it connects on first use
    through Ray's auto-init (``RAY_ADDRESS``, else a local Ray; ``RAY_ENABLE_AUTO_CONNECT=0``
    turns that off), which ``ray.get_runtime_context`` triggers and ``ray.cluster_resources``
    does not."""
    import ray

    ray.get_runtime_context()
    return ray.cluster_resources()


def started_here() -> bool:
    """True when this process started the Ray it is connected to (``ray.init()`` with no cluster to
    join): then every node is this machine. A job submitted to a cluster, ``RAY_ADDRESS``, a Ray
    Client or a Ray task all join a cluster started elsewhere (``connect_only`` in Ray's Node), which
    may be an autoscaled one that has only its head now."""
    import ray._private.worker as worker

    node = getattr(worker, "_global_node", None)
    return node is not None and bool(getattr(node, "head", False))


def is_multi_node() -> bool:
    """True unless the cluster is a Ray this process started itself and it has one live node.

    A cluster that raylam joins counts as multi-node even with one live node: a launcher or KubeRay
    cluster whose worker types scale from 0 shows only its head when a job starts, and Ray 2.60 tells
    a driver nothing about the nodes its autoscaler may add (``get_cluster_config()`` reads a key
    that neither the launcher nor KubeRay writes)."""
    import ray

    if not started_here():
        return True
    return sum(1 for node in ray.nodes() if node.get("Alive")) > 1


def check_paths(paths: dict[str, str | None], shared_filesystem: bool) -> None:
    """Refuse local ``paths`` (``{config field: path}``) on a multi-node cluster unless shared."""
    local = {field: path for field, path in paths.items() if path and not is_uri(path)}
    if not local or shared_filesystem or not is_multi_node():
        return
    field, path = next(iter(local.items()))
    raise ConfigError(
        f"{field}: {path!r} is a local path, but raylam runs on a Ray cluster it did not start (or one of "
        "several nodes), whose nodes may not share a disk (an autoscaler adds and removes them); use object "
        "storage (s3://bucket/..., gs://bucket/...) or, if the path is a filesystem mounted at the same place "
        "on every node (NFS, EFS), set shared_filesystem=true"
        + (f" (also local: {', '.join(sorted(set(local) - {field}))})" if len(local) > 1 else "")
    )


def is_uri(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def experiment_paths(exp, *, collect: bool = True, train: bool = True, evaluate: bool = True) -> dict:
    """The paths of an experiment the given commands write or read on every node."""
    paths: dict[str, str | None] = {}
    if collect:
        paths["collect.output"] = exp.collect.output
        paths["collect.env.background_dir"] = getattr(exp.collect.env, "background_dir", None)
    if train:
        paths["train.dataset"] = exp.train.dataset
        paths["train.storage_path"] = exp.train.storage_path
    if evaluate:
        paths["evaluate.output"] = exp.eval_output()
        paths["evaluate.rollout.background_dir"] = exp.evaluate.rollout.background_dir
    return paths


def require_cluster_paths(exp, **which: bool) -> None:
    """Connect to Ray, then refuse the experiment's local paths if the cluster needs shared ones."""
    connect()
    check_paths(experiment_paths(exp, **which), exp.shared_filesystem)


class NoCudaError(RuntimeError):
    """Work that holds a Ray GPU found no CUDA device in torch."""


def cuda_device(what: str):
    """``torch.device("cuda")`` for ``what`` (an actor or worker that asked Ray for a GPU), or one clear
    error: holding a GPU while computing on the CPU would be slow and silent. torch sees no CUDA when
    its build does not match the node's driver (an unpinned CUDA 13 wheel on a CUDA 12 image) or when
    Ray gave the process no device."""
    import os
    import socket

    import torch

    if torch.cuda.is_available():
        return torch.device("cuda")
    raise NoCudaError(
        f"{what} holds a Ray GPU, but torch {torch.__version__} (CUDA build {torch.version.cuda or 'none'}) on "
        f"{socket.gethostname()} sees no CUDA device "
        f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); install the torch build for the "
        "node's CUDA driver (cluster/setup_node.sh, RAYLAM_TORCH_INDEX) or set use_gpu=false")
