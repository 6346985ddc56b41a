"""Reports a person can read: a table, the paper's figure shapes and frame strips, in Markdown and HTML.

``write_report(results, out)`` renders one evaluation; ``merge_results`` joins the results of many
evaluations (tasks, label budgets, seeds) so ``raylam report RUNS...`` draws them as one figure:
normalized return against the number of labeled trajectories per method, as in the paper.

Rows that differ only in their training seed are one line of the summary table and one point of
the figures: mean ± std over the seeds (each seed's mean over its episodes); a per-seed table
follows. A line with a single seed shows ± the std over its episodes. Rollouts in settings with
background videos are reported once per background split, side by side: the paper's protocol
(train split: the videos of the training data, as LAOM's released evaluation) and held-out videos.
"""

from __future__ import annotations

import html
import json
import math
import os
import sys
import textwrap
from collections import defaultdict

import numpy as np

from raylam.data.storage import resolve

METHOD_ORDER = ("laom_sup", "laom", "lapo", "idm", "bc", "expert", "random")
REPORT_MD, REPORT_HTML = "report.md", "report.html"
FIG_RETURN, FIG_PROBE, FIG_TRAINING = "normalized_return.png", "probe_mse.png", "training_loss.png"


def load_results(path: str) -> dict:
    """``results.json`` of an evaluation, given the file or the directory holding it."""
    from raylam.eval.evaluate import RESULTS, RESULTS_FORMAT

    location = resolve(path if not path.endswith(".json") else os.path.dirname(path) or ".")
    name = os.path.basename(path) if path.endswith(".json") else RESULTS
    if not location.exists(name):
        raise FileNotFoundError(f"{location.url(name)} does not exist: {path} is not an evaluation output "
                                "(run `raylam evaluate` or `raylam pipeline` first)")
    results = location.read_json(name)
    if results.get("format") != RESULTS_FORMAT or not isinstance(results.get("rows"), list):
        raise ValueError(f"{location.url(name)}: expected format {RESULTS_FORMAT!r} with a 'rows' list, "
                         f"got format {results.get('format')!r}")
    return results


def find_results(path: str) -> list[str]:
    """The ``results.json`` files ``path`` names: the file; an evaluation directory's own; a local
    glob (``docs/results/*/results.json``); or, for a folder with none of its own, every one below
    it (on any storage), so results that accumulate in a folder are merged by naming the folder."""
    import glob

    if any(ch in path for ch in "*?[") and "://" not in path:
        return sorted(glob.glob(path, recursive=True))
    if path.endswith(".json"):
        return [path]
    location = resolve(path)
    from raylam.eval.evaluate import RESULTS

    if location.exists(RESULTS):
        return [location.url(RESULTS) if "://" in path else os.path.join(path, RESULTS)]
    return results_below(path)


def results_below(path: str, folder: str = "") -> list[str]:
    """Every ``results.json`` below the folder ``path`` (on any storage), sorted, as paths the reader
    resolves; ``folder``: only those whose first folder below ``path`` starts with it (a label-budget
    sweep's ``labels``)."""
    import pyarrow.fs as pafs

    from raylam.eval.evaluate import RESULTS

    location = resolve(path)
    selector = pafs.FileSelector(location.root, recursive=True, allow_not_found=True)
    found = []
    for info in location.fs.get_file_info(selector):
        relative = info.path[len(location.root):].lstrip("/")
        if info.type == pafs.FileType.File and info.base_name == RESULTS and "/" in relative \
                and relative.startswith(folder):
            found.append(info.path)
    found.sort()
    if "://" in path and not path.startswith("file://"):  # back to URIs the reader resolves
        prefix = path.split("://", 1)[0] + "://"
        found = [prefix + f for f in found]
    return found


def merge_results(paths: list[str]) -> dict:
    """One results document holding the rows of every evaluation in ``paths`` (each row keeps its
    source): files, evaluation directories, folders of many evaluations or local globs (see
    :func:`find_results`). A row found twice (an evaluation's ``seed<k>/results.json`` repeats its
    rows; the references rolled out again, same seeds, by another budget's evaluation) counts once,
    and the same runs evaluated twice keep the newer evaluation, so a (method, budget, seed) cell is
    never weighted twice in a mean."""
    from raylam.eval.evaluate import RESULTS_FORMAT

    if not paths:
        raise ValueError("report: give at least one evaluation directory or results.json")
    files: list[str] = []
    for path in paths:
        found = find_results(path)
        if not found:
            raise FileNotFoundError(f"{path}: no results.json there (an evaluation directory, a results.json, "
                                    "a folder holding evaluations or a glob of them)")
        files += [f for f in found if f not in files]
    rows, rollout_configs, seen, created = [], [], set(), {}
    for path in files:
        results = load_results(path)
        rollout_configs.append((results.get("config") or {}).get("rollout"))
        created[path] = str(results.get("created") or "")
        for row in results["rows"]:
            identity = json.dumps(_without_timings(row), sort_keys=True, default=str)
            if identity in seen:
                continue
            seen.add(identity)
            rows.append({**row, "source": path})
    rows = _newest_evaluation_of_each_run(rows, created)
    merged = {"format": RESULTS_FORMAT, "experiment": "merged", "sources": files,
              "seeds": sorted({r["seed"] for r in rows if r.get("seed") is not None}), "rows": rows}
    if rollout_configs[0] and all(c == rollout_configs[0] for c in rollout_configs):
        merged["config"] = {"rollout": rollout_configs[0]}  # the caption can describe the rollouts
    return merged


