"""The cluster configs in cluster/: Ray's own validation of the launcher YAMLs, the structure that
matters to raylam, the KubeRay manifests and the job runtime env. No cloud account is needed:
`prepare_config` only merges the provider's defaults.yaml shipped with Ray."""

from __future__ import annotations

import copy
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
LAUNCHER_YAMLS = ["aws.yaml", "gcp.yaml"]
RAY_VERSION_TAG = "rayproject/ray:2.60.0-py311"
# The GPU images name their CUDA: "-gpu" aliases an old CUDA 12.1 image; torch 2.13's CUDA wheels
# are built for CUDA 12.8+ (ray-images.yaml lists cu12.8.1 among Ray's platforms).
GPU_IMAGE = f"{RAY_VERSION_TAG}-cu128"
IMAGE_ROOT = "/home/ray/raylam"  # where cluster/Dockerfile puts the repository


def _load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


@pytest.fixture(params=LAUNCHER_YAMLS)
def launcher(request):
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = _load(request.param)
    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)  # schema, head type among the node types, sum(min) <= max_workers
    return request.param, raw, prepared


def _gpu_types(cfg: dict) -> dict:
    return {k: v for k, v in cfg["available_node_types"].items() if v["resources"].get("GPU", 0) > 0}


def _cpu_worker_types(cfg: dict) -> dict:
    head = cfg["head_node_type"]
    return {k: v for k, v in cfg["available_node_types"].items()
            if k != head and v["resources"].get("GPU", 0) == 0}


def test_launcher_passes_ray_validation(launcher):
    name, raw, prepared = launcher
    assert prepared["provider"]["type"] == name.removesuffix(".yaml")
    assert prepared["cluster_name"] == "raylam"
    # our own setup replaced the defaults' (which install a nightly Ray wheel)
    assert not any("ray-wheels" in cmd for cmd in prepared["setup_commands"])


def test_head_runs_no_work(launcher):
    _, raw, prepared = launcher
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and head["resources"].get("GPU", 0) == 0
    assert head["max_workers"] == 0 and head["min_workers"] == 0
    assert any("--dashboard-host=0.0.0.0" in cmd for cmd in prepared["head_start_ray_commands"])


def test_head_declares_the_resource_trial_drivers_pin_to(launcher):
    from raylam.tune.config import TrialResources

    _, raw, prepared = launcher
    pin = TrialResources().pin_drivers
    head_type = prepared["head_node_type"]
    assert prepared["available_node_types"][head_type]["resources"][pin] >= 1
    for name, node in prepared["available_node_types"].items():  # and no other node has it
        assert name == head_type or pin not in node["resources"], name
    start = " ".join(prepared["head_start_ray_commands"])
    assert f"""--resources='{{"{pin}": 1000}}'""" in start
    assert "--shm-size=" in " ".join(prepared["docker"]["run_options"])  # object store in /dev/shm


def test_gpu_worker_types(launcher):
    _, raw, prepared = launcher
    gpus = _gpu_types(prepared)
    counts = sorted(v["resources"]["GPU"] for v in gpus.values())
    assert 1 in counts and 8 in counts, counts
    for name, node in gpus.items():
        assert 0 <= node["min_workers"] <= node["max_workers"] <= prepared["max_workers"], name
        assert node["max_workers"] >= 1, name
        # CPUs beside the GPUs: Ray Train workers (cpus_per_worker=4) plus Ray Data decoding
        assert node["resources"]["CPU"] >= 4 * node["resources"]["GPU"] + 4, name
        docker = node["docker"]
        assert docker["worker_image"] == GPU_IMAGE, name
        assert "-e MUJOCO_GL=egl" in docker["worker_run_options"], name
        assert any("NVIDIA_DRIVER_CAPABILITIES=all" in o for o in docker["worker_run_options"]), name


def test_cpu_worker_type_for_collection(launcher):
    _, raw, prepared = launcher
    cpus = _cpu_worker_types(prepared)
    assert cpus, "no CPU worker type"
    for name, node in cpus.items():
        assert node["resources"]["CPU"] >= 32, name
        assert node["min_workers"] <= node["max_workers"], name
        assert node["docker"]["worker_image"] == f"{RAY_VERSION_TAG}-cpu", name
        assert "-e MUJOCO_GL=osmesa" in node["docker"]["worker_run_options"], name


def test_autoscaling_and_images(launcher):
    _, raw, prepared = launcher
    assert sum(v["min_workers"] for v in prepared["available_node_types"].values()) == 0  # scale from zero
    assert 0 < prepared["idle_timeout_minutes"] <= 30
    assert prepared["docker"]["image"].startswith(RAY_VERSION_TAG)
    assert prepared["docker"]["head_image"] == f"{RAY_VERSION_TAG}-cpu"
    assert prepared["docker"]["container_name"]


