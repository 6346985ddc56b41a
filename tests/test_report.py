"""Reports that accumulate and read: results.json files of many (seed, label budget) evaluations merge
into the paper's figure, and no figure's titles or legends overlap at any number of panels."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from raylam.config import from_dict
from raylam.data.pipeline import DatasetInfo
from raylam.data.storage import resolve
from raylam.data.synthetic import write_synthetic_dataset
from raylam.eval import report
from raylam.eval.config import EvalConfig
from raylam.eval.evaluate import RESULTS, _document, _row

METHODS = ("laom_sup", "laom", "lapo", "idm", "bc")
BUDGETS = (1, 2, 4, 8, 16)
SEEDS = (0, 1, 2)
HARD = "scale_easy_video_hard"
SETTINGS = ("vanilla", f"{HARD}/train", f"{HARD}/eval")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "data"
    write_synthetic_dataset(str(out), episodes=2, episode_length=20, image_size=16, clip_length=20, overlap=0)
    return DatasetInfo(str(out))


def normalized(method: str, budget: int, seed: int, setting: str) -> float:
    """A made-up return that grows with the budget, differs by method, seed and setting."""
    return round(0.1 * METHODS.index(method) + 0.05 * math.log2(budget) + 0.01 * seed + 0.001 * len(setting), 6)


def probe_r2(method: str, budget: int, seed: int) -> float:
    return round(0.3 - 0.05 * METHODS.index(method) + 0.02 * math.log2(budget) + 0.015 * seed, 6)


def rollouts(value, settings=SETTINGS) -> dict:
    out = {}
    for setting in settings:
        name, _, split = setting.partition("/")
        v = value(setting)
        out[setting] = {"setting": name, "background_split": split or None, "episodes": 2, "returns": [1.0, 2.0],
                        "return_mean": 1.5, "return_std": 0.5, "normalized_mean": v, "normalized_std": 0.02}
    return out


def write_evaluation(folder, info: DatasetInfo, seed: int, budget: int, reference_shift: float = 0.0,
                     methods=METHODS, settings=SETTINGS) -> None:
    """One (seed, budget) evaluation's results.json, made by the code that `raylam evaluate` runs."""
    rows = []
    for method in methods:
        row = _row(method, {"lam": f"runs/{method}-n{budget}"}, {"num_labeled": budget}, info, seed)
        if method not in ("bc",):
            r2 = probe_r2(method, budget, seed)
            row["probe"] = {"action": {"mse": 1 - r2, "r2": r2, "r2_pooled": r2 + 0.1}, "state": {"mse": 0.5, "r2": 0.4}}
        row["rollouts"] = rollouts(lambda s, m=method: normalized(m, budget, seed, s), settings)
        rows.append(row)
    for kind, level in (("expert", 0.6), ("random", 0.02)):
        row = _row(kind, {}, None, info, None)
        row["rollouts"] = rollouts(lambda s, v=level: v + reference_shift, settings)
        rows.append(row)
    cfg = from_dict(EvalConfig, {"rollout": {"episodes": 2}})
    out = resolve(str(folder))
    out.makedirs()
    out.write_json(RESULTS, _document(cfg, "ladder", rows, 1.0))


