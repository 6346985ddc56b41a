"""Tune sweeps: config checks (no Ray), and one small ASHA sweep on synthetic data that is
interrupted (every trial fails once) and resumed, then exported (CSV, Parquet, plot, best.yaml)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from raylam.config import ConfigError, from_dict, to_dict
from raylam.data.synthetic import write_synthetic_dataset
from raylam.experiment import ExperimentConfig, load_experiment
from raylam.models.config import ModelConfig
from raylam.tune import TuneConfig, load_sweep, run_tune
from raylam.tune.sweep import plan_sweep, trial_train_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "data"
    write_synthetic_dataset(str(out), episodes=6, episode_length=40, image_size=32, clip_length=24, overlap=12,
                            num_labeled=2, heldout_episodes=1)
    return str(out)


def experiment(dataset: str, storage: Path, **train) -> ExperimentConfig:
    base = {
        "dataset": dataset, "storage_path": str(storage), "model": to_dict(ModelConfig.small("laom_sup")),
        "steps": 6, "batch_size": 16, "labeled_batch_size": 8, "report_every": 2, "checkpoint_every": 2,
        "eval_every": 2, "eval_windows": 32, "keep_checkpoints": 10, "cpus_per_worker": 0.5,
        "data": {"clips_per_task": 2, "read_cpus": 0.25},
    }
    base.update(train)
    return from_dict(ExperimentConfig, {
        "name": "tunetest", "train": base,
        "stages": [{"run_name": "laom_sup", "stage": "lam", "model": {"method": "laom_sup"}},
                   {"run_name": "labels", "stage": "relabel", "lam_run": "laom_sup"}],
    })


def tune_config(**changes) -> TuneConfig:
    data = {
        "base_stage": "laom_sup",
        "space": {"model.sup_coef": {"loguniform": [1e-3, 1.0]}, "model.latent_dim": {"grid": [8, 32]},
                  "num_labeled": {"choice": [1, 2]}},
        "num_samples": 2,
        "scheduler": {"grace_period": 2, "max_t": 4, "reduction_factor": 2},
        "resources": {"cpus_per_worker": 0.5, "read_cpus": 0.25},
        "max_failures": 0,
    }
    data.update(changes)
    return from_dict(TuneConfig, data, prefix="tune")


# ------------------------------------------------------------------ config checks (no Ray)
def test_config_errors_name_the_key(synthetic, tmp_path):
    exp = experiment(synthetic, tmp_path)
    plan = plan_sweep(exp, tune_config())
    assert plan.base_stage == "laom_sup" and plan.max_t == 4 and plan.grace_period == 2
    assert plan.sweep_dir == f"{tmp_path}/tunetest/tune-laom_sup"
    assert plan.cpu_per_trial == pytest.approx(0.76)  # 0.5 worker + 0.25 data + 0.01 driver
    cases = [
        ({"space": {"model.sup_coef": {"loguniform": [0.0, 1.0]}}}, "space.model.sup_coef.loguniform"),
        ({"space": {"model.sup_coef": {"normal": [0, 1]}}}, "space.model.sup_coef"),
        ({"space": {"model.latent_dim": {"choice": []}}}, "non-empty list"),
        ({"resources": {"num_workers": 2, "gpus_per_worker": 0.5}}, "fractional GPUs only with num_workers 1"),
        ({"scheduler": {"grace_period": 8, "max_t": 4}}, "grace_period"),
    ]
    for changes, match in cases:
        with pytest.raises(ConfigError, match=match):
            tune_config(**changes)
    plan_cases = [
        (tune_config(space={"model.sup_kef": {"grid": [0.1]}}), "not a TrainConfig key"),
        (tune_config(space={"model.latent_dim": {"grid": [0, 8]}}), r"model\.latent_dim\.grid: value 0"),
        (tune_config(space={"num_labeled": {"grid": [2, 5]}}), "num_labeled: got 5"),
        (tune_config(base_stage="nope"), "expected one of"),
        (tune_config(base_stage="labels"), "relabel stage"),
        (tune_config(scheduler={"max_t": 60}), "max_t"),
        (tune_config(metric="heldout/sup/action/mse", fixed={"model.method": "laom"}), "laom_sup"),
        (tune_config(metric="heldout/probe/action/mae"), "never reports; it reports .*heldout/probe/action/mse"),
        (tune_config(metric="laom/sup_los"), "never reports; it reports .*laom/sup_loss"),
    ]
    for cfg, match in plan_cases:
        with pytest.raises(ConfigError, match=match):
            plan_sweep(exp, cfg)
    with pytest.raises(ConfigError, match="set eval_every"):
        plan_sweep(experiment(synthetic, tmp_path, eval_every=0), tune_config())


def test_shipped_sweep_configs_load():
    for name in ("tune_quickstart.yaml", "tune_supervision.yaml"):
        exp, cfg = load_sweep(ROOT / "configs" / name, ["tune.num_samples=3"])
        assert cfg.num_samples == 3
        plan = plan_sweep(exp, cfg)
        assert plan.base_stage == "laom_sup" and plan.base["model"]["method"] == "laom_sup"
    exp, cfg = load_sweep(ROOT / "configs" / "tune_supervision.yaml")
    plan = plan_sweep(exp, cfg)
    assert plan.base["use_gpu"] and plan.gpu_per_trial == 1.0 and cfg.scheduler.enabled


def test_tune_on_a_label_budget_sweep_says_which_budget_it_trains_at():
    from raylam.tune.sweep import budget_note

    exp, cfg = load_sweep(ROOT / "configs" / "budgets_quickstart.yaml",
                          ["tune.base_stage=laom_sup", "tune.space={model.sup_coef: {grid: [0.1, 1.0]}}",
                           "tune.fixed={eval_every: 100}"])
    plan = plan_sweep(exp, cfg)
    assert plan.base["num_labeled"] == exp.label_budgets[0]  # the first budget, as each trial trains
    note = budget_note(exp, cfg, plan)
    assert note is not None and f"num_labeled {exp.label_budgets[0]}" in note and "raylam pipeline" in note
    searched = from_dict(TuneConfig, {**to_dict(cfg), "space": {"num_labeled": {"grid": [1, 2]}}}, prefix="tune")
    assert budget_note(exp, searched, plan_sweep(exp, searched)) is None  # the budget is Tune's to vary
    plain_exp, plain_cfg = load_sweep(ROOT / "configs" / "tune_quickstart.yaml")
    assert budget_note(plain_exp, plain_cfg, plan_sweep(plain_exp, plain_cfg)) is None


def test_concurrency_comes_from_the_sweep_and_the_clusters_maximum(synthetic, tmp_path):
    from raylam.tune.sweep import max_concurrent, trial_count

    exp = experiment(synthetic, tmp_path)
    cfg = tune_config(cluster_cpus=100.0)  # an autoscaling cluster's largest size, whatever is up now
    plan = plan_sweep(exp, cfg)
    assert trial_count(cfg) == 4  # 2 samples x the 2-point latent_dim grid
    assert max_concurrent(plan, cfg) == 4  # every trial: the cluster grows to them
    small = tune_config(cluster_cpus=1.6)  # 0.76 CPU per trial: two fit
    assert max_concurrent(plan_sweep(exp, small), small) == 2
    gpu = tune_config(cluster_cpus=100.0, cluster_gpus=3.0, resources={"use_gpu": True, "cpus_per_worker": 0.5})
    assert max_concurrent(plan_sweep(exp, gpu), gpu) == 3  # three 1-GPU trials at the largest size
    fixed = tune_config(max_concurrent_trials=1, cluster_cpus=100.0)
    assert max_concurrent(plan_sweep(exp, fixed), fixed) == 1


def test_data_cpus_are_the_trials_ray_data_limit(synthetic, tmp_path):
    from raylam.train.config import TrainConfig
    from raylam.train.trainer import data_config

    exp = experiment(synthetic, tmp_path)
    plan = plan_sweep(exp, tune_config(resources={"cpus_per_worker": 0.5, "read_cpus": 0.25, "data_cpus": 1.5}))
    assert plan.base["data"]["max_cpus"] == 1.5 and plan.cpu_per_trial == pytest.approx(2.01)
    options = data_config(from_dict(TrainConfig, plan.base))._resolve_execution_options("train")
    assert options.resource_limits.cpu == 1.5  # what Ray Data's executor of the trial's datasets obeys
    default = plan_sweep(exp, tune_config())  # data_cpus null: the decode tasks' read_cpus
    assert default.base["data"]["max_cpus"] == 0.25
    plain = data_config(from_dict(TrainConfig, {**plan.base, "data": {**plan.base["data"], "max_cpus": None}}))
    assert plain._resolve_execution_options("train").resource_limits.cpu == float("inf")  # no limit


def test_trial_drivers_are_pinned_to_the_head_when_the_cluster_declares_it():
    from raylam.tune.sweep import driver_resources

    cfg = tune_config()
    # the head advertises CPU 0 (cluster/): a pinned driver asks for the head resource alone
    assert driver_resources(cfg, {"CPU": 8.0, "head": 1000.0}) == {"CPU": 0.0, "head": 0.001}
    assert driver_resources(cfg, {"CPU": 2.0}) == {"CPU": 0.01}  # local Ray: no head resource, not pinned
    assert driver_resources(tune_config(resources={"pin_drivers": None}), {"CPU": 8.0, "head": 1.0}) == {"CPU": 0.01}


# ------------------------------------------------------------------ the sweep
@pytest.fixture(scope="module")
def sweep(ray_local, synthetic, tmp_path_factory):
    """2 trials (the latent_dim grid), run at the same time; every trial's Train run fails at step 3
    with no retries (the sweep is "interrupted"), then ``resume=True`` continues it. (Each Ray Train
    run costs ~30 s of start-up on the CI machine: the >= 4-trial quickstart sweep is run by hand.)"""
    storage = tmp_path_factory.mktemp("sweeps")
    exp = experiment(synthetic, storage)
    # the trials' own budget ends at max_t (4 of the stage's 6 steps): whether ASHA's stop at the grace
    # rung reaches a trial before its step 4 or not, nothing runs past max_t
    cfg = tune_config(fixed={"fail_at_step": 3, "max_failures": 0}, num_samples=1)
    first = run_tune(exp, cfg)
    with pytest.raises(ConfigError, match="pass --resume"):
        run_tune(exp, cfg)
    second = run_tune(exp, cfg, resume=True)
    return exp, cfg, first, second


def test_interrupted_sweep_resumes_from_train_checkpoints(sweep):
    _, _, first, second = sweep
    assert first.num_trials == 2 and first.completed == 0 and first.errored >= 1
    assert first.errored + first.stopped_early == 2
    assert not first.resumed and second.resumed
    assert second.num_trials == 2 and second.errored == 0
    assert second.completed + second.stopped_early == 2 and second.completed >= 1
    table = second.table.set_index("trial_id")
    run_root = Path(second.sweep_dir) / "runs"
    for trial_id, row in table.iterrows():
        steps = [json.loads((p / "meta.json").read_text())["step"]
                 for p in sorted((run_root / f"trial-{trial_id}").glob("train-*/checkpoint_*")) if p.is_dir()]
        if row["status"] == "completed":
            # failed at step 3 in the first sweep, resumed from the step-2 checkpoint: 2, then 4
            # (a restart from scratch would have failed at step 3 again)
            assert row["step"] == 4 and steps == [2, 4], (trial_id, steps)
        else:
            assert row["status"] == "stopped" and row["step"] == 2 and steps == [2]


def test_every_trial_ends_by_max_t(sweep):
    # the stage is set for 6 steps; a trial's budget is ASHA's max_t (4), so no trial reports or
    # checkpoints past it, whenever the scheduler's decisions arrive
    _, cfg, _, second = sweep
    assert cfg.scheduler.enabled and set(second.table["step"]) <= {2, 4}
    assert (second.table[cfg.metric] > 0).all()
    for run in (Path(second.sweep_dir) / "runs").iterdir():
        steps = [json.loads(p.read_text())["step"] for p in run.glob("train-*/checkpoint_*/meta.json")]
        assert steps and max(steps) <= 4, (run.name, steps)


def test_a_trial_budget_ends_at_max_t(synthetic, tmp_path):
    plan = plan_sweep(experiment(synthetic, tmp_path), tune_config())
    assert plan.steps == 6 and plan.max_t == 4
    trial = trial_train_config(plan.base, {"model.latent_dim": 8}, plan.sweep_dir, "t1", plan.max_t)
    assert trial.steps == 4 and trial.model.latent_dim == 8 and trial.run_name == "trial-t1"
    searched = trial_train_config(plan.base, {"steps": 2}, plan.sweep_dir, "t2", plan.max_t)
    assert searched.steps == 2  # a searched budget below max_t stays


def test_exports_and_best_yaml(sweep, tmp_path):
    exp, cfg, _, second = sweep
    files = {k: Path(v) for k, v in second.files.items()}
    assert set(files) == {"csv", "parquet", "plot", "best"}
    csv, parquet = pd.read_csv(files["csv"]), pd.read_parquet(files["parquet"])
    assert len(csv) == len(parquet) == 2
    assert {"trial_id", "status", "model.sup_coef", "model.latent_dim", "num_labeled", cfg.metric} <= set(csv)
    assert files["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((Path(second.sweep_dir) / "summary.json").read_text())
    assert summary["best_trial"] == second.best_trial
    best_row = csv.set_index("trial_id").loc[second.best_trial]
    assert best_row[cfg.metric] == pytest.approx(csv[cfg.metric].min())
    # Tune's own loggers stay on
    trial_dir = Path(second.sweep_dir) / f"trial-{second.best_trial}"
    assert (trial_dir / "progress.csv").exists() and (trial_dir / "result.json").exists()

    loaded = load_experiment(files["best"])
    stage = loaded.stage(loaded.stage_index("laom_sup"))
    assert stage.model.sup_coef == pytest.approx(second.best_config["model.sup_coef"])
    assert stage.model.latent_dim == second.best_config["model.latent_dim"] == best_row["model.latent_dim"]
    assert stage.num_labeled == second.best_config["num_labeled"]
    assert stage.fail_at_step is None and stage.steps == exp.stage(0).steps  # tune.fixed stays out
    assert [s["run_name"] for s in loaded.stages] == ["laom_sup", "labels"]


PINNED_TRIAL = """
import json, sys
import ray
from ray import tune
from raylam.config import from_dict
from raylam.tune.config import TuneConfig
from raylam.tune.sweep import driver_resources

