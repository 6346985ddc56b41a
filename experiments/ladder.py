"""The ladder table: every rung's held-out action probes, mean ± std over training seeds.

Reads what `raylam pipeline --config configs/ladder/reduced.yaml` (or any LAM-only experiment of
the same shape, e.g. experiments/laom_recipe.yaml) left behind and prints one markdown row per rung:

- the held-out ridge probe of `raylam evaluate` (closed form, fitted on the training split's
  windows, scored on the held-out episodes): MSE and R^2, from the report's results.json;
- the paper's in-training linear probe (trained beside the LAM on detached latents, the
  figure the paper's ladder reports), scored on held-out windows at the last step: MSE and R^2,
  from each run's metrics history (`heldout/probe/action/*`).

It also writes the rows as JSON (``--out``) so the table in docs/ can be regenerated and merged
with later seeds.

    python experiments/ladder.py                                   # ladder_reduced
    python experiments/ladder.py --experiment laom_recipe --out docs/ladder/recipe.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from raylam.train.metrics import read_metrics

# The paper's figure (median in-training action-probe MSE over its four distracting datasets).
PAPER_MSE = {"lapo_k1": 22.09, "lapo_multistep": 9.54, "lapo_latent": 3.89, "laom_noaug": 5.22, "laom": 2.74}


def mean_std(values: list[float]) -> tuple[float, float] | None:
    values = [v for v in values if v is not None and v == v]
    if not values:
        return None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(stat: tuple[float, float] | None, digits: int = 3) -> str:
    return "—" if stat is None else f"{stat[0]:.{digits}f} ± {stat[1]:.{digits}f}"


def in_training_probe(run_dir: Path) -> dict[str, float | None]:
    """The last held-out evaluation of the run's in-training action probe (None when absent)."""
    rows = [r for r in read_metrics(str(run_dir)) if "heldout/probe/action/mse" in r]
    if not rows:
        return {"mse": None, "r2": None}
    last = rows[-1]
    return {"mse": last["heldout/probe/action/mse"], "r2": last.get("heldout/probe/action/r2"),
            "step": last.get("step")}


def collect(results_path: Path) -> dict[str, list[dict]]:
    """rung -> one record per seed, from the report's results.json and the runs' histories."""
    results = json.loads(results_path.read_text())
    rungs: dict[str, list[dict]] = {}
    for row in results["rows"]:
        if not row.get("probe"):
            continue
        lam = row["runs"]["lam"]
        record = {"seed": row["seed"], "ridge_mse": row["probe"]["action"]["mse"],
                  "ridge_r2": row["probe"]["action"]["r2"], "run": lam}
        probe = in_training_probe(Path(lam))
        record.update({"probe_mse": probe["mse"], "probe_r2": probe["r2"], "probe_step": probe.get("step")})
        rungs.setdefault(row["method"], []).append(record)
    return rungs


def table(rungs: dict[str, list[dict]]) -> str:
    lines = ["| rung | seeds | held-out ridge probe R² | ridge MSE | in-training probe R² (held out) | "
             "in-training probe MSE | paper (in-training MSE) |",
             "|---|---|---|---|---|---|---|"]
    for name, records in rungs.items():
        paper = PAPER_MSE.get(name)
        lines.append(
            f"| {name} | {len(records)} | {fmt(mean_std([r['ridge_r2'] for r in records]))} | "
            f"{fmt(mean_std([r['ridge_mse'] for r in records]), 2)} | "
            f"{fmt(mean_std([r['probe_r2'] for r in records]))} | "
            f"{fmt(mean_std([r['probe_mse'] for r in records]), 2)} | {'—' if paper is None else paper} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="ladder_reduced", help="experiment name (its run root)")
    parser.add_argument("--runs", default="runs", help="storage_path of the experiment")
    parser.add_argument("--eval", nargs="+", default=["eval"],
                        help="the evaluation folders inside the run root (several: their seeds are merged)")
    parser.add_argument("--out", default=None, help="write the per-seed records as JSON here")
    args = parser.parse_args()
    rungs: dict[str, list[dict]] = {}
    for folder in args.eval:
        for name, records in collect(Path(args.runs) / args.experiment / folder / "results.json").items():
            rungs.setdefault(name, []).extend(records)
    print(table(rungs))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"experiment": args.experiment, "rungs": rungs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
