"""Connecting to Ray, and refusing what cannot work on the cluster found there.

On a cluster of several nodes (or one whose autoscaler may add nodes) a local path names a
different directory on every node: shards written by collection tasks, checkpoints written by
Train workers and reports would be scattered over disks that vanish with their nodes. Such paths
are refused before any work, unless the user declares them shared (an NFS/EFS mount at the same
place on every node).
"""

from __future__ import annotations

from raylam.config import ConfigError


def connect() -> None:
    """Join the cluster this process belongs to (``RAY_ADDRESS``, a submitted job's) or start a
    local one: the CLI's single ``ray.init``."""
    import ray

    if not ray.is_initialized():
        ray.init()


def cluster_resources() -> dict[str, float]:
    """The resources of the cluster this process is connected to. Library code never calls
    ``ray.init``: like Ray's own APIs (``ray.get``, Ray Data, Train) it connects on first use
    through Ray's auto-init (``RAY_ADDRESS``, else a local Ray; ``RAY_ENABLE_AUTO_CONNECT=0``
    turns that off), which ``ray.get_runtime_context`` triggers and ``ray.cluster_resources``
    does not."""
    import ray

    ray.get_runtime_context()
    return ray.cluster_resources()


def is_multi_node() -> bool:
    """True when the connected cluster has more than one node now, or its autoscaler may add some."""
    import ray

    if sum(1 for node in ray.nodes() if node.get("Alive")) > 1:
        return True
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # no autoscaler state (a plain local Ray): a single node
        return False
    if config is None:
        return False
    counts = [group.max_count for group in config.node_group_configs]
    return any(count == -1 for count in counts) or sum(counts) > 1


def check_paths(paths: dict[str, str | None], shared_filesystem: bool) -> None:
    """Refuse local ``paths`` (``{config field: path}``) on a multi-node cluster unless shared."""
    local = {field: path for field, path in paths.items() if path and not is_uri(path)}
    if not local or shared_filesystem or not is_multi_node():
        return
    field, path = next(iter(local.items()))
    raise ConfigError(
        f"{field}: {path!r} is a local path, but this Ray cluster has (or may autoscale to) several nodes, "
        "which do not share a disk; use object storage (s3://bucket/..., gs://bucket/...) or, if the path is "
        "a filesystem mounted at the same place on every node (NFS, EFS), set shared_filesystem=true"
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
