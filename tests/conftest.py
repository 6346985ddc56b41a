"""Shared test setup: CPU software rendering and one small local Ray per test session."""

import os

# MuJoCo reads MUJOCO_GL at import; Ray workers started below inherit it.
os.environ.setdefault("MUJOCO_GL", "osmesa")
# Ray Train in tests: no preemption watcher actor per run (there is no preemption here) and a
# faster controller poll (runs of a few steps end sooner); Ray processes started below inherit both.
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

import pytest  # noqa: E402

from raylam.cluster import OOM_RETRIES_ENV  # noqa: E402


@pytest.fixture(autouse=True)
def oom_retries_unchanged():
    """A command run in-process sets ``RAY_task_oom_retries`` for the Ray it would start
    (:func:`raylam.cluster.limit_oom_retries`); put it back, so a Ray the session starts later gets
    the same setting whichever tests ran before it."""
    before = os.environ.get(OOM_RETRIES_ENV)
    yield
    if before is None:
        os.environ.pop(OOM_RETRIES_ENV, None)
    else:
        os.environ[OOM_RETRIES_ENV] = before


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray with 2 CPUs (the size of the CI machine); shut down after the session."""
    import ray

    if not ray.is_initialized():
        init_local_ray()
    yield ray
    ray.shutdown()


def init_local_ray(dashboard: bool = False) -> None:
    """The tests' local Ray: 2 CPUs, quiet; its processes inherit this process's environment. Without
    its dashboard (quicker to start) unless asked: Ray's State API, which some of Ray's own clean-up
    relies on, is served by it."""
    import ray

    from raylam.console import local_runtime_env

    runtime_env = local_runtime_env()  # as the command line's Ray: workers know their own cluster's address
    runtime_env["env_vars"] = {**runtime_env["env_vars"], "MUJOCO_GL": os.environ["MUJOCO_GL"]}
    ray.init(address="local", num_cpus=2, include_dashboard=dashboard, log_to_driver=False, runtime_env=runtime_env)


@pytest.fixture(scope="module")
def ray_with_s3(s3_server, ray_local):
    """The local Ray restarted after the S3 server, so every Ray process can reach it, and with its
    dashboard, as on a cluster (a stage driver lost under load is retried, and Ray Train frees the
    dead driver's workers through the dashboard's State API); the tests' usual Ray comes back
    afterwards. Yields the bucket factory."""
    ray_local.shutdown()
    init_local_ray(dashboard=True)
    yield s3_server
    ray_local.shutdown()
    init_local_ray()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server (moto's standalone server, its own process) on 127.0.0.1.

    Every AWS client here and in Ray processes started after this fixture (pyarrow's S3 filesystem,
    boto3) finds it through ``AWS_ENDPOINT_URL``; yields a function that makes a fresh bucket and
    returns its ``s3://`` URI. Use it before ``ray_local`` (Ray workers inherit the environment
    of the process that starts Ray)."""
    import socket
    import subprocess
    import sys
    import time
    import uuid

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(tmp_path_factory.mktemp("moto") / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in _S3_ENV}
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_EC2_METADATA_DISABLED": "true"})
    import boto3

    client = boto3.client("s3")
    deadline = time.monotonic() + 180
    while True:  # wait until it answers (a started server, not an elapsed time)
        try:
            client.list_buckets()
            break
        except Exception:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto server did not start on {endpoint}; see {log.name}") from None
            time.sleep(0.2)

    def bucket(prefix: str = "raylam") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        client.create_bucket(Bucket=name)
        return f"s3://{name}"

    yield bucket
    server.terminate()
    server.wait(timeout=30)
    log.close()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


_S3_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
           "AWS_EC2_METADATA_DISABLED")
def pytest_collection_modifyitems(config, items):
    """A test that starts Ray (through the ``ray_local`` fixture, directly or via another fixture) is
    slow by definition: ``pytest -m "not slow"`` is then the Ray-free fast tier."""
    for item in items:
        if "ray_local" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


def run_cluster_script(script, args: list[str], out, timeout: float) -> dict:
    """Run a script that builds its own ``ray.cluster_utils.Cluster`` in a subprocess (so it never
    meets the session's local Ray; its own Ray temp dir keeps other ray.init() calls from finding
    it) and return the ``result.json`` it writes in ``out``, failing with its stderr if it did not
    finish cleanly."""
    import json
    import shutil
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    ray_tmp = tempfile.mkdtemp(prefix="rcs", dir="/tmp")  # short: socket paths
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_TMPDIR": ray_tmp}
    root = Path(__file__).resolve().parents[1]
    try:
        proc = subprocess.run([sys.executable, str(script), str(out), *args], cwd=root, env=env,
                              capture_output=True, text=True, timeout=timeout)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    result_file = Path(out) / "result.json"
    assert result_file.exists(), proc.stderr[-4000:]
    result = json.loads(result_file.read_text())
    assert proc.returncode == 0, (proc.stderr[-4000:], result)
    return result
