"""Reports a person can read: a table, the paper's figure shapes and frame strips, in Markdown and HTML.

``write_report(results, out)`` renders one evaluation; ``merge_results`` joins the results of many
evaluations (tasks, label budgets, seeds) so ``raylam report RUNS...`` draws them as one figure:
normalized return against the number of labeled trajectories per method, as in the paper.
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
FIG_RETURN, FIG_PROBE = "normalized_return.png", "probe_mse.png"


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
    rows = []
    for path in paths:
        for row in load_results(path)["rows"]:
            rows.append({**row, "source": path})
    return {"format": RESULTS_FORMAT, "experiment": "merged", "sources": list(paths), "rows": rows}


def _order(methods) -> list[str]:
    known = [m for m in METHOD_ORDER if m in methods]
    return known + sorted(m for m in methods if m not in METHOD_ORDER)


def _rank(method: str) -> int:
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


def _settings(rows: list[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        for setting in row.get("rollouts") or {}:
            seen.setdefault(setting)
    return list(seen)


def _mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std()) if len(arr) > 1 else 0.0


def aggregate_returns(rows: list[dict]) -> dict:
    """{(task, setting): {method: [(num_labeled, mean, std, n)]}}: normalized return per label budget.

    With several seeds the spread is across seeds (each seed's mean over its episodes); with one
    seed it is across that seed's episodes.
    """
    grouped: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for row in rows:
        for setting, r in (row.get("rollouts") or {}).items():
            grouped[(row["task"], setting)][row["method"]][row["num_labeled"]].append(r)
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


def table_rows(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the summary table (one line per row of the results)."""
    settings = _settings(rows)
    header = ["method", "task", "labeled", "seed", "action probe MSE", "action probe R²", "state probe R²"]
    header += [f"normalized return ({s})" for s in settings]
    lines = []
    for row in sorted(rows, key=lambda r: (r["task"], _rank(r["method"]), r["method"], r["num_labeled"], r["seed"])):
        probe = row.get("probe") or {}
        action, state = probe.get("action") or {}, probe.get("state") or {}
        cells = [row["method"], row["task"], str(row["num_labeled"]) if row["method"] not in ("expert", "random") else "—",
                 str(row["seed"]), _fmt(action.get("mse"), 4), _fmt(action.get("r2"), 3), _fmt(state.get("r2"), 3)]
        for s in settings:
            r = (row.get("rollouts") or {}).get(s)
            cells.append("—" if r is None else f"{r['normalized_mean']:.3f} ± {r['normalized_std']:.3f}")
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
    keys = sorted(data)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
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
        ax.set_title(f"{key[0]} · {key[1]}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="best")
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
    by_method: dict = defaultdict(lambda: {"action": [], "state": []})
    for r in probed:
        for kind in ("action", "state"):
            by_method[r["method"]][kind].append(r["probe"][kind]["mse"])
    methods = _order(by_method)
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.2))
    for ax, kind in zip(axes, ("action", "state"), strict=True):
        stats = [_mean_std(by_method[m][kind]) for m in methods]
        ax.bar(methods, [s[0] for s in stats], yerr=[s[1] for s in stats], capsize=3,
               color=[f"C{i}" for i in range(len(methods))])
        ax.set_title(f"{kind} probe: held-out MSE (lower is better)", fontsize=10)
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
    """Figures + ``report.md`` + ``report.html`` in ``output`` (a local directory); returns the Markdown path."""
    if "://" in output:
        raise ValueError(f"report: {output} is remote; write reports to a local directory")
    os.makedirs(output, exist_ok=True)
    rows = results["rows"]
    figures = []
    if plot_returns(rows, os.path.join(output, FIG_RETURN)):
        figures.append((FIG_RETURN, "Normalized return (return / expert return) vs labeled trajectories"))
    if plot_probes(rows, os.path.join(output, FIG_PROBE)):
        figures.append((FIG_PROBE, "Linear probes on held-out episodes"))
    strip_files = []
    for method in _order(strips or {}):
        for setting, frames in strips[method].items():
            if len(frames):
                name = f"frames_{method}_{setting}.png"
                save_strip(frames, os.path.join(output, name), f"{method} acting · {setting}")
                strip_files.append((name, f"{method} · {setting}"))
    header, lines = table_rows(rows)
    title = f"raylam report: {results.get('experiment', '')}"
    md = [f"# {title}", "", _caption(results), "", "| " + " | ".join(header) + " |",
          "|" + "---|" * len(header)]
    md += ["| " + " | ".join(cells) + " |" for cells in lines]
    md += [""] + [f"![{alt}]({name})\n" for name, alt in figures + strip_files]
    md_path = os.path.join(output, REPORT_MD)
    with open(md_path, "w") as f:
        f.write("\n".join(md))
    cells_html = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in lines)
    images = "".join(f'<figure><img src="{n}" alt="{html.escape(a)}"><figcaption>{html.escape(a)}</figcaption>'
                     "</figure>" for n, a in figures + strip_files)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p>{html.escape(_caption(results))}</p><table><tr>"
            + "".join(f"<th>{html.escape(h)}</th>" for h in header) + f"</tr>{cells_html}</table>{images}</body></html>")
    with open(os.path.join(output, REPORT_HTML), "w") as f:
        f.write(page)
    return md_path


def _caption(results: dict) -> str:
    rollout = (results.get("config") or {}).get("rollout") or {}
    parts = ["Probes: ridge regression fitted on training episodes, scored on held-out episodes (R² = 1 − SSE/SST)."]
    if rollout:
        parts.append(f"Rollouts: {rollout.get('episodes')} episodes per setting on Ray actors, "
                     f"{rollout.get('background_split')} background videos; normalized return = return / expert "
                     "return (scaled to the episode length); ± is the std over episodes (or seeds when merged).")
    return " ".join(parts)
