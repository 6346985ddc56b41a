"""Rules that keep a cluster job from silently doing the wrong thing: the multi-node decision on
a Ray raylam started itself, GPUs that torch cannot use, fractional GPUs under DDP, and exports
written to object storage (the moto S3 server) rather than to a local folder named ``s3:``."""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs
import pytest
import torch

from raylam.cli import main
from raylam.config import ConfigError
from raylam.experiment import load_experiment

ROOT = Path(__file__).resolve().parents[1]


def test_a_ray_started_here_with_one_node_is_single_node(ray_local):
    from raylam.cluster import check_paths, is_multi_node, started_here

    assert started_here() and not is_multi_node()
    check_paths({"train.storage_path": "runs"}, shared_filesystem=False)  # local paths are fine here


def test_fractional_gpus_with_several_ddp_workers_are_refused():
    with pytest.raises(ConfigError, match=r"gpus_per_worker: got 0.5 with num_workers=2, expected a whole number"):
        load_experiment(str(ROOT / "configs" / "laom_sup.yaml"), ["train.num_workers=2", "train.gpus_per_worker=0.5"])
    # one worker may share a GPU with other runs; whole GPUs per rank are fine
    load_experiment(str(ROOT / "configs" / "laom_sup.yaml"), ["train.num_workers=1", "train.gpus_per_worker=0.5"])
    load_experiment(str(ROOT / "configs" / "laom_sup.yaml"), ["train.num_workers=2", "train.gpus_per_worker=2"])


def test_fractional_gpus_refused_on_the_command_line_in_one_line(capsys):
    code = main(["train", "--config", str(ROOT / "configs" / "laom_sup.yaml"), "train.num_workers=2",
                 "train.gpus_per_worker=0.25"])
    err = capsys.readouterr().err
    assert code == 2 and "gpus_per_worker" in err and "Traceback" not in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="torch sees a GPU here")
def test_work_holding_a_gpu_refuses_to_run_without_cuda():
    from raylam.cluster import NoCudaError, cuda_device
    from raylam.train.relabel import Labeler

    with pytest.raises(NoCudaError, match="relabel actor holds a Ray GPU, but torch .* sees no CUDA device"):
        cuda_device("relabel actor")
    with pytest.raises(NoCudaError, match="relabel actor"):  # before loading any model
        Labeler("no/such/run", use_gpu=True)


def test_export_writes_to_an_s3_uri(s3_server, tmp_path, monkeypatch, capsys):
    from test_export import frames, save_run

    import raylam
    from raylam.models import ModelConfig

    cfg = ModelConfig.small("laom_sup", latent_dim=16)
    run, lam = save_run(tmp_path / "lam", cfg, "lam", 2)
    uri = f"{s3_server()}/exports/lam"
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["export", run, "-o", uri]) == 0
    assert f"to {uri}" in capsys.readouterr().out
    assert list(work.iterdir()) == []  # no local folder named "s3:"
    fs, root = pafs.FileSystem.from_uri(uri)
    names = sorted(info.base_name for info in fs.get_file_info(pafs.FileSelector(root)))
    assert names == ["config.json", "model.safetensors"]
    local = tmp_path / "downloaded"
    local.mkdir()
    pafs.copy_files(root, str(local), source_filesystem=fs)
    loaded = raylam.load(str(local))
    obs, nxt = frames(2, cfg, 4), frames(2, cfg, 5)
    torch.testing.assert_close(loaded.latent_action(obs, nxt), lam.latent_action(obs, nxt))


def test_auto_rendering_falls_back_to_osmesa_where_egl_cannot_open(tmp_path):
    """MUJOCO_GL=egl (as the GPU node types set it) in a process whose EGL finds no vendor library:
    `auto` renders with OSMesa after one warning that says why; an explicit `egl` is left alone."""
    import json
    import subprocess
    import sys

    code = ("import json, warnings\nfrom raylam.envs.render import configure_rendering\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n    backend = configure_rendering('auto')\n"
            "from raylam.envs import EnvConfig, make_env\n"
            "with make_env(EnvConfig(task='cheetah-run', preset='vanilla', image_size=32), seed=0) as env:\n"
            "    frame = env.reset().frame\n"
            "print(json.dumps({'backend': backend, 'warnings': [str(w.message) for w in caught], "
            "'shape': list(frame.shape)}))")
    env = {**__import__("os").environ, "MUJOCO_GL": "egl", "__EGL_VENDOR_LIBRARY_DIRS": str(tmp_path / "none")}
    env.pop("RAYLAM_EGL_CHECKED", None)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["backend"] == "osmesa" and out["shape"] == [32, 32, 3], out
    (message,) = out["warnings"]
    assert "cannot open an EGL context" in message and "NVIDIA_DRIVER_CAPABILITIES" in message, message
    explicit = subprocess.run([sys.executable, "-c", "from raylam.envs.render import configure_rendering as c; "
                               "print(c('egl'))"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert explicit.stdout.strip() == "egl", explicit.stderr


def test_a_local_ray_start_that_times_out_is_tried_once_more(monkeypatch, capsys):
    """Ray 2.60 gives a new raylet a fixed 30 s to register; a busy machine misses it (seen here
    with two training jobs beside the suite). The first try's processes (here a stand-in child
    that the failed try leaves behind) are killed and the start is tried again; a failure that is
    not that timeout, or one while joining a cluster, is not retried."""
    import subprocess
    import sys

    import ray

    from raylam import cluster

    tries, children = [], []

    def init(**kwargs):
        tries.append(kwargs)
        if len(tries) == 1:
            children.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]))
            raise Exception("The current node timed out during startup. This could happen because ...")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cluster.connect(runtime_env={"env_vars": {"A": "1"}})
    assert len(tries) == 2 and tries[1] == {"runtime_env": {"env_vars": {"A": "1"}}}
    assert children[0].wait(timeout=60) is not None  # the half-started process was killed
    assert "timed out" in capsys.readouterr().err

    tries.clear()
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    with pytest.raises(Exception, match="timed out during startup"):
        cluster.connect()
    assert len(tries) == 1


def test_a_local_ray_that_never_starts_is_one_line(monkeypatch, capsys, tmp_path):
    """Three timed-out starts in a row: every try's processes are killed and the command ends with
    one line and exit 1 (the machine, not the input, is at fault), not Ray's traceback."""
    import subprocess
    import sys

    import ray

    tries, children = [], []

    def init(**kwargs):
        tries.append(kwargs)
        children.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]))
        raise Exception("The current node timed out during startup. This could happen because ...")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(["collect", "--config", str(ROOT / "configs" / "quickstart.yaml"), f"collect.output={tmp_path / 'data'}"]) == 1
    assert len(tries) == 3
    assert all(child.wait(timeout=60) is not None for child in children)
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("raylam collect: Ray's local start timed out 3 times (Ray 2.60 gives a new raylet a fixed 30 s "
                       "to register): this machine is too busy now; run again when it is quieter")
    assert not any("Traceback" in line for line in err)
