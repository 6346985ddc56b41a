"""GPU acceptance: the figures to take first whenever a GPU machine is available (one command,
at most 8 minutes on one H100), for README.md.

Prints, and writes as JSON (``--out``):
  (1) collection frames/s of one process (expert act + env step + render, 64x64, the paper's
      distracting preset), MuJoCo through EGL vs OSMesa;
  (2) the paper's LAOM+sup stage (configs/laom_sup.yaml, stage laom_sup: paper model, batch 512 +
      128 labeled, bf16) through ``raylam train`` on one GPU, its data cached (decoded once) and
      streamed (``train.data.cache_bytes=0``), against the same loop and model on a store already
      resident on the GPU (no Ray): samples/s of the last report window (goal >= 7,200, twice the
      released loop's ~3,600);
  (3) relabeling (the chain's laom_sup_labels stage, ``raylam train`` again: the LAM is already
      done and skipped): GPU utilisation sampled by nvidia-smi while it runs;
  (4) a one-GPU NCCL DDP smoke run: a 1-worker TorchTrainer with the NCCL backend, all_reduce and
      one DDP step.
The data is synthetic (written here, 64x64), so nothing has to be collected first. Without a CUDA
GPU the GPU parts print SKIP and the rest runs small (OSMesa frames/s, the commands' configs
resolve and validate): ``tests/test_gpu_acceptance.py`` runs that.

    python benchmarks/gpu_acceptance.py --out gpu_acceptance.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "laom_sup.yaml")
GOAL_SAMPLES_PER_S = 7200


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def say(text: str) -> None:
    print(text, flush=True)


# --- (1) rendering ------------------------------------------------------------------------

def render_rate(backend: str, steps: int) -> float | str:
    """frames/s with MUJOCO_GL=backend, measured in a fresh process (MuJoCo reads it at import);
    an error line when that backend cannot render here."""
    code = ("import json, sys; sys.path.insert(0, 'benchmarks'); from collect import env_frames_per_s; "
            f"print(json.dumps(env_frames_per_s('cheetah-run', 'scale_easy_video_hard', {steps}, 64)))")
    env = {**os.environ, "MUJOCO_GL": backend, "PYOPENGL_PLATFORM": backend}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    if proc.returncode != 0:
        return f"failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}"
    return float(proc.stdout.strip().splitlines()[-1])


def measure_rendering(args, results: dict, work: str) -> None:
    steps = args.render_steps
    for backend in ("egl", "osmesa"):
        if backend == "egl" and not args.gpu:
            say("(1) EGL collection frames/s: SKIP (no CUDA GPU)")
            continue
        rate = render_rate(backend, steps)
        results[f"{backend}_frames_per_s"] = rate
        say(f"(1) {backend.upper()} collection frames/s (act + step + render, 64x64, scale_easy_video_hard): "
            + (f"{rate:,.0f}" if isinstance(rate, float) else rate))
    if isinstance(results.get("egl_frames_per_s"), float) and isinstance(results.get("osmesa_frames_per_s"), float):
        results["egl_over_osmesa"] = results["egl_frames_per_s"] / results["osmesa_frames_per_s"]
        say(f"    EGL / OSMesa: {results['egl_over_osmesa']:.1f}x")


# --- (2) and (3): `raylam train` -----------------------------------------------------------

def train_overrides(args, dataset: str, storage: str, mode: str) -> list[str]:
    """The paper config on the synthetic data, ``args.steps`` steps, on one GPU."""
    cache = {"cached": str(64 << 30), "streamed": "0"}[mode]
    return [f"train.dataset={dataset}", f"train.storage_path={storage}", f"train.steps={args.steps}",
            f"train.report_every={args.steps // 4}", f"train.checkpoint_every={args.steps}",
            "train.num_workers=1", "train.use_gpu=true", "train.precision=bf16", f"train.data.cache_bytes={cache}",
            "train.cpus_per_worker=4", "train.wandb.enabled=false", "concurrent_stages=1"]


def check_commands(args, dataset: str, storage: str) -> list[list[str]]:
    """The `raylam train` command lines of (2) and (3), their configs resolved and validated (what a
    CPU machine can check)."""
    from raylam.checks import check_experiment
    from raylam.data.pipeline import DatasetInfo, WindowSpec
    from raylam.experiment import load_experiment

    commands = []
    for mode in ("cached", "streamed"):
        overrides = train_overrides(args, dataset, f"{storage}/{mode}", mode)
        exp = load_experiment(CONFIG, overrides)
        stage = exp.stage(exp.stage_index("laom_sup"))
        assert stage.precision == "bf16" and stage.use_gpu and stage.batch_size == 512, stage
        check_experiment(exp, "train")
        DatasetInfo(dataset).check_windows(WindowSpec(frame_stack=stage.model.frame_stack,
                                                      max_offset=stage.model.max_offset))
        commands.append(["train", "--config", CONFIG, "--stage", "laom_sup", *overrides])
    overrides = train_overrides(args, dataset, f"{storage}/cached", "cached")
    commands.append(["train", "--config", CONFIG, "--stage", "laom_sup", "--stage", "laom_sup_labels", *overrides])
    return commands


def raylam_train(argv: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "raylam.cli", *argv], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"raylam {' '.join(argv[:5])} ... failed:\n{proc.stderr[-3000:]}")


def gpu_utilisation_while(work) -> dict:
    """Run ``work()`` while nvidia-smi samples the GPU's utilisation every 0.5 s."""
    samples: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip():
                samples.append(float(out.stdout.split()[0]))
            done.wait(0.5)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    try:
        work()
    finally:
        done.set()
        thread.join()
    busy = [s for s in samples if s > 0]
    return {"wall_s": time.perf_counter() - start, "mean_util": sum(samples) / max(len(samples), 1),
            "mean_util_while_busy": sum(busy) / max(len(busy), 1), "max_util": max(samples, default=0.0),
            "samples": len(samples)}


