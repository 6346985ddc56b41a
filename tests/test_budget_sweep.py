"""Label-budget sweeps in `raylam pipeline`: the stages that read labels (and those reading them)
run once per budget, the label-free ones once and shared; one evaluation per budget, one merged
report. Config checks and the run layout need no Ray; one tiny end-to-end run on synthetic data."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from raylam.cli import main
from raylam.config import ConfigError, from_dict, to_dict
from raylam.data.synthetic import write_synthetic_dataset
from raylam.eval.evaluate import run_path
from raylam.experiment import ExperimentConfig, load_experiment
from raylam.pipeline import job_inputs, stage_jobs

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
BUDGETS_QUICKSTART = str(ROOT / "configs" / "budgets_quickstart.yaml")
LABEL_FREE = {"laom", "laom_labels", "laom_bc", "lapo", "lapo_labels", "lapo_bc"}


def fails_with(capsys, argv: list[str], message: str) -> None:
    """``raylam ARGV`` exits 2 with one line on stderr that contains ``message``."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert message in err, err


def test_bad_budgets_fail_at_load_naming_the_key(capsys, tmp_path):
    where = [f"train.storage_path={tmp_path}/runs", "collect.num_labeled=2"]
    fails_with(capsys, ["pipeline", "--config", QUICKSTART, "label_budgets=[1,4]", *where],
               "label_budgets: got 4, but dataset data/quickstart has 2 labeled episodes (collect.num_labeled)")
    for budgets, message in [("[1,1]", "label_budgets: got [1, 1], expected each budget once"),
                             ("[]", "label_budgets: got [], expected at least one budget"),
                             ("[0]", "label_budgets: got 0, expected a value >= 1"),
                             ("[a]", "label_budgets: got ['a'] (list)")]:
        fails_with(capsys, ["train", "--config", QUICKSTART, f"label_budgets={budgets}", *where], message)
    label_free = ["stages=[{run_name: laom, stage: lam, model: {method: laom}}]",
                  "evaluate.methods=[{name: laom, lam: laom}]"]
    with pytest.raises(ConfigError, match="label_budgets: got .1., but no stage of this experiment trains on action"):
        load_experiment(QUICKSTART, ["label_budgets=[1]", *label_free])
    with pytest.raises(ConfigError, match="'labels2' is the name of a label budget's folder"):
        load_experiment(QUICKSTART, ["label_budgets=[1]", "stages=[{run_name: labels2, stage: bc, model: {method: bc}}]",
                                     "evaluate.methods=[]"])


