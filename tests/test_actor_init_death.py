"""An actor pool (the labeling and probe actors) survives an actor that dies while starting: the
pool replaces it and the dataset completes, instead of failing a stage hours into a pipeline."""

from __future__ import annotations

import os
import signal

import numpy as np


def test_actor_pool_replaces_an_actor_killed_while_starting(ray_local, tmp_path):
    import ray

    from raylam.data.pipeline import configure_data_context, map_with_actor_pool

    class DiesOnFirstStart:  # defined here so that Ray ships it by value to the actor's process
        """Kills its own process (as the OOM killer would) the first time an actor of the pool starts."""

        def __init__(self, marker: str):
            if not os.path.exists(marker):
                open(marker, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)

        def __call__(self, batch: dict) -> dict:
            return {"doubled": batch["id"] * 2}

    configure_data_context(progress=False)
    marker = tmp_path / "killed-once"
    ds = map_with_actor_pool(ray.data.range(64, override_num_blocks=4), DiesOnFirstStart,
                             fn_constructor_kwargs={"marker": str(marker)}, batch_size=16, batch_format="numpy",
                             num_cpus=0.5, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=1))
    doubled = np.sort(np.concatenate([b["doubled"] for b in ds.iter_batches(batch_size=None, batch_format="numpy")]))
    assert marker.exists()  # an actor did die while starting
    np.testing.assert_array_equal(doubled, np.arange(64) * 2)