def resident_rate(args, dataset: str) -> float:
    """The same loop and model with every clip already on the GPU: no Ray, no data path."""
    import torch

    from raylam.data.clips import read_clips_local
    from raylam.data.pipeline import DatasetInfo, WindowSpec
    from raylam.experiment import load_experiment
    from raylam.train.loop import fit, hash_seed, setup_model
    from raylam.train.sampling import ClipStore, EpochSampler, LabeledSampler

    exp = load_experiment(CONFIG, train_overrides(args, dataset, "unused", "cached"))
    cfg = exp.stage(exp.stage_index("laom_sup"))
    info = DatasetInfo(dataset)
    device = torch.device("cuda")
    spec = WindowSpec(frame_stack=cfg.model.frame_stack, max_offset=cfg.model.max_offset, num_labeled=cfg.num_labeled)
    store = ClipStore.from_batches(read_clips_local(info, spec), device=device)
    labeled = ClipStore.from_batches(read_clips_local(info, spec, labeled_only=True), device=device)
    stack, offset = cfg.model.frame_stack, cfg.model.max_offset

    class Data:
        current_epoch = 0
        train = iter(EpochSampler(store, cfg.batch_size, stack, offset, seed=(0, 0, 2)))
        lab = iter(LabeledSampler(labeled, cfg.labeled_batch_size, stack, offset, seed=(0, 0, 3)))

        def next(self):
            return next(self.train), next(self.lab)

    dims = {"action_dim": info.manifest["action_dim"], "state_dim": info.manifest["state_dim"]}
    model, optimizer, scheduler = setup_model(cfg, dims, device)
    torch.manual_seed(hash_seed(0, 0, 1))
    reports: list[float] = []
    fit(model, model, optimizer, scheduler, Data(), cfg, device, 1, 0,
        lambda values, step: reports.append(values["samples_per_s"]))
    return reports[-1]