def test_a_budget_above_an_existing_datasets_labels(capsys, tmp_path):
    """A dataset the experiment does not collect: its manifest says how many labels it has."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text(json.dumps({"labeled_episodes": ["episode_000001", "episode_000004"]}))
    fails_with(capsys, ["train", "--config", QUICKSTART, f"train.dataset={data}", "label_budgets=[2,3]"],
               f"label_budgets: got 3, but dataset {data} has 2 labeled episodes ({data}/manifest.json)")
    assert load_experiment(QUICKSTART, [f"train.dataset={data}", "label_budgets=[1,2,null]"]).label_budgets == [1, 2, None]


def test_which_stages_of_the_quickstart_depend_on_the_budget():
    """Those that train on labels (laom_sup's labeled head, idm, bc, action decoders) and what reads
    them; LAOM and LAPO, their relabeling and latent BC are label-free."""
    exp = load_experiment(QUICKSTART, ["label_budgets=[1,2]", "collect.num_labeled=2"])
    names = {s["run_name"] for s in exp.stages}
    assert names - exp.label_dependent() == LABEL_FREE
    assert load_experiment(QUICKSTART).label_dependent() == set()  # no sweep


def test_run_layout_and_upstream_resolution(tmp_path):
    runs = f"{tmp_path}/runs"
    where = [f"train.storage_path={runs}", "collect.num_labeled=2", "train.num_labeled=2"]
    plain = load_experiment(QUICKSTART, where)
    exp = load_experiment(QUICKSTART, [*where, "label_budgets=[1,2,null]"])  # it replaces train.num_labeled
    index = {s["run_name"]: i for i, s in enumerate(exp.stages)}
    root = f"{runs}/quickstart"
    for name in LABEL_FREE:  # one run for every budget, where it lives without a sweep, with no budget
        configs = [exp.stage(index[name], budget=b) for b in (1, 2, None)]
        assert configs[0] == configs[1] == configs[2], name
        assert configs[0].storage_path == plain.stage(index[name]).storage_path == root
        assert getattr(configs[0], "num_labeled", None) is None
    decoder = exp.stage(index["laom_decoder"], budget=2)  # a budget's decoder of the shared latent BC
    assert (decoder.storage_path, decoder.policy_run, decoder.num_labeled) == (f"{root}/labels2", f"{root}/laom_bc", 2)
    relabel = exp.stage(index["laom_sup_labels"], budget=None)  # the budget's own laom_sup LAM
    assert (relabel.storage_path, relabel.lam_run) == (f"{root}/labelsall", f"{root}/labelsall/laom_sup")
    bc = exp.stage(index["laom_sup_bc"], budget=1)
    assert (bc.labels, bc.num_labeled) == (f"{root}/labels1/laom_sup_labels", 1)
    assert exp.stage(index["bc"]) == exp.stage(index["bc"], budget=1)  # default: the first budget
    own = load_experiment(QUICKSTART, [*where, "label_budgets=[1,2]", "stages.bc.num_labeled=1"])
    assert own.stage(index["bc"], budget=2).num_labeled == 2  # the sweep's budget wins
    dirs = exp.run_dirs(2)[0]
    assert dirs["laom"] == f"{root}/laom" and dirs["laom_decoder"] == f"{root}/labels2/laom_decoder"
    assert run_path("laom_decoder", dirs) == dirs["laom_decoder"] and run_path("x/y", dirs) == "x/y"
    with pytest.raises(ValueError, match="'nope' is not a run of this experiment"):
        run_path("nope", dirs)
    seeds = load_experiment(QUICKSTART, [*where, "label_budgets=[1,2]", "seeds=[0,1]"])
    assert seeds.stage(index["laom"], 1, 2).storage_path == f"{root}/seed1"
    decoder = seeds.stage(index["laom_decoder"], 1, 2)
    assert (decoder.storage_path, decoder.policy_run) == (f"{root}/labels2/seed1", f"{root}/seed1/laom_bc")
    # without a sweep, nothing moves
    assert plain.stage(index["bc"]).storage_path == root and plain.stage(index["bc"]).num_labeled == 2
    assert plain.run_dirs() == {0: {name: f"{root}/{name}" for name in index}}


def test_evaluate_looks_for_each_budgets_runs(capsys, tmp_path):
    """`raylam evaluate` on a sweep evaluates every budget: it finds (here: misses) the budget's runs."""
    fails_with(capsys, ["evaluate", "--config", QUICKSTART, "label_budgets=[1,2]", "collect.num_labeled=2",
                        f"train.storage_path={tmp_path}"],
               f"evaluate.methods[0] (laom_sup).lam: {tmp_path}/quickstart/labels1/laom_sup is not a finished run")


def test_jobs_train_label_free_stages_once():
    exp = load_experiment(QUICKSTART, ["label_budgets=[1,2,4]", "collect.num_labeled=4"])
    jobs = stage_jobs(exp, list(range(len(exp.stages))))
    assert len(jobs) == len(LABEL_FREE) + 3 * (len(exp.stages) - len(LABEL_FREE))
    index = {s["run_name"]: i for i, s in enumerate(exp.stages)}
    assert job_inputs(exp, (0, 2, index["laom_decoder"])) == [(0, None, index["laom_bc"])]
    assert job_inputs(exp, (0, 4, index["laom_sup_bc"])) == [(0, 4, index["laom_sup_labels"])]
    assert [b for _, b, i in jobs if i == index["laom"]] == [None]


def test_the_documented_budget_config_loads():
    """docs/evaluation.md: `raylam pipeline --config configs/budgets_quickstart.yaml`."""
    exp = load_experiment(BUDGETS_QUICKSTART)
    assert exp.label_budgets == [1, 2, 4] and exp.collect.num_labeled == 4
    assert exp.train.dataset == exp.collect.output == load_experiment(QUICKSTART).collect.output  # data shared
    assert {s["run_name"] for s in exp.stages} - exp.label_dependent() == LABEL_FREE
    assert "raylam pipeline --config configs/budgets_quickstart.yaml" in (ROOT / "docs" / "evaluation.md").read_text()


def tiny_sweep(tmp: Path, **changes) -> ExperimentConfig:
    """LAOM -> relabel -> latent BC (label-free), an action decoder and BC (per budget), budgets 1 and 2;
    ``changes`` replace top-level fields."""
    small = {"image_size": 32, "encoder_scale": 1, "encoder_blocks": 1, "latent_dim": 16, "hidden_dim": 32,
             "head_blocks": 1, "decoder_hidden": 16, "max_offset": 2, "augment": False, "warmup_fraction": 0.0}
    return from_dict(ExperimentConfig, {**{
        "name": "sweep", "label_budgets": [1, 2],
        "collect": {"output": str(tmp / "data"), "num_labeled": 2, "episodes": 3},
        "train": {"dataset": str(tmp / "data"), "storage_path": str(tmp / "runs"), "model": small, "steps": 2,
                  "batch_size": 8, "labeled_batch_size": 4, "report_every": 1, "checkpoint_every": 2,
                  "data": {"read_cpus": 0.5}},
        "stages": [{"run_name": "laom", "stage": "lam", "model": {"method": "laom"}},
                   {"run_name": "laom_labels", "stage": "relabel", "lam_run": "laom", "batch_size": 32},
                   {"run_name": "laom_bc", "stage": "latent_bc", "labels": "laom_labels",
                    "model": {"method": "latent_bc"}},
                   {"run_name": "laom_decoder", "stage": "action_decoder", "policy_run": "laom_bc",
                    "model": {"method": "action_decoder"}},
                   {"run_name": "bc", "stage": "bc", "model": {"method": "bc"}}],
        "evaluate": {"methods": [{"name": "laom", "lam": "laom", "policy": "laom_bc", "decoder": "laom_decoder"},
                                 {"name": "bc", "policy": "bc"}],
                     "probe": {"max_fit_windows": 64, "batch_size": 32}, "rollout": {"episodes": 0}},
    }, **changes})


def collect_synthetic(tmp: Path, monkeypatch) -> None:
    """The tiny sweep's `collect` stage writes synthetic data (2 of 3 episodes labeled) instead of
    rendering dm-control, so a pipeline test runs every other stage for real."""
    manifest = write_synthetic_dataset(str(tmp / "data"), episodes=3, heldout_episodes=1, episode_length=24,
                                       image_size=32, clip_length=16, overlap=6, num_labeled=2)
    monkeypatch.setattr("raylam.data.collect.collect", lambda cfg: manifest)


def test_pipeline_sweeps_budgets_sharing_label_free_runs(ray_local, tmp_path, monkeypatch, capsys):
    from raylam.pipeline import run_pipeline

    collect_synthetic(tmp_path, monkeypatch)
    exp = tiny_sweep(tmp_path)
    out = run_pipeline(exp)
    root = tmp_path / "runs" / "sweep"
    for name in ("laom", "laom_labels", "laom_bc"):  # trained once, beside the budgets' folders
        assert (root / name / "artifact.json").is_file(), name
        assert not any((root / f"labels{b}" / name).exists() for b in (1, 2)), name
    for budget in (1, 2):
        for name in ("laom_decoder", "bc"):
            artifact = json.loads((root / f"labels{budget}" / name / "artifact.json").read_text())
            assert artifact["num_labeled"] == budget, (budget, name)
        decoder = json.loads((root / f"labels{budget}" / "laom_decoder" / "artifact.json").read_text())
        assert decoder["config"]["policy_run"] == str(root / "laom_bc")
        results = json.loads((Path(out["output"]) / f"labels{budget}" / "results.json").read_text())
        assert sorted(r["method"] for r in results["rows"]) == ["bc", "laom"]
        assert {r["num_labeled"] for r in results["rows"]} == {budget} and results["num_labeled"] == [budget]
    assert (Path(out["output"]) / "report.md").is_file() and out["report"] == f"{out['output']}/report.md"
    assert sorted({r["num_labeled"] for r in out["results"]["rows"]}) == [1, 2]
    assert not (Path(out["output"]) / "results.json").exists()  # `raylam report <output>` finds the budgets'
    printed = capsys.readouterr().out
    assert "already done" not in printed
    for job in ("laom", "laom_bc", "labels1/laom_decoder", "labels2/laom_decoder", "labels1/bc", "labels2/bc"):
        assert len(re.findall(rf"== stage \d/7 {job}: ", printed)) == 1, job  # started once
    # the LAM both budgets share is probed once, and both budgets' rows carry that probe
    assert printed.count(f"== probe laom: {root / 'laom'}\n") == 1
    assert printed.count("(probed for an earlier budget)") == 1
    probes = [json.loads((Path(out["output"]) / f"labels{b}" / "results.json").read_text())["rows"] for b in (1, 2)]
    assert [r["probe"] for r in probes[0] if r["method"] == "laom"] == [r["probe"] for r in probes[1] if r["method"] == "laom"]

    run_pipeline(tiny_sweep(tmp_path))  # a rerun trains nothing
    printed = capsys.readouterr().out
    assert printed.count("already done with this config, skipped") == 7, printed  # 3 shared + 2 x 2 per budget
    # nor probes again: the sweep's evaluation folder keeps the shared LAM's probe for later invocations
    assert printed.count(f"== probe laom: {root / 'laom'} (probed by an earlier evaluation)\n") == 1, printed
    assert len(list((Path(out["output"]) / "cache" / "probes").glob("probe-*.json"))) == 1
    again = [json.loads((Path(out["output"]) / f"labels{b}" / "results.json").read_text())["rows"] for b in (1, 2)]
    assert [r["probe"] for r in again[1] if r["method"] == "laom"] == [r["probe"] for r in probes[0] if r["method"] == "laom"]
    assert main(["report", out["output"], "-o", str(tmp_path / "merged")]) == 0
    assert "2 results.json merged" in capsys.readouterr().out


def lam_and_bc(tmp: Path, **changes) -> ExperimentConfig:
    """The tiny sweep cut to a LAM every budget shares and BC on the budget's labels."""
    base = tiny_sweep(tmp)
    return tiny_sweep(tmp, stages=[s for s in base.stages if s["run_name"] in ("laom", "bc")],
                      evaluate={**to_dict(base.evaluate), "methods": [{"name": "laom", "lam": "laom"},
                                                                      {"name": "bc", "policy": "bc"}]},
                      **changes)


def test_cells_of_named_seeds_run_one_per_invocation_accumulate(ray_local, tmp_path, monkeypatch, capsys):
    """`--seeds 0 "label_budgets=[1]"`, then `--seeds 1` at the same budget (one cell per run, as
    experiments/label_curve.yaml runs): each (budget, seed) is evaluated into its own folder, the
    second run adds its cell beside the first instead of replacing it, and the sweep's report
    merges both seeds."""
    from raylam.pipeline import run_pipeline

    collect_synthetic(tmp_path, monkeypatch)

    def cell(seed: int) -> ExperimentConfig:
        return lam_and_bc(tmp_path, seeds=[seed], label_budgets=[1])

    first = run_pipeline(cell(0))
    output = Path(first["output"])
    assert json.loads((output / "labels1" / "seed0" / "results.json").read_text())["seeds"] == [0]
    second = run_pipeline(cell(1))
    assert second["output"] == first["output"]
    for seed in (0, 1):  # the first cell is still there, next to the second
        results = json.loads((output / "labels1" / f"seed{seed}" / "results.json").read_text())
        assert results["seeds"] == [seed] and results["num_labeled"] == [1]
        assert sorted(r["method"] for r in results["rows"]) == ["bc", "laom"]
        assert {r["seed"] for r in results["rows"]} == {seed}
    assert not (output / "labels1" / "results.json").exists() and not (output / "results.json").exists()
    merged = second["results"]
    assert sorted((r["method"], r["seed"]) for r in merged["rows"]) == [("bc", 0), ("bc", 1), ("laom", 0), ("laom", 1)]
    assert "== report over 2 evaluation(s)" in capsys.readouterr().out
    assert (output / "report.md").is_file()
    assert main(["report", str(output), "-o", str(tmp_path / "merged")]) == 0
    assert "2 results.json merged" in capsys.readouterr().out


def test_one_invocation_runs_every_seed_and_budget(ray_local, tmp_path, monkeypatch, capsys):
    """The whole grid in one run (`raylam pipeline --config experiments/label_curve.yaml`, its
    `seeds` x `label_budgets`): each seed trains its own label-free LAM once, each (budget, seed)
    its own BC and its own results.json, and the report merges every cell."""
    from raylam.pipeline import run_pipeline

    collect_synthetic(tmp_path, monkeypatch)
    out = run_pipeline(lam_and_bc(tmp_path, seeds=[0, 1], label_budgets=[1, 2]))
    root, output = tmp_path / "runs" / "sweep", Path(out["output"])
    printed = capsys.readouterr().out
    for seed in (0, 1):
        assert json.loads((root / f"seed{seed}" / "laom" / "artifact.json").read_text())["config"]["seed"] == seed
        assert len(re.findall(rf"== stage \d/6 seed{seed}/laom: lam \(laom, seed {seed}\)", printed)) == 1, printed
        for budget in (1, 2):
            bc = json.loads((root / f"labels{budget}" / f"seed{seed}" / "bc" / "artifact.json").read_text())
            assert (bc["num_labeled"], bc["config"]["seed"]) == (budget, seed)
            results = json.loads((output / f"labels{budget}" / f"seed{seed}" / "results.json").read_text())
            assert results["seeds"] == [seed] and results["num_labeled"] == [budget]
            laom = next(r for r in results["rows"] if r["method"] == "laom")
            assert laom["runs"]["lam"] == str(root / f"seed{seed}" / "laom")  # the seed's shared LAM
    assert not any((output / f"labels{b}" / "results.json").exists() for b in (1, 2))
    cells = sorted((r["method"], r["num_labeled"], r["seed"]) for r in out["results"]["rows"] if r["seed"] is not None)
    assert cells == sorted((m, b, k) for m in ("bc", "laom") for b in (1, 2) for k in (0, 1))
    assert "== report over 4 evaluation(s)" in printed