def _newest_evaluation_of_each_run(rows: list[dict], created: dict[str, str]) -> list[dict]:
    """Rows whose trained runs were evaluated twice with different outcomes (a cell rolled out again;
    a folder evaluated before and after per-seed folders existed) are one cell, not two seeds: keep
    the newer evaluation's row (by its file's ``created``, then its place in the list) and say so on
    stderr, a line per pair of files, so that no (method, budget, seed) is weighted twice in a mean.
    The references (expert, random) name no runs and stay pooled over evaluations."""
    newest: dict[str, int] = {}
    set_aside: dict[tuple[str, str], list[str]] = defaultdict(list)
    for index, row in enumerate(rows):
        if not row.get("runs"):
            continue
        cell = json.dumps([row.get(k) for k in ("task", "dataset", "data", "method", "num_labeled", "seed")]
                          + [row["runs"]], sort_keys=True, default=str)
        if cell not in newest:
            newest[cell] = index
            continue
        older, newer = sorted((rows[newest[cell]], row), key=lambda r: created.get(r["source"], ""))
        set_aside[(older["source"], newer["source"])].append(f"{row['method']} seed {row.get('seed')}")
        if newer is row:
            newest[cell] = index
    for (older, newer), cells in set_aside.items():
        print(f"report: {older} and {newer} evaluate the same runs ({', '.join(cells)}); "
              f"using the newer, {newer}", file=sys.stderr)
    keep = set(newest.values())
    return [row for index, row in enumerate(rows) if not row.get("runs") or index in keep]


def _without_timings(value):
    """``value`` without its ``wall_s`` fields: how long a rollout took is no part of what it measured,
    so the same rollouts in two evaluations (the expert's and random's, which every label budget of a
    sweep rolls out again with the same seeds) count once, keeping their spread over episodes."""
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k != "wall_s"}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def _order(methods) -> list[str]:
    """The paper's method order; a label such as ``laom (vanilla data)`` or ``bc · 4 labeled`` sorts
    with its method, label budgets in increasing order."""
    def key(label: str) -> tuple:
        name, _, budget = label.partition(" · ")
        count = budget.split(" ")[0]
        return (_rank(name.split(" (")[0]), name, not count.isdigit(), int(count) if count.isdigit() else 0, label)

    return sorted(methods, key=key)


def _rank(method: str) -> int:
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


REFERENCE_METHODS = ("expert", "random")


SPLIT_ORDER = ("train", "eval")  # the paper's protocol first, then held-out backgrounds


def _settings(rows: list[dict]) -> list[str]:
    """The rollout conditions (keys of ``rollouts``) in a fixed order, whatever the files' key
    order: ``vanilla`` first, then each preset with its background splits (train, then held-out)."""
    seen: dict[str, None] = {}
    for row in rows:
        for setting in row.get("rollouts") or {}:
            seen.setdefault(setting)

    def key(setting: str) -> tuple:
        preset, _, split = setting.partition("/")
        return (preset != "vanilla", preset, SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER),
                split)

    return sorted(seen, key=key)


def condition_label(key: str, rows: list[dict]) -> str:
    """A reader's name for a rollout condition: ``scale_easy_video_hard · held-out backgrounds``."""
    from raylam.eval.config import SPLIT_LABELS

    for row in rows:
        r = (row.get("rollouts") or {}).get(key)
        if r is not None and r.get("background_split"):
            return f"{r.get('setting', key.split('/')[0])} · {SPLIT_LABELS.get(r['background_split'], r['background_split'])}"
    return key


def _mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std()) if len(arr) > 1 else 0.0


def _seed_key(row: dict) -> tuple:
    seed = row.get("seed")
    return (seed is None, seed if seed is not None else 0)


def _several_data(rows: list[dict]) -> bool:
    return len({r.get("data") for r in rows}) > 1


def _label(row: dict, several_data: bool) -> str:
    """The method's name, plus the dataset's preset when the rows come from several datasets."""
    if several_data and row.get("data") and row["method"] not in REFERENCE_METHODS:
        return f"{row['method']} ({row['data']} data)"
    return row["method"]


