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
                 for p in sorted((run_root / f"trial-{trial_id}").glob("checkpoint_*")) if p.is_dir()]
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
        steps = [json.loads(p.read_text())["step"] for p in run.glob("checkpoint_*/meta.json")]
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