def test_results_of_every_seed_and_budget_merge_into_the_curve(tmp_path, dataset):
    """Results from 3 seeds x 5 budgets, one file each, found by folder or glob, give mean ± std over
    the seeds per method x budget; the references are bands pooled over the evaluations."""
    shifts = {}
    for k, (seed, budget) in enumerate(itertools.product(SEEDS, BUDGETS)):
        shifts[(seed, budget)] = 0.001 * k
        write_evaluation(tmp_path / "results" / f"seed{seed}-n{budget}", dataset, seed, budget, 0.001 * k)
    doc = resolve(str(tmp_path / "results" / "seed1-n4")).read_json(RESULTS)
    assert doc["num_labeled"] == [4] and doc["seeds"] == [1]
    assert {(r["method"], r["num_labeled"], r["seed"]) for r in doc["rows"]} >= {("laom", 4, 1), ("bc", 4, 1)}

    merged = report.merge_results([str(tmp_path / "results")])
    by_glob = report.merge_results([str(tmp_path / "results" / "*" / RESULTS)])
    assert len(merged["sources"]) == len(by_glob["sources"]) == 15
    assert len(merged["rows"]) == len(by_glob["rows"]) == 15 * (len(METHODS) + 2)
    assert report.merge_results([str(tmp_path / "results"), str(tmp_path / "results" / "seed0-n1")])["rows"] == \
        merged["rows"]  # a file named twice counts once

    rows = merged["rows"]
    header, lines = report.table_rows(rows)
    column = {h: i for i, h in enumerate(header)}
    train_col = column[f"normalized return ({HARD} · paper protocol: train backgrounds)"]
    heldout_col = column[f"normalized return ({HARD} · held-out backgrounds)"]
    for method, budget in (("laom_sup", 1), ("lapo", 4), ("bc", 16)):
        line = next(cells for cells in lines if cells[0] == method and cells[column["labeled"]] == str(budget))
        assert line[column["seeds"]] == "0, 1, 2"
        for col, setting in ((train_col, f"{HARD}/train"), (heldout_col, f"{HARD}/eval")):
            values = [normalized(method, budget, s, setting) for s in SEEDS]
            assert line[col] == f"{np.mean(values):.3f} ± {np.std(values):.3f}"
        if method != "bc":
            r2 = [probe_r2(method, budget, s) for s in SEEDS]
            assert line[column["action probe R²"]] == f"{np.mean(r2):.3f} ± {np.std(r2):.3f}"
            pooled = [r + 0.1 for r in r2]
            assert line[column["action probe R² (pooled)"]] == f"{np.mean(pooled):.3f} ± {np.std(pooled):.3f}"

    curve = report.aggregate_returns(rows)[("synthetic", f"{HARD}/eval")]["laom"]
    assert [b for b, *_ in curve] == list(BUDGETS) and all(n == 3 for *_, n in curve)
    values = [normalized("laom", 8, s, f"{HARD}/eval") for s in SEEDS]
    assert curve[3][1:3] == pytest.approx((np.mean(values), np.std(values)))
    probes = report.aggregate_probe_r2(rows)["synthetic"]
    assert "bc" not in probes and probes["lapo"][0][1:3] == pytest.approx(  # the figure plots the pooled R²
        (np.mean([probe_r2("lapo", 1, s) + 0.1 for s in SEEDS]), np.std([probe_r2("lapo", 1, s) for s in SEEDS])))
    expert = report.reference_levels(rows)[("synthetic", f"{HARD}/train")]["expert"]
    levels = [0.6 + shift for shift in shifts.values()]
    assert expert == pytest.approx((np.mean(levels), np.std(levels)))

    md = report.write_report(merged, str(tmp_path / "merged"))
    text = open(md).read()
    assert "Training seeds: 3 (0, 1, 2)." in text and "![" in text
    for name in (report.FIG_RETURN, report.FIG_PROBE):
        assert (tmp_path / "merged" / name).stat().st_size > 10_000, name
    fig = report.returns_figure(rows)
    assert [ax.get_xscale() for ax in fig.axes] == ["log"] * 4  # 3 conditions + the probe panel
    assert_readable(fig)


def test_references_rolled_out_again_by_another_budget_count_once(tmp_path, dataset):
    """Two budgets' evaluations roll the expert and random out again with the same seeds: the same
    returns, another wall time. Merged, each reference is one evaluation with its spread over
    episodes, not two identical means with a spread of zero."""
    for budget, wall in ((1, 30.0), (16, 55.0)):
        folder = tmp_path / f"labels{budget}"
        write_evaluation(folder, dataset, 0, budget)
        location = resolve(str(folder))
        doc = location.read_json(RESULTS)
        for row in doc["rows"]:
            for r in row["rollouts"].values():
                r["wall_s"] = wall + 0.1 * len(row["method"])
        location.write_json(RESULTS, doc)
    rows = report.merge_results([str(tmp_path)])["rows"]
    assert [r["method"] for r in rows].count("expert") == 1 and [r["method"] for r in rows].count("laom") == 2
    assert report.reference_levels(rows)[("synthetic", f"{HARD}/train")]["expert"] == pytest.approx((0.6, 0.02))
    header, lines = report.table_rows(rows)
    expert = next(cells for cells in lines if cells[0] == "expert")
    assert expert[header.index(f"normalized return ({HARD} · paper protocol: train backgrounds)")] == "0.600 ± 0.020"