def group_rows(rows: list[dict]) -> list[list[dict]]:
    """Rows that differ only in their training seed (and source), grouped; in table order."""
    groups: dict = defaultdict(list)
    for row in rows:
        groups[(row["task"], row.get("data") or "", row["method"], row["num_labeled"])].append(row)
    order = sorted(groups, key=lambda k: (k[0], k[1], _rank(k[2]), k[2], k[3]))
    return [sorted(groups[k], key=_seed_key) for k in order]


def seeds_of(rows: list[dict]) -> list[int]:
    return sorted({r["seed"] for r in rows if r.get("seed") is not None})


def aggregate_returns(rows: list[dict]) -> dict:
    """{(task, setting): {method: [(num_labeled, mean, std, n)]}}: normalized return per label budget.

    ``setting`` is a rollout condition (``vanilla``, ``scale_easy_video_hard/train`` ...). With
    several seeds the spread is across seeds (each seed's mean over its episodes) and ``n`` counts
    them; with one seed it is across that seed's episodes. Rows from datasets of several presets
    (e.g. a vanilla control dataset merged with a distracting one) get ``method (preset data)``.
    """
    several = _several_data(rows)
    grouped: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for row in rows:
        for setting, r in (row.get("rollouts") or {}).items():
            grouped[(row["task"], setting)][_label(row, several)][row["num_labeled"]].append(r)
    out: dict = {}
    for key, methods in grouped.items():
        out[key] = {}
        for method, budgets in methods.items():
            points = []
            for budget, runs in sorted(budgets.items()):
                if len(runs) > 1:
                    mean, std = _mean_std([r["normalized_mean"] for r in runs])
                else:
                    mean, std = runs[0]["normalized_mean"], runs[0]["normalized_std"]
                points.append((budget, mean, std, len(runs)))
            out[key][method] = points
    return out


def _stat(values: list, digits: int) -> str:
    """One value, or mean ± std over several (missing values skipped)."""
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return "—"
    if len(values) == 1:
        return _fmt(values[0], digits)
    mean, std = _mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _probe_value(row: dict, kind: str, metric: str):
    part = (row.get("probe") or {}).get(kind) or {}
    return pooled_r2(part) if metric == "r2_pooled" else part.get(metric)


def pooled_r2(part: dict) -> float | None:
    """A probe's pooled R² (1 - sum SSE / sum SST over dims): stored as ``r2_pooled``, or recovered
    from the per-dim MSE and R² of results written before it was (SST_d = MSE_d / (1 - R²_d); a
    constant dim, R² NaN, adds its error and no variance). The figure plots it: the mean of the per-dim
    R² can be swung far below zero by one dim that barely varies in the held-out windows."""
    if part.get("r2_pooled") is not None:
        return part["r2_pooled"]
    mse, r2 = part.get("mse_per_dim"), part.get("r2_per_dim")
    if not mse or not r2 or len(mse) != len(r2) or any(r == 1 for r in r2):
        return None
    sst = sum(m / (1 - r) for m, r in zip(mse, r2, strict=True) if r == r)
    return 1 - sum(mse) / sst if sst > 0 else None


def _return_cell(group: list[dict], setting: str) -> str:
    runs = [(row.get("rollouts") or {}).get(setting) for row in group]
    runs = [r for r in runs if r is not None]
    if not runs:
        return "—"
    if len(runs) == 1:  # one seed: the spread over its episodes
        return f"{runs[0]['normalized_mean']:.3f} ± {runs[0]['normalized_std']:.3f}"
    mean, std = _mean_std([r["normalized_mean"] for r in runs])  # several seeds: over the seeds
    return f"{mean:.3f} ± {std:.3f}"


