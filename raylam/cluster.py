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

    A local start is tried twice: Ray 2.60 gives a new raylet a fixed 30 s to register
    (``node.py``), which a busy laptop or CI machine can miss; the half-started processes of the
    first try are killed before the second."""
    import ray

    if ray.is_initialized():
        return
    started = _child_pids()
    try:
        ray.init(runtime_env=runtime_env)
    except Exception as exc:  # Ray raises a bare Exception here
        if not starts_local_ray() or RAY_START_TIMEOUT not in str(exc):
            raise
        print(f"Ray's local start timed out ({exc}); killing its processes and starting it once more",
              file=sys.stderr, flush=True)
        _kill_children_except(started)
        ray.init(runtime_env=runtime_env)


RAY_START_TIMEOUT = "timed out during startup"  # ray/_private/node.py, Ray 2.60


def starts_local_ray() -> bool:
    """True when the next ``ray.init`` starts a Ray on this machine rather than joining one."""
    return os.environ.get("RAY_ADDRESS", "local") in ("", "local")


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