def test_the_same_runs_evaluated_twice_count_once_the_newer(tmp_path, dataset, capsys):
    """A cell evaluated in the old budget-level folder and again in its per-seed folder, rolled out
    anew (other returns): one seed's runs, so one row per method, the newer evaluation's, and one
    line on stderr naming both files; another seed's cell at that budget still counts."""
    old, new, other = tmp_path / "labels2", tmp_path / "labels2" / "seed0", tmp_path / "labels2" / "seed1"
    write_evaluation(old, dataset, 0, 2, methods=("laom", "bc"))
    write_evaluation(new, dataset, 0, 2, methods=("laom", "bc"))
    write_evaluation(other, dataset, 1, 2, methods=("laom", "bc"))
    for folder, created, shift in ((old, "2026-12-06T10:00:00+00:00", 0.0),
                                   (new, "2026-12-07T10:00:00+00:00", 0.3), (other, "2026-12-07T11:00:00+00:00", 0.0)):
        location = resolve(str(folder))
        doc = location.read_json(RESULTS)
        doc["created"] = created
        for row in doc["rows"]:
            if row["method"] not in ("expert", "random"):
                for r in row["rollouts"].values():
                    r["normalized_mean"] += shift
        location.write_json(RESULTS, doc)
    rows = report.merge_results([str(tmp_path)])["rows"]
    laom = [r for r in rows if r["method"] == "laom"]
    assert sorted(r["seed"] for r in laom) == [0, 1]
    seed0 = next(r for r in laom if r["seed"] == 0)
    assert seed0["source"] == str(new / RESULTS)
    assert seed0["rollouts"][f"{HARD}/train"]["normalized_mean"] == pytest.approx(
        normalized("laom", 2, 0, f"{HARD}/train") + 0.3)
    err = capsys.readouterr().err
    assert err.count("evaluate the same runs") == 1  # one line for the pair of files, naming both
    assert f"{old / RESULTS} and {new / RESULTS} evaluate the same runs (laom seed 0, bc seed 0)" in err
    curve = report.aggregate_returns(rows)[("synthetic", f"{HARD}/train")]["bc"]
    assert [(budget, n) for budget, *_, n in curve] == [(2, 2)]  # seeds 0 and 1, not 0 twice


def test_pooled_r2_is_recovered_from_per_dim_results():
    """Results written before r2_pooled existed still give it: SST per dim from its MSE and R²."""
    mse, sst = [0.25, 0.5, 0.003], [1.0, 1.0, 0.001]  # the third dim barely varies: its R² is -2
    part = {"mse": sum(mse) / 3, "r2": sum(1 - m / t for m, t in zip(mse, sst, strict=True)) / 3,
            "mse_per_dim": mse, "r2_per_dim": [1 - m / t for m, t in zip(mse, sst, strict=True)]}
    assert part["r2"] < 0
    assert report.pooled_r2(part) == pytest.approx(1 - sum(mse) / sum(sst))
    assert report.pooled_r2({**part, "r2_pooled": 0.5}) == 0.5  # stored: taken as is
    assert report.pooled_r2({"mse": 0.1, "r2": 0.2}) is None  # nothing to recover it from