# a head that advertises no CPUs and the head resource, as cluster/ declares it, plus a CPU worker
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "resources": {"head": 1000}})
cluster.add_node(num_cpus=1)
ray.init(address=cluster.address)
head_node = [n["NodeID"] for n in ray.nodes() if n["Resources"].get("head")][0]

def trial(config):
    context = ray.get_runtime_context()
    tune.report({"on_head": context.get_node_id() == config["head"],
                 "head": context.get_assigned_resources().get("head", 0.0)})

resources = driver_resources(from_dict(TuneConfig, {}), ray.cluster_resources())
grid = tune.Tuner(tune.with_resources(trial, resources), param_space={"head": head_node},
                  run_config=tune.RunConfig(storage_path=sys.argv[1], name="pinned")).fit()
print("RESULT", json.dumps({"requested": resources, "on_head": grid[0].metrics["on_head"],
                            "head": grid[0].metrics["head"]}))
ray.shutdown()
cluster.shutdown()
"""


@pytest.mark.slow
def test_a_pinned_trial_driver_runs_on_the_head(tmp_path):
    """A real two-node Ray (a CPU-0 head with the head resource, one CPU worker): Tune accepts the
    pinned driver's resources and runs the trial's driver on the head."""
    import os
    import subprocess
    import sys

    script = tmp_path / "pinned.py"
    script.write_text(PINNED_TRIAL)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "sweeps")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")][-1]
    result = json.loads(line.removeprefix("RESULT "))
    assert result == {"requested": {"CPU": 0.0, "head": 0.001}, "on_head": True, "head": 0.001}
