"""`ray job submit` end to end: a real Ray head with a dashboard, a real raylam collection job.

The head is started here with `ray start --head --block` in its own process group, on its own
ports and its own temp dir, so it is independent of the session's `ray_local` (which may be
running in this very process). Only what this module started is stopped: the process group it
launched, never `ray stop` (that would end every Ray on the machine).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RUNTIME_ENV = REPO / "cluster" / "runtime_env.yaml"


def _free_ports(n: int) -> list[int]:
    """n distinct ports free right now (sockets held together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _our_processes(text: str, pgid: int) -> list[tuple[int, str]]:
    """Live processes of our head: in the process group we launched, or with `text` (the head's
    temp dir) in their command line (a process that left the group still names the session)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, group = fields[0], int(fields[2])
        if state != "Z" and (group == pgid or text in cmdline):
            found.append((int(entry), cmdline[:200]))
    return found


class LocalHead:
    """A Ray head with a dashboard in a subprocess of its own process group."""

    def __init__(self) -> None:
        # Short temp dir: Ray's Unix socket paths under it must stay below ~107 characters.
        self.temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")
        (self.gcs_port, self.dashboard_port, self.agent_port, self.client_port,
         self.metrics_port) = _free_ports(5)
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.log = open(Path(self.temp_dir) / "ray_start.log", "w+")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 540.0) -> None:
        ray_cli = Path(sys.executable).with_name("ray")
        cmd = [
            str(ray_cli), "start", "--head", "--block",
            "--node-ip-address", "127.0.0.1",
            "--port", str(self.gcs_port),
            "--include-dashboard", "true",
            "--dashboard-host", "127.0.0.1",
            "--dashboard-port", str(self.dashboard_port),
            "--dashboard-agent-listen-port", str(self.agent_port),
            "--ray-client-server-port", str(self.client_port),
            "--metrics-export-port", str(self.metrics_port),
            "--num-cpus", "2", "--num-gpus", "0",
            "--temp-dir", self.temp_dir,
            "--disable-usage-stats",
        ]
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env["MUJOCO_GL"] = "osmesa"
        # `ray start` turns token authentication on when a token exists (~/.ray/auth_token), and
        # this process's Ray client may or may not be in token mode (the session's `ray_local`
        # switches it on). A head bound to 127.0.0.1 for one test needs no token: say so.
        env["RAY_AUTH_MODE"] = "disabled"
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        # Asked over plain HTTP, as any client would: this process's own Ray state plays no part.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with opener.open(f"{self.address}/api/version", timeout=10) as response:
                    if "ray_version" in json.loads(response.read()):
                        return
            except Exception as err:  # the dashboard (or its job module) is not up yet
                last_error = err
            time.sleep(1.0)
        raise TimeoutError(f"no dashboard at {self.address} after {timeout:.0f} s ({last_error!r}):\n"
                           f"{self.output()}\n--- dashboard.log ---\n{self.dashboard_log()}")

    def client_env(self) -> dict:
        """The environment of a `ray job` command aimed at this head and nothing else."""
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
        return {**env, "RAY_AUTH_MODE": "disabled"}

    def dashboard_log(self) -> str:
        logs = sorted(Path(self.temp_dir).glob("session_*/logs/dashboard.log"))
        return logs[-1].read_text(errors="replace")[-3000:] if logs else "(none)"

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-4000:]

    def stop(self, grace: float = 5.0) -> list[tuple[int, str]]:
        """End the process group we launched (SIGTERM, then SIGKILL after `grace` seconds: a
        graceful Ray shutdown can take half a minute); return our processes still alive after."""
        if self.proc is None:
            return []
        pgid = self.proc.pid  # start_new_session: the group id is the leader's pid
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 60.0)):  # generous: a loaded machine reaps slowly
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                self.proc.poll()
                if self.proc.returncode is not None and not _our_processes(self.temp_dir, pgid):
                    break
                time.sleep(0.25)
            else:
                continue
            break
        self.proc.poll()
        leftovers = _our_processes(self.temp_dir, pgid)
        self.log.close()
        if not leftovers:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        return leftovers


def _collect_args(output: Path) -> list[str]:
    return [
        sys.executable, "-m", "raylam.cli", "collect", "--config", "configs/quickstart.yaml",
        f"collect.output={output}",
        "collect.episodes=1", "collect.heldout_episodes=0", "collect.num_labeled=1",
        "collect.env.episode_length=30", "collect.progress=false", "collect.env.preset=vanilla",
        # a submitted job joins a cluster raylam did not start, where local paths are refused unless
        # declared shared: this one-machine cluster's disk is every node's
        "shared_filesystem=true",
    ]


@pytest.mark.slow
def test_ray_job_submit_runs_raylam_collect(tmp_path):
    """`ray job submit` (the command line users run, in a process of its own) with the repository's
    runtime_env runs `raylam collect` on the head and waits for it: exit 0, raylam's summary in the
    job's logs, a whole dataset where it was told to write."""
    output = tmp_path / "data"
    runtime_env = yaml.safe_load(RUNTIME_ENV.read_text())
    # The file's working_dir is "." (relative to where `ray job submit` runs): make it absolute.
    runtime_env["working_dir"] = str(REPO)
    runtime_env.setdefault("env_vars", {})["MUJOCO_GL"] = "osmesa"
    ray_cli = str(Path(sys.executable).with_name("ray"))

    head = LocalHead()
    started = time.monotonic()
    try:
        head.start()
        print(f"head up after {time.monotonic() - started:.1f} s")
        submit = [ray_cli, "job", "submit", "--address", head.address,
                  "--runtime-env-json", json.dumps(runtime_env), "--", *_collect_args(output)]
        # The dashboard answers before the head's job agent has registered ("No available agent
        # to submit job, please try again later"): retry for a while, as the message says.
        submit_deadline = time.monotonic() + 270
        while True:
            job = subprocess.run(submit, cwd=tmp_path, env=head.client_env(), capture_output=True, text=True,
                                 timeout=900)  # CI machines run 3x slower at times
            logs = job.stdout + job.stderr
            if "No available agent" not in logs or time.monotonic() > submit_deadline:
                break
            time.sleep(1.0)
        print(f"job exited {job.returncode} after {time.monotonic() - started:.1f} s")
        assert job.returncode == 0, (
            f"ray job submit exited {job.returncode} after {time.monotonic() - started:.0f} s\n"
            f"--- its output ---\n{logs[-6000:]}\n--- ray start ---\n{head.output()}"
        )
    finally:
        leftovers = head.stop()
        print(f"head down after {time.monotonic() - started:.1f} s")
    assert not leftovers, f"processes of the test's Ray head still alive: {leftovers}"

    # the job ran the raylam command line and printed its summary
    assert "wrote 1 episodes" in logs, logs
    # and wrote a whole dataset where it was told to
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["num_episodes"] == 1
    assert manifest["num_labeled"] == 1
    assert manifest["num_transitions"] == 30
    assert len(manifest["shards"]) == 1
    shard = output / manifest["shards"][0]["name"]
    assert shard.suffix == ".tar" and shard.stat().st_size == manifest["shards"][0]["bytes"]
    assert not [p.name for p in output.iterdir() if ".tmp-" in p.name]