def test_merging_nothing_says_where_it_looked(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no results.json there"):
        report.merge_results([str(tmp_path / "empty")])


# ---------------------------------------------------------------- layout


def assert_readable(fig) -> None:
    """No panel (with its title, labels and tick labels), legend or suptitle overlaps another, and
    everything lies on the page."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [(f"panel {i} ({ax.get_title()!r})", ax.get_tightbbox(renderer)) for i, ax in enumerate(fig.axes)]
    boxes += [(f"legend {i}", legend.get_window_extent(renderer)) for i, legend in enumerate(fig.legends)]
    if fig.get_suptitle():
        boxes.append(("suptitle", fig._suptitle.get_window_extent(renderer)))
    page = fig.bbox
    for name, box in boxes:
        assert (box.x0 >= page.x0 - 1 and box.y0 >= page.y0 - 1 and box.x1 <= page.x1 + 1
                and box.y1 <= page.y1 + 1), f"{name} leaves the page: {box} vs {page}"
    for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2):
        assert not box_a.overlaps(box_b), f"{a} overlaps {b}"


def many_rows(info: DatasetInfo, tmp_path, budgets, tasks=("cheetah-run",)) -> list[dict]:
    """Six conditions (two panel rows) x twelve methods with long names: more than any report draws today."""
    methods = METHODS + tuple(f"variant_{i}_with_a_long_name" for i in range(7))
    settings = ("vanilla",) + tuple(f"{preset}/{split}" for preset in (HARD, "scale_medium_video_medium")
                                    for split in ("train", "eval")) + ("camera_only_distractors",)
    rows = []
    for task in tasks:
        for seed, budget in itertools.product((0, 1), budgets):
            folder = tmp_path / f"{task}-{seed}-{budget}"
            write_evaluation(folder, info, seed, budget, methods=METHODS, settings=settings)
            doc = resolve(str(folder)).read_json(RESULTS)
            for row in doc["rows"]:
                row["task"] = task
            rows += doc["rows"]
            for i, name in enumerate(methods[len(METHODS):]):  # more methods: copies under other names
                for row in doc["rows"][: len(METHODS)]:
                    if row["method"] == "laom":
                        extra = {**row, "method": name}
                        extra["rollouts"] = {k: {**v, "normalized_mean": v["normalized_mean"] + 0.01 * i}
                                             for k, v in row["rollouts"].items()}
                        rows.append(extra)
    return rows


def test_return_panels_zoom_in_when_every_policy_is_far_below_the_expert(tmp_path, dataset):
    """Policies at a tenth of the expert's return would lie flat on the floor of a panel drawn to the
    expert's scale: the panel's y axis then spans the methods (and random) only, and its title says
    where the expert is. Methods within reach of the expert keep it on the axis."""
    rows = []
    for budget in (1, 4, 16):
        folder = tmp_path / f"labels{budget}"
        write_evaluation(folder, dataset, 0, budget)
        rows += resolve(str(folder)).read_json(RESULTS)["rows"]
    near = report.returns_figure(rows)
    for ax in near.axes[:3]:  # the methods reach 0.5 against the expert's 0.6: one scale shows both
        assert ax.get_ylim()[1] > 0.6 and "above the axis" not in ax.get_title()
    for row in rows:
        if row["method"] not in report.REFERENCE_METHODS:  # now at most 0.05 against the expert's 0.6
            for r in row["rollouts"].values():
                r["normalized_mean"] /= 10
                r["normalized_std"] /= 10
    far = report.returns_figure(rows)
    highest = max(r["normalized_mean"] + r["normalized_std"] for row in rows for r in row["rollouts"].values()
                  if row["method"] not in report.REFERENCE_METHODS)
    for ax in far.axes[:3]:
        bottom, top = ax.get_ylim()
        assert highest < top < 0.6 - 0.02 and bottom < 0.02 - 0.02, (bottom, top)  # the random band is on it
        assert "(expert 0.60, above the axis)" in ax.get_title().replace("\n", " ")
    assert far.axes[3].get_ylim() == near.axes[3].get_ylim()  # the probe panel is not a return panel
    assert_readable(far)


@pytest.mark.parametrize("budgets", [(1, 4, 16), (16,)], ids=["curve", "one-budget"])
def test_figures_read_with_many_conditions_and_methods(tmp_path, dataset, budgets):
    rows = many_rows(dataset, tmp_path, budgets)
    fig = report.returns_figure(rows)
    assert len(fig.axes) == 7  # six conditions and the probe panel, wrapped into two rows
    if len(budgets) == 1:  # one budget: a dot per method, methods along x, not one point on a log axis
        assert all(ax.get_xscale() == "linear" and len(ax.get_xticklabels()) > 1 for ax in fig.axes)
    assert_readable(fig)
    assert_readable(report.probes_figure(rows))


def test_training_figure_shows_each_lams_objective_and_heldout_probe(tmp_path):
    """The training figure reads each run's history: ``loss`` (its own objective) per method and the
    held-out probe R² of the ``eval_every`` reports; an old history (probes inside ``loss``) has its
    probe MSEs taken out."""
    from raylam.train.metrics import MetricsLog

    rows = []
    for method, seed in itertools.product(("laom_sup", "laom", "lapo"), (0, 1)):
        run = tmp_path / f"{method}-{seed}"
        log = MetricsLog(str(run / "train-0"), tensorboard=False)
        for step in range(10, 110, 10):
            values = {"loss": 1 / step, "probe/action_mse": 2.0, "probe/state_mse": 20.0, "probe/loss": 22.0}
            if method == "lapo":  # a history from before the probes were reported apart
                values = {"loss": 1 / step + 22.0, "probe/action_mse": 2.0, "probe/state_mse": 20.0}
            if step % 50 == 0:
                values[report.HELDOUT_R2] = step / 200 + 0.01 * seed
            log.log(values, step)
        log.close(100)
        rows.append({"method": method, "task": "cheetah-run", "num_labeled": 4, "seed": seed,
                     "runs": {"lam": str(run)}})
    fig = report.training_figure(rows)
    objective_panels, r2_panel = fig.axes[:3], fig.axes[3]
    for ax in objective_panels:
        for line in ax.get_lines():
            assert np.allclose(line.get_ydata(), 1 / np.asarray(line.get_xdata())), ax.get_title()
    assert len(r2_panel.get_lines()) == 6 and "held-out" in r2_panel.get_title()
    assert_readable(fig)
    assert report.plot_training(rows, str(tmp_path / "training.png"))


def test_probe_bars_split_budgets_and_count_a_shared_run_once():
    """A sweep evaluates a label-free LAM under every budget (the same run: one bar, counted once),
    and a label-dependent one per budget (a bar per budget), in budget order."""
    def row(method, budget, run, seed=0):
        runs = {"lam": run, "decoder": f"runs/labels{budget}/{method}_decoder"}  # the decoder reads the labels
        return {"method": method, "num_labeled": budget, "seed": seed, "runs": runs, "task": "cheetah-run",
                "data": HARD, "probe": {"action": {"mse": 0.1 * budget}}}

    rows = [row("laom", b, "runs/laom") for b in (16, 2)] + [row("laom_sup", b, f"runs/labels{b}/laom_sup")
                                                             for b in (16, 2)]
    rows += [row("laom_sup", 2, "runs/seed1/labels2/laom_sup", seed=1)]
    bars = report.probe_bars(rows)
    assert report._order(bars) == ["laom_sup · 2 labeled", "laom_sup · 16 labeled", "laom"]
    assert len(bars["laom"]) == 1 and [r["seed"] for r in bars["laom_sup · 2 labeled"]] == [0, 1]


def test_the_curve_says_how_many_seeds_each_point_has():
    """A sweep whose seeds are still landing: budget 1 has two seeds, budget 2 one. The figure's title
    must not claim two seeds for every point, nor hide that one-seed points spread over episodes."""
    from raylam.eval.report import seed_spread

    def row(method, budget, seed):
        return {"task": "cheetah-run", "method": method, "num_labeled": budget, "seed": seed}

    partial = [row("bc", 1, 0), row("bc", 1, 1), row("bc", 2, 0), row("laom", 1, 0), row("laom", 1, 1)]
    assert seed_spread(partial, episodes=True) == ("mean ± std over 1–2 training seeds per point; "
                                                   "on one seed, ± over its episodes")
    assert seed_spread(partial[:2] + partial[3:], episodes=True) == "mean ± std over 2 training seeds"
    assert seed_spread([row("bc", 1, 0), row("bc", 2, 0)], episodes=True) == \
        "one training seed: ± is the std over its episodes"
    assert seed_spread([row("bc", 1, 0), row("bc", 1, 1), row("bc", 2, 0), row("bc", 2, 1), row("bc", 4, 2)],
                       episodes=False) == "mean ± std over 1–2 training seeds per point"


def test_the_curve_table_has_a_line_per_budget_and_says_each_points_seeds(tmp_path, dataset):
    """The figure's points as a table (budgets down, methods across): mean ± std (seeds) over the
    seeds that ran the cell, a seed's own episode spread where one did, a dash where none did."""
    for seed in (0, 1):
        write_evaluation(tmp_path / f"seed{seed}-n1", dataset, seed, 1)
    write_evaluation(tmp_path / "seed0-n4", dataset, 0, 4, methods=("laom_sup", "laom", "lapo", "bc"))
    rows = report.merge_results([str(tmp_path)])["rows"]
    tables = report.curve_tables(rows)
    assert [heading.split(": ", 1)[1] for heading, *_ in tables] == [
        "synthetic · vanilla", f"synthetic · {HARD} · paper protocol: train backgrounds",
        f"synthetic · {HARD} · held-out backgrounds"]
    _, header, lines = tables[1]
    assert header == ["labeled", *METHODS]
    assert [cells[0] for cells in lines] == ["1", "4"]
    one = [normalized("lapo", 1, s, f"{HARD}/train") for s in (0, 1)]
    assert lines[0][header.index("lapo")] == f"{np.mean(one):.3f} ± {np.std(one):.3f} (2)"
    assert lines[1][header.index("bc")] == f"{normalized('bc', 4, 0, f'{HARD}/train'):.3f} ± 0.020 (1)"
    assert lines[1][header.index("idm")] == "—"
    text = open(report.write_report(report.merge_results([str(tmp_path)]), str(tmp_path / "out"))).read()
    assert f"## {tables[1][0]}" in text
    assert report.curve_tables([r for r in rows if r["num_labeled"] in (1, None)]) == []  # one budget: no curve
