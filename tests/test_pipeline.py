"""`raylam pipeline` end to end on a tiny quickstart: collect -> the stages of LAOM+sup and BC
(5 of the 16: lam, relabel, latent_bc, action_decoder, bc; a Ray Train run costs ~35 s of start-up
on the CI machine; LAPO's LAM stage and relabeling are trained in test_train, LAOM is LAOM+sup's
model without the head, the idm stage is the bc stage's labeled stream with another model) ->
probes, rollouts, report; then `raylam report` merges it and the analysis notebook runs on it."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from raylam.cli import main
from raylam.eval.evaluate import REFERENCES, RESULTS_FORMAT
from raylam.experiment import load_experiment
from raylam.pipeline import select_methods, stage_is_done

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
METHODS = ["laom_sup", "bc"]


def tiny_overrides(tmp: Path) -> list[str]:
    data, runs = tmp / "data", tmp / "runs"
    return [
        f"collect.output={data}", "collect.episodes=3", "collect.heldout_episodes=1", "collect.num_labeled=1",
        "collect.env.episode_length=40", "collect.clip_length=32", "collect.progress=false",
        f"train.dataset={data}", f"train.storage_path={runs}", "train.steps=2", "train.report_every=1",
        "train.checkpoint_every=2", "train.batch_size=8", "train.labeled_batch_size=4", "train.data.read_cpus=0.5",
        "evaluate.rollout.episodes=1", "evaluate.rollout.episode_length=20", "evaluate.rollout.strip_frames=3",
        "evaluate.rollout.num_actors=1", "evaluate.probe.max_fit_windows=64", "evaluate.probe.batch_size=32",
    ]


@pytest.fixture(scope="module")
def quickstart(ray_local, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quick")
    overrides = tiny_overrides(tmp)
    assert main(["pipeline", "--config", QUICKSTART, "--methods", ",".join(METHODS), *overrides]) == 0
    exp = load_experiment(QUICKSTART, overrides)
    return exp, select_methods(exp, METHODS)


def test_every_stage_left_its_artifact(quickstart):
    exp, stages = quickstart
    assert len(exp.stages) == 16 and len(stages) == 5
    assert {exp.stages[i]["stage"] for i in stages} == {"lam", "relabel", "latent_bc", "action_decoder", "bc"}
    for i in stages:
        stage = exp.stage(i)
        run_dir = Path(stage.storage_path) / stage.run_name
        artifact = json.loads((run_dir / "artifact.json").read_text())
        assert artifact["stage"] == stage.stage, stage.run_name
        if stage.stage == "relabel":
            assert artifact["num_labels"] == 4 * 39 and list(Path(artifact["labels"]).glob("episode=*"))
        else:
            assert Path(artifact["checkpoint"], "model.pt").is_file(), stage.run_name
        assert stage_is_done(stage), f"{stage.run_name} would be retrained by a rerun"


def test_results_and_report(quickstart):
    exp, _ = quickstart
    out = Path(exp.eval_output())
    results = json.loads((out / "results.json").read_text())
    assert results["format"] == RESULTS_FORMAT
    rows = {r["method"]: r for r in results["rows"]}
    assert set(rows) == {*METHODS, *REFERENCES}
    for method in ("laom_sup",):
        probe = rows[method]["probe"]
        assert probe["fit_windows"] == 64 and probe["test_windows"] == 39, method
        for kind in ("action", "state"):
            assert math.isfinite(probe[kind]["mse"]) and len(probe[kind]["mse_per_dim"]) == (6 if kind == "action" else 17)
    assert rows["bc"]["probe"] is None
    for method, row in rows.items():
        assert row["task"] == "cheetah-run" and row["seed"] == 0
        assert set(row["rollouts"]) == {"vanilla", "scale_easy_video_hard"}, method
        for r in row["rollouts"].values():
            assert r["episodes"] == 1 and r["episode_length"] == 20 and math.isfinite(r["normalized_mean"])
    assert rows["bc"]["num_labeled"] == 1
    # the expert brackets the scale from above, even on 20-step episodes
    expert, random = (rows[k]["rollouts"]["vanilla"]["normalized_mean"] for k in ("expert", "random"))
    assert expert > random
    report = (out / "report.md").read_text()
    assert "| method | task | labeled | seed | action probe MSE" in report
    for name in ("normalized_return.png", "probe_mse.png", "frames_laom_sup_scale_easy_video_hard.png",
                 "report.html"):
        assert (out / name).stat().st_size > 1000, name


def test_report_command_merges_evaluations(quickstart, tmp_path):
    exp, _ = quickstart
    out = exp.eval_output()
    assert main(["report", out, f"{out}/results.json", "--output", str(tmp_path / "merged")]) == 0
    assert (tmp_path / "merged" / "normalized_return.png").stat().st_size > 1000
    assert (tmp_path / "merged" / "report.md").read_text().count("| laom_sup |") == 2
    assert main(["report", str(tmp_path / "missing")]) == 2


def test_analysis_notebook_runs_on_the_outputs(quickstart, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    exp, _ = quickstart
    monkeypatch.setenv("RAYLAM_RESULTS", exp.eval_output())
    monkeypatch.delenv("RAYLAM_SWEEP", raising=False)
    nb = nbformat.read(ROOT / "notebooks" / "analysis.ipynb", as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert any("rows from 1 evaluation" in o.get("text", "") for o in outputs)
    assert os.environ["RAYLAM_RESULTS"] == exp.eval_output()
