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
import math
import os
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


def merge_results(paths: list[str]) -> dict:
    """One results document holding the rows of every evaluation in ``paths`` (each row keeps its source)."""
    from raylam.eval.evaluate import RESULTS_FORMAT

    if not paths:
        raise ValueError("report: give at least one evaluation directory or results.json")
    rows, rollout_configs = [], []
    for path in paths:
        results = load_results(path)
        rollout_configs.append((results.get("config") or {}).get("rollout"))
        for row in results["rows"]:
            rows.append({**row, "source": path})
    merged = {"format": RESULTS_FORMAT, "experiment": "merged", "sources": list(paths),
              "seeds": sorted({r["seed"] for r in rows if r.get("seed") is not None}), "rows": rows}
    if rollout_configs[0] and all(c == rollout_configs[0] for c in rollout_configs):
        merged["config"] = {"rollout": rollout_configs[0]}  # the caption can describe the rollouts
    return merged


def _order(methods) -> list[str]:
    known = [m for m in METHOD_ORDER if m in methods]
    return known + sorted(m for m in methods if m not in METHOD_ORDER)


def _rank(method: str) -> int:
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


REFERENCE_METHODS = ("expert", "random")


def _settings(rows: list[dict]) -> list[str]:
    """The rollout conditions (keys of ``rollouts``) in the order they first appear."""
    seen: dict[str, None] = {}
    for row in rows:
        for setting in row.get("rollouts") or {}:
            seen.setdefault(setting)
    return list(seen)


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
    return ((row.get("probe") or {}).get(kind) or {}).get(metric)


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
                                                                  "action probe R²", "state probe R²",
                                                                  "in-training action probe R²"]
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
                  _stat([_probe_value(r, "state", "r2") for r in group], 3),
                  _stat([(r.get("training_probe") or {}).get("heldout/probe/action/r2") for r in group], 3)]
        cells += [_return_cell(group, s) for s in settings]
        lines.append(cells)
    return header, lines


def seed_table_rows(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the per-seed table: one line per row of the results (references excluded)."""
    settings = _settings(rows)
    header = ["method", "task", "labeled", "seed", "action probe MSE", "action probe R²", "state probe R²"]
    header += [f"normalized return ({condition_label(s, rows)})" for s in settings]
    several = _several_data(rows)
    lines = []
    for group in group_rows([r for r in rows if r["method"] not in REFERENCE_METHODS]):
        for row in group:
            cells = [_label(row, several), row["task"], str(row["num_labeled"]), _fmt(row.get("seed"), 0),
                     _fmt(_probe_value(row, "action", "mse"), 4), _fmt(_probe_value(row, "action", "r2"), 3),
                     _fmt(_probe_value(row, "state", "r2"), 3)]
            cells += [_return_cell([row], s) for s in settings]
            lines.append(cells)
    return header, lines


def _fmt(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"


def plot_returns(rows: list[dict], path: str) -> bool:
    """Normalized return vs labeled trajectories, a line per method, a panel per task x setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = aggregate_returns(rows)
    if not data:
        return False
    order = {s: i for i, s in enumerate(_settings(rows))}
    keys = sorted(data, key=lambda k: (k[0], order.get(k[1], len(order)), k[1]))
    seeds = seeds_of(rows)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        methods = data[key]
        budgets = sorted({b for m in methods if m not in ("expert", "random") for b, *_ in methods[m]}) or [1]
        for method in _order(methods):
            points = methods[method]
            if method in ("expert", "random"):  # references: a level across the budgets
                ax.axhline(points[0][1], ls="--", lw=1, color="0.3" if method == "expert" else "0.7", label=method)
                continue
            x, y, err = zip(*[(b, m, s) for b, m, s, _ in points], strict=True)
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=method)
        ax.set_xscale("log", base=2)
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.set_xlabel("labeled trajectories")
        ax.set_ylabel("normalized return")
        ax.set_title(f"{key[0]} · {condition_label(key[1], rows)}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="best")
    if len(seeds) > 1:
        fig.suptitle(f"mean ± std over {len(seeds)} training seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_training(rows: list[dict], path: str) -> bool:
    """Training loss against step of every evaluated LAM run, read from the per-step history each
    run keeps beside it on its storage (:mod:`raylam.train.metrics`); False when none has one."""
    from raylam.train.metrics import read_metrics

    curves = []
    for row in rows:
        run = (row.get("runs") or {}).get("lam")
        if not run:
            continue
        try:
            history = read_metrics(run)
        except (FileNotFoundError, OSError, ValueError):  # a run from before histories, or gone
            continue
        if history:
            label = row["method"] + (f" (seed {row['seed']})" if row.get("seed") is not None else "")
            curves.append((label, [r["step"] for r in history], [r["loss"] for r in history]))
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for label, steps, losses in curves:
        ax.plot(steps, losses, label=label)
    ax.set(xlabel="step", ylabel="training loss")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_probes(rows: list[dict], path: str) -> bool:
    """Held-out probe MSE per method (action probe from z, state probe from features)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probed = [r for r in rows if r.get("probe")]
    if not probed:
        return False
    several = _several_data(probed)
    by_method: dict = defaultdict(lambda: {"action": [], "state": []})
    for r in probed:
        for kind in ("action", "state"):
            probe = r["probe"].get(kind) or {}  # a skipped probe: {"skipped": reason}
            by_method[_label(r, several)][kind].append(probe.get("mse", math.nan))
    methods = _order(by_method)
    seeds = seeds_of(probed)
    spread = f"mean ± std over {len(seeds)} seeds" if len(seeds) > 1 else "lower is better"
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.2))
    for ax, kind in zip(axes, ("action", "state"), strict=True):
        stats = [_mean_std(by_method[m][kind]) if by_method[m][kind] else (float("nan"), 0.0) for m in methods]
        ax.bar(methods, [s[0] for s in stats], yerr=[s[1] for s in stats], capsize=3,
               color=[f"C{i}" for i in range(len(methods))])
        skipped = all(math.isnan(v) for m in methods for v in by_method[m][kind])  # e.g. no states
        ax.set_title(f"{kind} probe: " + ("skipped" if skipped else f"held-out MSE ({spread})"), fontsize=10)
        ax.tick_params(axis="x", rotation=30)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


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
    fig.suptitle(title, fontsize=9)
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
        figures.append((FIG_RETURN, "Normalized return (return / expert return) vs labeled trajectories"))
    if plot_probes(rows, os.path.join(output, FIG_PROBE)):
        figures.append((FIG_PROBE, "Linear probes on held-out episodes"))
    if plot_training(rows, os.path.join(output, FIG_TRAINING)):
        figures.append((FIG_TRAINING, "Training loss of the latent action models (their per-step history)"))
    strip_files = []
    for method in _order(strips or {}):
        for setting, frames in strips[method].items():
            if len(frames):
                name = f"frames_{method}_{setting.replace('/', '-')}.png"
                label = condition_label(setting, rows)
                save_strip(frames, os.path.join(output, name), f"{method} acting · {label}")
                strip_files.append((name, f"{method} · {label}"))
    tables = [("", *table_rows(rows))]
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
             "Probes: ridge regression fitted on training episodes, scored on held-out episodes (R² = 1 − SSE/SST). "
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