def test_setup_installs_raylam(launcher):
    _, raw, prepared = launcher
    # the repository reaches every node through file_mounts, without local data, runs or venv
    mounts = prepared["file_mounts"]
    assert mounts == {"~/raylam": "."}
    for excluded in (".venv", "data", "runs"):
        assert excluded in prepared["rsync_exclude"]
    for commands in (prepared["head_setup_commands"], prepared["worker_setup_commands"]):
        assert "bash ~/raylam/cluster/setup_node.sh ~/raylam" in commands
    script = (CLUSTER / "setup_node.sh").read_text()
    assert 'pip install -q -e "$RAYLAM_DIR"' in script
    assert "libosmesa6" in script and "libegl1" in script
    subprocess.run(["bash", "-n", str(CLUSTER / "setup_node.sh")], check=True)


def test_setup_node_script_installs_nothing_twice(tmp_path):
    """On a node that already has its libraries and torch, the script only re-runs the editable
    install. `pip`, `sudo`, `apt-get` and `python` are stubs that log their calls; `ldconfig` is
    this machine's (libosmesa6 is installed here)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    for tool in ("pip", "sudo", "apt-get", "python"):
        (bin_dir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\n')
        (bin_dir / tool).chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(["bash", str(CLUSTER / "setup_node.sh"), str(REPO)], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    all_calls = log.read_text().splitlines()
    calls = [c for c in all_calls if not c.startswith(("apt-get", "sudo"))]  # render libraries this machine lacks
    assert calls[0] == "python -c import torch", calls  # torch "is there": not installed again
    assert f"pip install -q -e {REPO}" in calls, calls
    assert not [c for c in calls if c.startswith("pip") and "torch" in c], calls
    assert "import raylam, ray, torch" in calls[-1], calls  # the final check
    libraries = ("libOSMesa", "libEGL.so.1", "libGL.so.1", "libGLESv2.so.2", "libOpenGL.so.0")
    if all(subprocess.run(f"ldconfig -p | grep -q {lib}", shell=True).returncode == 0 for lib in libraries):
        assert calls == all_calls, all_calls  # nothing to install


def test_setup_node_script_fails_loudly_when_a_gpu_nodes_torch_sees_no_cuda(tmp_path):
    """A node with a GPU (nvidia-smi answers) whose torch has no CUDA: the setup stops with one
    message naming the driver and the knobs, instead of printing `cuda False` and going on. torch
    is installed pinned, from the CUDA 12.8 index."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    stubs = {
        "pip": f'echo "pip $*" >> {log}',
        "sudo": f'echo "sudo $*" >> {log}', "apt-get": f'echo "apt-get $*" >> {log}',
        "nvidia-smi": 'case "$*" in *driver_version*) echo 535.183.01;; *) echo "GPU 0: NVIDIA A10G";; esac',
        # no torch at first; once "installed", torch imports but sees no CUDA
        "python": f'echo "python $*" >> {log}\ncase "$*" in "-c import torch") grep -q "pip install" {log};;\n'
                  '*cuda.is_available*else*) exit 1;; *) echo "2.13.0 built for CUDA 13.0";; esac',
    }
    for tool, body in stubs.items():
        (bin_dir / tool).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / tool).chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(["bash", str(CLUSTER / "setup_node.sh"), str(REPO)], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 1, (result.stdout, result.stderr)
    calls = log.read_text().splitlines()
    assert "pip install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" in calls, calls
    message = result.stderr.strip().splitlines()[-1]
    assert "has a GPU (driver 535.183.01)" in message and "sees no CUDA" in message, message
    assert "RAYLAM_TORCH_INDEX" in message, message


def test_dockerfile_builds_from_the_ray_image():
    text = (CLUSTER / "Dockerfile").read_text()
    assert f"ARG BASE={GPU_IMAGE}" in text
    assert "setup_node.sh" in text
    ignored = (CLUSTER / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", "data", "runs"} <= set(ignored)


# --- KubeRay ------------------------------------------------------------------------------

def _containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def _check_shm(group: dict, name: str) -> None:
    """/dev/shm is a memory-backed volume (a pod's default is 64 MB: Ray would fall back to /tmp)."""
    spec = group["template"]["spec"]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for container in spec["containers"]:
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        assert "/dev/shm" in mounts, name
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory", name
        # the object store is sized to fit the volume, with room to spare for NCCL and torch (Ray's
        # default, 30% of the pod's memory, may not fit: it would fall back to /tmp)
        shm = _bytes(volumes[mounts["/dev/shm"]]["emptyDir"]["sizeLimit"])
        store = int(group["rayStartParams"]["object-store-memory"])
        assert 0 < store <= 0.8 * shm, name
        assert store <= 0.3 * _bytes(container["resources"]["limits"]["memory"]), name


def _bytes(quantity: str) -> int:
    """A Kubernetes binary quantity ("16Gi") in bytes."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    return int(quantity[:-2]) * units[quantity[-2:]] if quantity[-2:] in units else int(quantity)


def _check_raycluster_spec(spec: dict) -> None:
    import json

    from raylam.tune.config import TrialResources

    assert spec["rayVersion"] == "2.60.0"
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # no work on the head
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    # KubeRay's format: a JSON object inside a quoted string
    resources = json.loads(json.loads(head["rayStartParams"]["resources"]))
    assert resources[TrialResources().pin_drivers] >= 1
    _check_shm(head, "head")
    for group in spec["workerGroupSpecs"]:
        _check_shm(group, group["groupName"])
        assert "resources" not in group["rayStartParams"], group["groupName"]  # the pin is the head's alone
    (head_container,) = _containers(head)
    assert {p["containerPort"] for p in head_container["ports"]} >= {6379, 8265}
    assert "nvidia.com/gpu" not in head_container["resources"]["limits"]
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"gpu", "cpu"}
    for name, group in groups.items():
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], name
        assert group["maxReplicas"] >= 1
        for container in _containers(group):
            assert container["resources"]["limits"] and container["resources"]["requests"], name
            assert container["image"].startswith("REGISTRY/raylam:")
    (gpu,) = _containers(groups["gpu"])
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert {"name": "MUJOCO_GL", "value": "egl"} in gpu["env"]
    assert any(t["key"] == "nvidia.com/gpu" for t in groups["gpu"]["template"]["spec"]["tolerations"])
    (cpu,) = _containers(groups["cpu"])
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]
    assert {"name": "MUJOCO_GL", "value": "osmesa"} in cpu["env"]


def test_kuberay_raycluster():
    doc = _load("kuberay/raycluster.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster"
    assert doc["metadata"]["name"]
    _check_raycluster_spec(doc["spec"])


def _job_commands(spec: dict) -> list[list[str]]:
    """The raylam commands of the RayJob's entrypoint script, with its runtime env's variables."""
    env = yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "bash" and argv[1].startswith(IMAGE_ROOT + "/"), argv  # one command: a script
    script = REPO / argv[1].removeprefix(IMAGE_ROOT + "/")
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text().replace("\\\n", " ")
    for key, value in env.items():
        text = text.replace(f"${key}", value)
    return [shlex.split(line) for line in text.splitlines() if line.startswith("raylam ")]


def test_kuberay_rayjob():
    from ray.runtime_env import RuntimeEnv

    from raylam.cli import build_parser

    doc = _load("kuberay/rayjob.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    spec = doc["spec"]
    # the operator submits the job itself; no shell string whose first part alone reaches the cluster
    assert spec["submissionMode"] == "HTTPMode"
    assert "&&" not in spec["entrypoint"] and ";" not in spec["entrypoint"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0
    assert spec["backoffLimit"] >= 0
    RuntimeEnv(**yaml.safe_load(spec["runtimeEnvYAML"]))
    _check_raycluster_spec(spec["rayClusterSpec"])
    # every raylam command of the script parses, and names a config that exists
    commands = _job_commands(spec)
    assert [c[1] for c in commands] == ["collect", "train", "evaluate"]
    for argv in commands:
        args = build_parser().parse_args(argv[1:])
        assert (REPO / args.config).exists(), args.config
        assert all("=" in o for o in args.overrides)


def test_kuberay_overrides_resolve():
    """The job script's dotted overrides are valid raylam config keys and values, every path a URI."""
    from raylam.experiment import load_experiment

    spec = _load("kuberay/rayjob.yaml")["spec"]
    for argv in _job_commands(spec):
        cfg = load_experiment(str(REPO / argv[3]), argv[4:])
        if argv[1] == "collect":
            assert cfg.collect.output.startswith("s3://") and cfg.collect.num_workers >= 1
        else:
            assert cfg.train.dataset.startswith("s3://") and cfg.train.storage_path.startswith("s3://")
        if argv[1] == "train":
            assert cfg.train.use_gpu and cfg.train.num_workers == 8
        if argv[1] == "evaluate":
            assert cfg.evaluate.output.startswith("s3://") and cfg.evaluate.probe.use_gpu


# --- runtime env --------------------------------------------------------------------------

def test_runtime_env_is_valid_for_ray():
    from ray.runtime_env import RuntimeEnv

    raw = _load("runtime_env.yaml")
    env = RuntimeEnv(**raw)
    assert env["working_dir"] == "."
    assert "pip" not in raw  # nodes have the dependencies; `-e .` cannot work in a runtime env
    for excluded in ("/.venv/", "/data/", "/runs/"):
        assert excluded in raw["excludes"]
    # every node picks its own renderer (EGL with a GPU, OSMesa without)
    assert "MUJOCO_GL" not in raw.get("env_vars", {})
    assert all(isinstance(v, str) for v in raw["env_vars"].values())
