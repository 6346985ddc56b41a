"""A driver joining a Ray cluster started without ``RAY_task_oom_retries`` caps the memory-monitor
retries of the tasks it submits (``raylam.cluster.limit_oom_retries``): the owner counts them.

Run by tests/test_out_of_memory.py in a subprocess (``python tests/oom_joined.py OUT_DIR``) so its
cluster never meets the test session's local Ray. Its one node's memory threshold lies below what the
machine already uses, so Ray's monitor kills every task as it starts. Writes OUT_DIR/result.json.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from ray.cluster_utils import Cluster

from raylam.cluster import limit_oom_retries


def main(out: Path) -> None:
    os.environ.pop("RAY_task_oom_retries", None)  # the cluster starts with Ray's default: without end
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "_system_config": {"memory_usage_threshold": 0.01, "memory_monitor_refresh_ms": 100}})
    limit_oom_retries(1)  # what the CLI does before it joins
    import ray

    ray.init(address=cluster.address)

    @ray.remote(max_retries=1)
    def sleeper() -> str:
        time.sleep(60)
        return "finished"

    try:
        outcome = ray.get(sleeper.remote(), timeout=600)  # never reached when the cap works: killed first
    except ray.exceptions.OutOfMemoryError:
        outcome = "OutOfMemoryError"
    except ray.exceptions.GetTimeoutError:
        outcome = "still retrying"
    finally:
        ray.shutdown()
        cluster.shutdown()
    (out / "result.json").write_text(json.dumps({"outcome": outcome}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