def table_rows(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the summary table: one line per method x task x label budget (x dataset
    preset, when several), mean ± std over the line's training seeds (listed in ``seeds``)."""
    settings = _settings(rows)
    several = _several_data(rows)
    header = ["method", "task"] + (["data"] if several else []) + ["labeled", "seeds", "action probe MSE",
                                                                  "action probe R²", "action probe R² (pooled)",
                                                                  "state probe R²", "in-training action probe R²"]
    header += [f"normalized return ({condition_label(s, rows)})" for s in settings]
    lines = []
    for group in group_rows(rows):
        first = group[0]
        reference = first["method"] in REFERENCE_METHODS
        seeds = [r.get("seed") for r in group]
        cells = [first["method"], first["task"]] + ([first.get("data") or "—"] if several else [])
        cells += [str(first["num_labeled"]) if not reference else "—",
                  "—" if all(s is None for s in seeds) else ", ".join("—" if s is None else str(s) for s in seeds),
                  _stat([_probe_value(r, "action", "mse") for r in group], 4),
                  _stat([_probe_value(r, "action", "r2") for r in group], 3),
                  _stat([_probe_value(r, "action", "r2_pooled") for r in group], 3),
                  _stat([_probe_value(r, "state", "r2") for r in group], 3),
                  _stat([(r.get("training_probe") or {}).get("heldout/probe/action/r2") for r in group], 3)]
        cells += [_return_cell(group, s) for s in settings]
        lines.append(cells)
    return header, lines


def seed_table_rows(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the per-seed table: one line per row of the results (references excluded)."""
    settings = _settings(rows)
    header = ["method", "task", "labeled", "seed", "action probe MSE", "action probe R²", "action probe R² (pooled)",
              "state probe R²"]
    header += [f"normalized return ({condition_label(s, rows)})" for s in settings]
    several = _several_data(rows)
    lines = []
    for group in group_rows([r for r in rows if r["method"] not in REFERENCE_METHODS]):
        for row in group:
            cells = [_label(row, several), row["task"], str(row["num_labeled"]), _fmt(row.get("seed"), 0),
                     _fmt(_probe_value(row, "action", "mse"), 4), _fmt(_probe_value(row, "action", "r2"), 3),
                     _fmt(_probe_value(row, "action", "r2_pooled"), 3), _fmt(_probe_value(row, "state", "r2"), 3)]
            cells += [_return_cell([row], s) for s in settings]
            lines.append(cells)
    return header, lines


def curve_tables(rows: list[dict]) -> list[tuple[str, list[str], list[list[str]]]]:
    """The figure's curves as tables, one per task x rollout setting: a line per label budget, a
    column per method, ``mean ± std (n)`` with ``n`` the training seeds behind the point (± over
    seeds when n > 1, else over that seed's episodes), so a reader sees which cells are still
    missing. Only when the results hold several budgets."""
    if len({r["num_labeled"] for r in rows if r["method"] not in REFERENCE_METHODS}) < 2:
        return []
    curves, settings = aggregate_returns(rows), _settings(rows)
    tables = []
    for task, setting in sorted(curves, key=lambda key: (key[0], settings.index(key[1]))):
        methods = curves[(task, setting)]
        names = [m for m in _order(methods) if m not in REFERENCE_METHODS]
        points = {m: {budget: (mean, std, n) for budget, mean, std, n in methods[m]} for m in names}
        budgets = sorted({b for m in names for b in points[m]})
        lines = []
        for budget in budgets:
            cells = [str(budget)]
            for m in names:
                point = points[m].get(budget)
                cells.append("—" if point is None else f"{point[0]:.3f} ± {point[1]:.3f} ({point[2]})")
            lines.append(cells)
        heading = f"Normalized return against labeled trajectories: {task} · {condition_label(setting, rows)}"
        tables.append((heading, ["labeled", *names], lines))
    return tables


def _fmt(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"


# ---------------------------------------------------------------- figures
#
# Every figure is laid out by matplotlib's constrained layout with one legend below the panels
# (never inside one), titles wrapped to their panel's width and panels wrapped into rows, so titles
# and legends cannot overlap whatever the number of conditions, tasks and methods.

PANEL_W, PANEL_H, MAX_COLUMNS = 4.0, 3.1, 4


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(labels: list[str]) -> dict[str, str]:
    """One colour per method, the same in every panel (tab20 past ten methods)."""
    if len(labels) <= 10:
        return {label: f"C{i}" for i, label in enumerate(labels)}
    from matplotlib import colormaps

    return {label: colormaps["tab20"](i % 20) for i, label in enumerate(labels)}


def _method_ticks(ax, labels: list[str]) -> None:
    """Method names along x, slanted so neighbours never touch (steeper for long names)."""
    rotation = 30 if max((len(label) for label in labels), default=0) <= 12 else 50
    ax.set_xticks(range(len(labels)), labels, rotation=rotation, ha="right", rotation_mode="anchor", fontsize=8)


def _wrap(text: str, width: int = 44) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def _panels(n: int, height: float = PANEL_H):
    """A figure with ``n`` panels, at most MAX_COLUMNS per row; the unused axes are removed."""
    plt = _pyplot()
    cols = min(n, MAX_COLUMNS)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(PANEL_W * cols, height * nrows + 0.9), squeeze=False,
                             layout="constrained")
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.remove()
    return fig, flat[:n]


def _legend_below(fig, axes) -> None:
    """One legend for the whole figure, under the panels, entries in the order first drawn."""
    entries: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if not label.startswith("_"):
                entries.setdefault(label, handle)
    references = [label for label in entries if label.split(" ")[0] in REFERENCE_METHODS]
    entries = {label: entries[label] for label in [x for x in entries if x not in references] + references}
    if entries:
        # as many columns as the figure's width holds (a one-panel figure is narrow), at most 8
        entry_inches = 0.5 + 0.065 * max(len(label) for label in entries)
        fits = max(1, min(8, int(fig.get_size_inches()[0] // entry_inches)))
        fig.legend(list(entries.values()), list(entries), loc="outside lower center",
                   ncol=math.ceil(len(entries) / math.ceil(len(entries) / fits)), fontsize=8, frameon=False)


def _save(fig, path: str) -> bool:
    """Write ``fig`` (None: nothing to draw) and free it; whether a file was written."""
    if fig is None:
        return False
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return True


def reference_levels(rows: list[dict]) -> dict:
    """{(task, setting): {"expert"|"random": (mean, std)}}: the references' normalized return, pooled
    over every evaluation that rolled them out (several: mean ± std over them; one: ± over episodes)."""
    runs: dict = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row["method"] in REFERENCE_METHODS:
            for setting, r in (row.get("rollouts") or {}).items():
                runs[(row["task"], setting)][row["method"]].append(r)
    out: dict = {}
    for key, methods in runs.items():
        out[key] = {}
        for method, rs in methods.items():
            if len(rs) == 1:
                out[key][method] = (rs[0]["normalized_mean"], rs[0]["normalized_std"])
            else:
                out[key][method] = _mean_std([r["normalized_mean"] for r in rs])
    return out


def aggregate_probe_r2(rows: list[dict], kind: str = "action", metric: str = "r2_pooled") -> dict:
    """{task: {method: [(num_labeled, mean, std, n)]}}: held-out ``kind`` probe R² per label budget
    (pooled over dims by default, see :func:`pooled_r2`), mean ± std over training seeds (std 0 with
    one seed)."""
    several = _several_data(rows)
    grouped: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for row in rows:
        r2 = _probe_value(row, kind, metric)
        if r2 is not None and not (isinstance(r2, float) and math.isnan(r2)):
            grouped[row["task"]][_label(row, several)][row["num_labeled"]].append(r2)
    return {task: {method: [(b, *_mean_std(v), len(v)) for b, v in sorted(budgets.items())]
                   for method, budgets in methods.items()}
            for task, methods in grouped.items()}


def _draw_budget_panel(ax, methods: dict, colors: dict, budgets: list[int]) -> None:
    """Mean ± std against label budget: a log x axis when there are several budgets; one budget
    (a single point per method) becomes a dot per method along x, which reads as a comparison."""
    lines = [m for m in _order(methods) if m not in REFERENCE_METHODS]
    if len(budgets) > 1:
        for method in lines:
            x, y, err = zip(*[(b, m, s) for b, m, s, _ in methods[method]], strict=True)
            ax.errorbar(x, y, yerr=err, marker="o", ms=4, capsize=3, color=colors[method], label=method)
        ax.set_xscale("log", base=2)
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.minorticks_off()
        ax.set_xlabel("labeled trajectories (log scale)")
    else:
        for i, method in enumerate(lines):
            _, y, err, _ = methods[method][0]
            ax.errorbar([i], [y], yerr=[err], marker="o", ms=6, capsize=4, color=colors[method], label=method)
        _method_ticks(ax, lines)
        ax.set_xlim(-0.6, len(lines) - 0.4)
        ax.set_xlabel(f"method ({budgets[0] if budgets else '—'} labeled trajectories)")
    ax.grid(alpha=0.3)


def plot_returns(rows: list[dict], path: str) -> bool:
    """:func:`returns_figure` saved to ``path``; False when there is nothing to draw."""
    return _save(returns_figure(rows), path)


def returns_figure(rows: list[dict]):
    """The paper's main figure: normalized return against labeled trajectories, a panel per task x
    rollout condition (both background splits), plus a panel per task of the held-out action
    probe's R²; a line per method, mean ± std over training seeds; expert and random as bands."""
    data = aggregate_returns([r for r in rows if r["method"] not in REFERENCE_METHODS])
    probes = aggregate_probe_r2(rows)
    references = reference_levels(rows)
    if not data and not probes:
        return None
    order = {s: i for i, s in enumerate(_settings(rows))}
    tasks = sorted({k[0] for k in data} | set(probes))
    panels = []  # (kind, task, setting)
    for task in tasks:
        panels += [("return", task, s) for s in sorted((k[1] for k in data if k[0] == task),
                                                      key=lambda s: (order.get(s, len(order)), s))]
        if task in probes:
            panels.append(("probe", task, None))
    labels = _order({m for panel in list(data.values()) + list(probes.values()) for m in panel})
    colors = _colors(labels)
    budgets = sorted({b for panel in list(data.values()) + list(probes.values()) for pts in panel.values()
                      for b, *_ in pts})
    fig, axes = _panels(len(panels))
    for ax, (kind, task, setting) in zip(axes, panels, strict=True):
        if kind == "return":
            _draw_budget_panel(ax, data[(task, setting)], colors, budgets)
            levels = references.get((task, setting), {})
            for ref, shade in (("expert", "0.25"), ("random", "0.6")):
                if ref in levels:
                    mean, std = levels[ref]
                    ax.axhspan(mean - std, mean + std, color=shade, alpha=0.18, lw=0)
                    ax.axhline(mean, ls="--", lw=1, color=shade, label=f"{ref} (mean ± std)")
            title = f"{task} · {condition_label(setting, rows)}"
            above = _zoom_below_expert(ax, data[(task, setting)], levels)
            if above is not None:
                title += f" (expert {above:.2f}, above the axis)"
            ax.set_ylabel("normalized return")
            ax.set_title(_wrap(title), fontsize=9)
        else:
            _draw_budget_panel(ax, probes[task], colors, budgets)
            ax.set_ylabel("held-out action probe R²")
            ax.set_title(_wrap(f"{task} · held-out action probe (pooled R²)"), fontsize=9)
    _legend_below(fig, axes)
    fig.suptitle(seed_spread([r for r in rows if r["method"] not in REFERENCE_METHODS], bool(data)), fontsize=9)
    return fig


EXPERT_ZOOM = 3.0  # zoom in when the expert's band starts this many times above every method's highest point


def _zoom_below_expert(ax, methods: dict, levels: dict) -> float | None:
    """Limit a return panel's y axis to the methods and the random level when the expert scores
    far above all of them: drawn to the expert's scale, policies at a tenth of it lie flat on the
    floor and the curve's differences cannot be read. Returns the expert's level when it zoomed
    (the panel's title says where the expert is), else None."""
    points = [(mean, std) for pts in methods.values() for _, mean, std, _ in pts]
    if "expert" not in levels or not points:
        return None
    highest = max(mean + std for mean, std in points)
    expert_mean, expert_std = levels["expert"]
    if highest <= 0 or expert_mean - expert_std < EXPERT_ZOOM * highest:
        return None
    lows = [mean - std for mean, std in points] + [0.0]
    if "random" in levels:
        lows.append(levels["random"][0] - levels["random"][1])
    margin = 0.08 * (highest - min(lows))
    ax.set_ylim(min(lows) - margin, highest + margin)
    return expert_mean


def seed_spread(rows: list[dict], episodes: bool) -> str:
    """What a point's ± is, from how many training seeds its points have: a sweep whose seeds are
    still landing has some points with several and some with one (``episodes``: the one-seed ones
    are spread over rollout episodes)."""
    counts = sorted({len(seeds_of(group)) or 1 for group in group_rows(rows)})
    if not counts or counts[-1] == 1:
        return "one training seed: ± is the std over its episodes" if episodes else "one training seed"
    if counts == [counts[0]]:
        return f"mean ± std over {counts[0]} training seeds"
    single = "; on one seed, ± over its episodes" if episodes and counts[0] == 1 else ""
    return f"mean ± std over {counts[0]}–{counts[-1]} training seeds per point{single}"


def own_objective(row: dict) -> float | None:
    """A history row's ``loss`` as the model's own objective. Runs trained before the probes were
    reported apart logged ``loss`` = objective + probe MSEs (and no ``probe/loss``): subtract them."""
    loss = row.get("loss")
    if loss is None or "probe/loss" in row:
        return loss
    return loss - sum(v for k, v in row.items() if k.startswith("probe/") and k.endswith("_mse"))


HELDOUT_R2 = "heldout/probe/action/r2"


def plot_training(rows: list[dict], path: str) -> bool:
    """:func:`training_figure` saved to ``path``; False when no run has a history."""
    return _save(training_figure(rows), path)


def training_figure(rows: list[dict]):
    """Each evaluated LAM's own objective against step (a panel per method, a line per run), and
    the held-out R² of its in-training action probe (the ``eval_every`` reports), read from the
    per-step history each run keeps on its storage (:mod:`raylam.train.metrics`). None when no
    run has a history."""
    from raylam.train.metrics import read_metrics

    several = _several_data(rows)
    runs: dict[str, tuple[str, list[dict]]] = {}  # LAM run -> (method, history); a LAM shared by rows once
    for row in rows:
        run = (row.get("runs") or {}).get("lam")
        if not run or run in runs:
            continue
        try:
            history = read_metrics(run)
        except (FileNotFoundError, OSError, ValueError):  # a run from before histories, or gone
            continue
        if history:
            runs[run] = (_label(row, several), history)
    if not runs:
        return None
    methods = _order({method for method, _ in runs.values()})
    colors = _colors(methods)
    has_r2 = any(HELDOUT_R2 in h for _, history in runs.values() for h in history)
    fig, axes = _panels(len(methods) + has_r2, height=2.8)
    for ax, method in zip(axes, methods, strict=False):
        for m, history in runs.values():
            if m == method:
                points = [(h["step"], own_objective(h)) for h in history if own_objective(h) is not None]
                ax.plot(*zip(*points, strict=True), color=colors[method], lw=1.2, alpha=0.85, label=method)
        ax.set(xlabel="step", ylabel="objective (loss, no probes)")
        ax.set_title(_wrap(f"{method}: its own training objective"), fontsize=9)
        ax.grid(alpha=0.3)
    if has_r2:
        ax = axes[-1]
        for method, history in runs.values():
            points = [(h["step"], h[HELDOUT_R2]) for h in history if HELDOUT_R2 in h]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", ms=3, color=colors[method], lw=1.2, label=method)
        ax.set(xlabel="step", ylabel="R² (held-out windows)")
        ax.set_title(_wrap("in-training action probe, held-out R²"), fontsize=9)
        ax.grid(alpha=0.3)
    _legend_below(fig, axes)
    fig.suptitle("one line per run (training seed, label budget)", fontsize=9)
    return fig


def plot_probes(rows: list[dict], path: str) -> bool:
    """:func:`probes_figure` saved to ``path``; False when no row was probed."""
    return _save(probes_figure(rows), path)


def probe_bars(rows: list[dict]) -> dict[str, list[dict]]:
    """The probed rows per bar of the probe figure: one bar per method, or per method and label
    budget when its rows differ by budget; a LAM run that several budgets share (a label-free one
    evaluated under each budget of a sweep, beside each budget's decoder) counts once."""
    several = _several_data(rows)
    seen, by_method = set(), defaultdict(list)
    for r in rows:
        lam = (r.get("runs") or {}).get("lam")  # the run the probes read
        same_run = (_label(r, several), r.get("seed"), lam)
        if lam and same_run in seen:
            continue
        seen.add(same_run)
        by_method[_label(r, several)].append(r)
    bars: dict[str, list[dict]] = {}
    for method, method_rows in by_method.items():
        budgets = sorted({r["num_labeled"] for r in method_rows}, key=lambda b: (b is None, b or 0))
        for budget in budgets:
            name = method if len(budgets) == 1 else f"{method} · {'all' if budget is None else budget} labeled"
            bars[name] = [r for r in method_rows if r["num_labeled"] == budget]
    return bars


def probes_figure(rows: list[dict]):
    """Held-out probe MSE per method (action probe from z, state probe from features), per label
    budget where a method's runs depend on it."""
    probed = [r for r in rows if r.get("probe")]
    if not probed:
        return None
    bars = probe_bars(probed)
    values = {name: {kind: [(r["probe"].get(kind) or {}).get("mse", math.nan) for r in group]  # skipped: {"skipped": ...}
                     for kind in ("action", "state")} for name, group in bars.items()}
    methods = _order(bars)
    colors = _colors(methods)
    counts = sorted({len(seeds_of(group)) or 1 for group in bars.values()})
    spread = (f"mean ± std over {counts[0]} seeds" if counts == [counts[0]] and counts[0] > 1
              else "one seed" if counts == [1] else f"mean ± std over {counts[0]}-{counts[-1]} seeds")
    fig, axes = _panels(2, height=3.0)
    for ax, kind in zip(axes, ("action", "state"), strict=True):
        stats = [_mean_std(values[m][kind]) if values[m][kind] else (float("nan"), 0.0) for m in methods]
        ax.bar(range(len(methods)), [s[0] for s in stats], yerr=[s[1] for s in stats], capsize=3,
               color=[colors[m] for m in methods])
        _method_ticks(ax, methods)
        skipped = all(math.isnan(v) for m in methods for v in values[m][kind])  # e.g. no states
        ax.set_ylabel("held-out MSE (lower is better)")
        ax.set_title(_wrap(f"{kind} probe: " + ("skipped" if skipped else f"held-out MSE ({spread})")), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    return fig


def save_strip(frames: np.ndarray, path: str, title: str) -> None:
    """A row of frames the policy saw while acting (first episode, evenly spaced)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(frames)
    fig, axes = plt.subplots(1, n, figsize=(1.3 * n, 1.6), squeeze=False)
    for ax, frame in zip(axes[0], frames, strict=True):
        ax.imshow(frame)
        ax.axis("off")
    fig.suptitle(_wrap(title, max(24, 14 * n)), fontsize=9)  # ~14 characters per frame's width
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(results: dict, output: str, strips: dict | None = None) -> str:
    """Figures + ``report.md`` + ``report.html`` in ``output``, a local directory or any URI
    pyarrow.fs writes (s3://, gs://, ...); returns where the Markdown went.

    The files are rendered into a local staging folder, then each is written to ``output``
    through a temporary name and renamed, so a reader never sees half a report file.
    """
    import tempfile

    out = resolve(output)
    out.makedirs()
    with tempfile.TemporaryDirectory(prefix="raylam-report-") as staging:
        _render_report(results, staging, strips)
        for name in sorted(os.listdir(staging)):
            with open(os.path.join(staging, name), "rb") as f:
                data = f.read()
            out.write_atomic(name, lambda stream, data=data: stream.write(data))
    return out.url(REPORT_MD)


def _render_report(results: dict, output: str, strips: dict | None) -> None:
    """The report's files in the local directory ``output``."""
    rows = results["rows"]
    figures = []
    if plot_returns(rows, os.path.join(output, FIG_RETURN)):
        figures.append((FIG_RETURN, "Normalized return (return / expert return) and held-out action probe R² "
                                    "vs labeled trajectories"))
    if plot_probes(rows, os.path.join(output, FIG_PROBE)):
        figures.append((FIG_PROBE, "Linear probes on held-out episodes"))
    if plot_training(rows, os.path.join(output, FIG_TRAINING)):
        figures.append((FIG_TRAINING, "Each latent action model's own training objective (probes apart) "
                                      "and its in-training action probe's held-out R²"))
    strip_files = []
    for method in _order(strips or {}):
        for setting, frames in strips[method].items():
            if len(frames):
                name = f"frames_{method}_{setting.replace('/', '-')}.png"
                label = condition_label(setting, rows)
                save_strip(frames, os.path.join(output, name), f"{method} acting · {label}")
                strip_files.append((name, f"{method} · {label}"))
    tables = [("", *table_rows(rows)), *curve_tables(rows)]
    if any(len(g) > 1 for g in group_rows(rows)):
        tables.append(("Per training seed", *seed_table_rows(rows)))
    title = f"raylam report: {results.get('experiment', '')}"
    caption = _caption(results)
    md = [f"# {title}", "", caption, ""]
    for heading, header, lines in tables:
        md += ([f"## {heading}", ""] if heading else []) + ["| " + " | ".join(header) + " |",
                                                          "|" + "---|" * len(header)]
        md += ["| " + " | ".join(cells) + " |" for cells in lines] + [""]
    md += [f"![{alt}]({name})\n" for name, alt in figures + strip_files]
    md_path = os.path.join(output, REPORT_MD)
    with open(md_path, "w") as f:
        f.write("\n".join(md))
    tables_html = ""
    for heading, header, lines in tables:
        cells_html = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in lines)
        tables_html += ((f"<h2>{html.escape(heading)}</h2>" if heading else "") + "<table><tr>"
                        + "".join(f"<th>{html.escape(h)}</th>" for h in header) + f"</tr>{cells_html}</table>")
    images = "".join(f'<figure><img src="{n}" alt="{html.escape(a)}"><figcaption>{html.escape(a)}</figcaption>'
                     "</figure>" for n, a in figures + strip_files)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p>{html.escape(caption)}</p>{tables_html}{images}</body></html>")
    with open(os.path.join(output, REPORT_HTML), "w") as f:
        f.write(page)


def _caption(results: dict) -> str:
    from raylam.eval.config import SPLIT_LABELS

    rows = results.get("rows") or []
    seeds = seeds_of(rows)
    several = any(len(g) > 1 for g in group_rows(rows))
    parts = [f"Training seeds: {len(seeds)} ({', '.join(map(str, seeds))})." if seeds else "Training seeds: —.",
             "Probes: ridge regression fitted on training episodes, scored on held-out "
             "episodes (R² = 1 − SSE/SST per dim, averaged over dims; pooled R² = 1 − ΣSSE/ΣSST over dims, "
             "which the figure plots: a dim that barely varies cannot swing it). "
             "In-training probe: the paper's diagnostic, a linear probe on z(o_t, o_t+k) trained beside the LAM "
             "(its own constant learning rate), scored on held-out windows at the end of training."]
    rollout = (results.get("config") or {}).get("rollout") or {}
    splits = rollout.get("background_splits") or ([rollout["background_split"]] if rollout.get("background_split")
                                                  else [])
    meaning = {"train": "the train split, the background videos of the training data (LAOM's released "
                        "evaluation)", "eval": "the eval split, videos no training frame showed"}
    if rollout:
        where = "; ".join(f"“{SPLIT_LABELS.get(s, s)}” = {meaning.get(s, s)}" for s in splits)
        parts.append(f"Rollouts: {rollout.get('episodes')} episodes per setting (and per background split in "
                     "settings with background videos) on Ray actors"
                     + (f"; {where}" if where else "")
                     + ". Normalized return = return / expert return (scaled to the episode length).")
    if results.get("evaluations"):
        parts.append("Evaluations: " + "; ".join(results["evaluations"]) + ".")
    parts.append("± is the std over training seeds (each seed's mean over its episodes) on lines with several "
                 "seeds, else the std over episodes." if several else
                 "± is the std over episodes (one training seed per line).")
    return " ".join(parts)
