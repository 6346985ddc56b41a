"""Shared test setup: CPU software rendering and one small local Ray per test session."""

import os

# MuJoCo reads MUJOCO_GL at import; Ray workers started below inherit it.
os.environ.setdefault("MUJOCO_GL", "osmesa")
# Ray Train in tests: no preemption watcher actor per run (there is no preemption here) and a
# faster controller poll (runs of a few steps end sooner); Ray processes started below inherit both.
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray with 2 CPUs (the size of the CI machine); shut down after the session."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"MUJOCO_GL": os.environ["MUJOCO_GL"]}})
    yield ray
    ray.shutdown()


def pytest_collection_modifyitems(config, items):
    """A test that starts Ray (through the ``ray_local`` fixture, directly or via another fixture) is
    slow by definition: ``pytest -m "not slow"`` is then the Ray-free fast tier."""
    for item in items:
        if "ray_local" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