def measure_training(args, results: dict, work: str) -> None:
    from raylam.data.storage import resolve
    from raylam.data.synthetic import write_synthetic_dataset

    dataset, storage = f"{work}/data", f"{work}/runs"
    if args.gpu:
        write_synthetic_dataset(dataset, episodes=args.episodes, episode_length=args.episode_length, image_size=64,
                                action_dim=6, num_labeled=128, clip_length=64, overlap=12, episodes_per_shard=4)
    else:  # the configs only: they validate against a small dataset of the same layout
        write_synthetic_dataset(dataset, episodes=130, episode_length=24, image_size=64, action_dim=6,
                                num_labeled=128, clip_length=16, overlap=12, episodes_per_shard=26)
    cached, streamed, labels = check_commands(args, dataset, storage)
    say("(2) paper LAOM+sup commands resolve and validate: " + " | ".join(
        " ".join(c[4:5] + ["..."] + [o for o in c if "cache_bytes" in o]) for c in (cached, streamed)))
    if not args.gpu:
        say("(2) paper LAOM+sup through `raylam train`, bf16, cached / streamed / resident: SKIP (no CUDA GPU)")
        say("(3) relabel GPU utilisation: SKIP (no CUDA GPU)")
        return
    rates = {}
    for mode, argv in (("cached", cached), ("streamed", streamed)):
        raylam_train(argv)
        artifact = resolve(f"{storage}/{mode}/laom_sup/laom_sup").read_json("artifact.json")
        rates[mode] = artifact["metrics"]["samples_per_s"]
    rates["resident"] = resident_rate(args, dataset)
    for mode, rate in rates.items():
        results[f"{mode}_samples_per_s"] = rate
        verdict = "" if mode == "resident" else \
            f" ({rate / rates['resident']:.2f} of resident; goal {GOAL_SAMPLES_PER_S:,}: " \
            f"{'met' if rate >= GOAL_SAMPLES_PER_S else 'NOT met'})"
        say(f"(2) paper LAOM+sup bf16 {mode}: {rate:,.0f} samples/s{verdict}")
    util = gpu_utilisation_while(lambda: raylam_train(labels))
    results["relabel"] = util
    say(f"(3) relabel GPU utilisation: mean {util['mean_util']:.0f}% ({util['mean_util_while_busy']:.0f}% while "
        f"busy, max {util['max_util']:.0f}%) over {util['wall_s']:.0f} s")


# --- (4) NCCL -------------------------------------------------------------------------------

def nccl_loop(config: dict) -> None:
    import ray.train
    import torch
    import torch.distributed as dist

    device = ray.train.torch.get_device()
    value = torch.ones(4, device=device)
    dist.all_reduce(value)
    # DistributedDataParallel itself (Ray's prepare_model skips the wrapper for a group of one)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(8, 2).to(device), device_ids=[device.index])
    loss = model(torch.randn(16, 8, device=device)).square().mean()
    loss.backward()  # the gradient all-reduce runs through NCCL
    ray.train.report({"all_reduce": float(value.sum()), "loss": float(loss), "backend": dist.get_backend()})


def measure_nccl(args, results: dict, work: str) -> None:
    if not args.gpu:
        say("(4) one-GPU NCCL DDP smoke run: SKIP (no CUDA GPU)")
        return
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if not ray.is_initialized():
        ray.init(log_to_driver=False)

    start = time.perf_counter()
    result = TorchTrainer(nccl_loop, scaling_config=ScalingConfig(num_workers=1, use_gpu=True),
                          torch_config=TorchConfig(backend="nccl"),
                          run_config=RunConfig(name="nccl_smoke", storage_path=f"{work}/nccl")).fit()
    metrics = result.metrics
    ok = metrics.get("backend") == "nccl" and metrics.get("all_reduce") == 4.0
    results["nccl"] = {**metrics, "ok": ok, "wall_s": time.perf_counter() - start}
    say(f"(4) one-GPU NCCL DDP smoke run: {'ok' if ok else 'FAILED'} ({metrics})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="write the figures here as JSON")
    parser.add_argument("--steps", type=int, default=400, help="training steps per mode (a multiple of 4)")
    parser.add_argument("--episodes", type=int, default=256, help="synthetic episodes (128 of them labeled)")
    parser.add_argument("--episode-length", type=int, default=250)
    parser.add_argument("--render-steps", type=int, default=500)
    parser.add_argument("--work", help="folder for the data and runs (default: a temporary one)")
    args = parser.parse_args(argv)
    args.gpu = has_cuda()
    say(f"GPU acceptance on {'CUDA: ' + __import__('torch').cuda.get_device_name(0) if args.gpu else 'no CUDA GPU'}")
    start = time.perf_counter()
    results: dict = {"gpu": args.gpu}
    with tempfile.TemporaryDirectory(prefix="raylam-gpu-") as tmp:
        work = args.work or tmp
        for part in (measure_rendering, measure_training, measure_nccl):
            part(args, results, work)
            results["wall_s"] = time.perf_counter() - start
            if args.out:  # after every part: a later failure keeps the figures taken so far
                Path(args.out).write_text(json.dumps(results, indent=2, default=str))
    say(f"done in {results['wall_s'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
