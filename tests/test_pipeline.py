"""`raylam pipeline` end to end on a tiny quickstart: collect -> the stages of LAOM+sup and BC
(5 of the 16: lam, relabel, latent_bc, action_decoder, bc; a Ray Train run costs ~35 s of start-up
on the CI machine; LAPO's LAM stage and relabeling are trained in test_train, LAOM is LAOM+sup's
model without the head, the idm stage is the bc stage's labeled stream with another model) ->
probes, rollouts (vanilla, and the distracting setting with train and held-out backgrounds),
report; then `raylam report` merges it, the analysis notebook runs on it, and `--seeds 0,1` finds
per-seed copies of the bc run done and merges their evaluations (no extra training run)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from raylam.cli import main
from raylam.config import to_dict
from raylam.eval.evaluate import REFERENCES, RESULTS_FORMAT
from raylam.experiment import load_experiment
from raylam.pipeline import select_methods, stage_is_done
from raylam.train.identity import stage_identity

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
METHODS = ["laom_sup", "bc"]


def tiny_overrides(tmp: Path | str) -> list[str]:
    """The tiny quickstart under ``tmp`` (a local folder or a bucket URI): data and runs beneath it."""
    data, runs = f"{str(tmp).rstrip('/')}/data", f"{str(tmp).rstrip('/')}/runs"
    return [
        f"collect.output={data}", "collect.episodes=3", "collect.heldout_episodes=1", "collect.num_labeled=1",
        "collect.env.episode_length=40", "collect.clip_length=32", "collect.progress=false",
        f"train.dataset={data}", f"train.storage_path={runs}", "train.num_labeled=1", "train.steps=2", "train.report_every=1",
        "train.checkpoint_every=2", "train.batch_size=8", "train.labeled_batch_size=4", "train.data.read_cpus=0.5",
        "evaluate.rollout.episodes=1", "evaluate.rollout.episode_length=20",
        "evaluate.rollout.settings=[vanilla, scale_easy_video_hard]", "evaluate.rollout.strip_frames=3",
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
    conditions = {"vanilla", "scale_easy_video_hard/train", "scale_easy_video_hard/eval"}
    for method, row in rows.items():
        assert row["task"] == "cheetah-run" and row["data"] == "scale_easy_video_hard"
        # the training seed the runs' artifacts record; the references were not trained
        assert row["seed"] == (None if method in REFERENCES else 0), method
        assert set(row["rollouts"]) == conditions, method
        for r in row["rollouts"].values():
            assert r["episodes"] == 1 and r["episode_length"] == 20 and math.isfinite(r["normalized_mean"])
        assert row["rollouts"]["scale_easy_video_hard/train"]["background_split"] == "train"
    assert rows["bc"]["num_labeled"] == 1 and results["seeds"] == [0]
    # the expert brackets the scale from above, even on 20-step episodes
    expert, random = (rows[k]["rollouts"]["vanilla"]["normalized_mean"] for k in ("expert", "random"))
    assert expert > random
    report = (out / "report.md").read_text()
    assert "| method | task | labeled | seeds | action probe MSE" in report
    assert "(scale_easy_video_hard · paper protocol: train backgrounds) |" in report
    assert "(scale_easy_video_hard · held-out backgrounds) |" in report
    assert "Training seeds: 1 (0)." in report
    for name in ("normalized_return.png", "probe_mse.png", "training_loss.png",
                 "frames_laom_sup_scale_easy_video_hard-eval.png",
                 "frames_laom_sup_scale_easy_video_hard-train.png", "report.html"):
        assert (out / name).stat().st_size > 1000, name


def test_report_command_merges_evaluations(quickstart, tmp_path):
    exp, _ = quickstart
    out = exp.eval_output()
    assert main(["report", out, f"{out}/results.json", "--output", str(tmp_path / "merged")]) == 0
    assert (tmp_path / "merged" / "normalized_return.png").stat().st_size > 1000
    merged = (tmp_path / "merged" / "report.md").read_text()
    # the same evaluation named twice (its folder and its results.json) counts once: one seed, one line
    assert merged.count("| laom_sup | cheetah-run | 1 | 0 |") == 1 and merged.count("| laom_sup |") == 1
    assert main(["report", str(tmp_path / "missing")]) == 2


def test_analysis_notebook_runs_on_the_outputs(quickstart, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    exp, _ = quickstart
    monkeypatch.setenv("RAYLAM_RESULTS", exp.eval_output())
    monkeypatch.delenv("RAYLAM_SWEEP", raising=False)
    nb = nbformat.read(ROOT / "notebooks" / "analysis.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert any("rows from 1 evaluation" in o.get("text", "") for o in outputs)
    assert any("training curves of 1 LAM runs" in o.get("text", "") for o in outputs)  # laom_sup's history


def test_several_seeds_run_in_their_own_roots_and_merge(quickstart, tmp_path, capsys):
    exp, _ = quickstart
    overrides = [*tiny_overrides(Path(exp.collect.output).parent), f"evaluate.output={tmp_path / 'eval'}"]
    multi = load_experiment(QUICKSTART, [*overrides, "seeds=[0,1]"])
    (index,) = select_methods(multi, ["bc"])
    trained = Path(exp.stage(index).storage_path) / "bc"
    for seed in (0, 1):  # seed k's run, as training with seed k would leave it (a copy of the trained one)
        stage = multi.stage(index, seed)
        assert stage.seed == seed and stage.storage_path == f"{exp.run_root()}/seed{seed}"
        run = Path(stage.storage_path) / "bc"
        shutil.copytree(trained, run)
        artifact = json.loads((run / "artifact.json").read_text())
        artifact["config"] = {**artifact["config"], "seed": seed, "storage_path": stage.storage_path}
        artifact["requested_config"] = to_dict(stage)
        artifact["identity"] = stage_identity(stage)
        (run / "artifact.json").write_text(json.dumps(artifact))
    assert main(["pipeline", "--config", QUICKSTART, "--methods", "bc", "--seeds", "0,1", *overrides]) == 0
    assert capsys.readouterr().out.count("already done with this config, skipped") == 2  # nothing retrained
    out = tmp_path / "eval"
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == [0, 1]
    assert sorted((r["method"], r["seed"]) for r in results["rows"] if r["method"] == "bc") == [("bc", 0), ("bc", 1)]
    assert sorted(r["method"] for r in results["rows"] if r["seed"] is None) == sorted(REFERENCES)  # once
    for seed in (0, 1):
        per_seed = json.loads((out / f"seed{seed}" / "results.json").read_text())
        assert [(r["method"], r["seed"]) for r in per_seed["rows"]] == [("bc", seed)]
        assert per_seed["rows"][0]["runs"]["policy"] == f"{exp.run_root()}/seed{seed}/bc"
    report = (out / "report.md").read_text()
    assert "Training seeds: 2 (0, 1)." in report and "## Per training seed" in report
    assert "| bc | cheetah-run | 1 | 0, 1 | — | — | — |" in report


def test_a_changed_stage_retrains_and_its_downstream_follows(quickstart, tmp_path, capsys):
    """Runs last: it retrains the LAOM+sup chain. The LAM's config changes; the LAM trains afresh in
    a new Ray Train directory (never restoring the old model), and relabel, latent BC and decoder
    retrain because their input changed, although their own configs did not; BC is untouched."""
    import yaml

    exp, _ = quickstart
    root = Path(exp.run_root())
    before = {name: json.loads((root / name / "artifact.json").read_text())
              for name in ("laom_sup", "laom_sup_labels", "laom_sup_bc", "laom_sup_decoder", "bc")}
    config = yaml.safe_load(Path(QUICKSTART).read_text())
    (lam,) = [s for s in config["stages"] if s["run_name"] == "laom_sup"]
    lam["model"]["sup_coef"] = 0.5
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    overrides = [*tiny_overrides(Path(exp.collect.output).parent), f"evaluate.output={tmp_path / 'eval'}",
                 "evaluate.rollout.episodes=0"]
    assert main(["pipeline", "--config", str(changed), "--methods", "laom_sup,bc", *overrides]) == 0
    out = capsys.readouterr().out
    assert "bc: already done with this config, skipped" in out
    assert out.count("already done with this config, skipped") == 1
    after = {name: json.loads((root / name / "artifact.json").read_text()) for name in before}
    assert after["bc"] == before["bc"]
    for name in ("laom_sup", "laom_sup_labels", "laom_sup_bc", "laom_sup_decoder"):
        assert after[name]["identity"] != before[name]["identity"], name
        assert after[name]["finished"] >= before[name]["finished"], name
    assert after["laom_sup"]["config"]["model"]["sup_coef"] == 0.5
    assert after["laom_sup_bc"]["config"] == before["laom_sup_bc"]["config"]  # its own config is the same
    old, new = (Path(a["checkpoint"]).parent for a in (before["laom_sup"], after["laom_sup"]))
    assert old != new and old.parent == new.parent == root / "laom_sup"
    # the new directory holds only what the new run made: one checkpoint, at its last step
    assert [json.loads(p.read_text())["step"] for p in new.glob("checkpoint_*/meta.json")] == [2]

    # --force: a fresh Train directory even for an unchanged, finished stage
    assert main(["train", "--config", str(changed), "--stage", "bc", "--force", *overrides]) == 0
    bc_runs = sorted(p.name for p in (root / "bc").glob("train-*"))
    assert len(bc_runs) == 2 and json.loads((root / "bc" / "artifact.json").read_text())["identity"] == \
        before["bc"]["identity"]
