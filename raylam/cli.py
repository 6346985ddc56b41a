"""The ``raylam`` command: thin wrappers that parse arguments, load a config and call a stage."""

from __future__ import annotations

import argparse
import json
import os
import sys

from raylam.cluster import require_cluster_paths
from raylam.config import ConfigError, UserError, to_dict


def _add_config_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--config", "-c", required=required, help="experiment YAML file (configs/*.yaml)")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE",
        help="dotted overrides, e.g. collect.episodes=4 collect.env.preset=hard",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def _add_seeds_arg(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--seeds", metavar="0,1,2", help=f"training seeds ({what}; the same as the override "
                                                           "seeds=[0,1,2]; default: the config's `seeds`)")


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--seeds: got {text!r}, expected comma-separated integers, e.g. 0,1,2") from None
    if not seeds:
        raise ConfigError(f"--seeds: got {text!r}, expected at least one seed")
    return seeds


def _load(args):
    """The experiment of ``--config`` plus overrides, checked against what the command will touch."""
    from raylam.checks import check_experiment
    from raylam.experiment import load_experiment

    overrides = list(args.overrides)
    if getattr(args, "seeds", None):
        overrides.append(f"seeds={parse_seeds(args.seeds)}")
    cfg = load_experiment(args.config, overrides)
    if args.print_config:
        print(json.dumps(to_dict(cfg), indent=2))
        sys.exit(0)
    check_experiment(cfg, args.command)
    return cfg


def cmd_collect(args) -> int:
    cfg = _load(args)
    require_cluster_paths(cfg, train=False, evaluate=False)
    from raylam.data.collect import collect

    manifest = collect(cfg.collect)
    ret = manifest["episode_return"]
    print(
        f"wrote {manifest['num_episodes']} episodes ({manifest['num_transitions']} frames, "
        f"{len(manifest['shards'])} shards, {manifest['num_labeled']} labeled) to {cfg.collect.output}; "
        f"return {ret['mean']:.1f} ± {ret['std']:.1f}"
    )
    return 0


def cmd_ingest(args) -> int:
    from raylam.data.ingest import ingest

    cfg = _load(args).ingest
    cfg.require_inputs()  # an experiment file without an `ingest` section fails here, naming the key
    m = ingest(cfg)
    print(f"wrote {m['num_episodes']} episodes ({m['num_transitions']} frames, {len(m['shards'])} shards, "
          f"{m['num_labeled']} labeled, {len(m['splits']['heldout'])} held-out shards) to {cfg.output}; "
          f"available: {m['available']}")
    return 0


def cmd_train(args) -> int:
    cfg = _load(args)
    from raylam.train.trainer import train

    if not cfg.stages:
        print(f"raylam train: {args.config} defines no `stages`", file=sys.stderr)
        return 2
    indices = [cfg.stage_index(name) for name in args.stage] if args.stage else range(len(cfg.stages))
    require_cluster_paths(cfg, collect=False, evaluate=False)
    plan = [(seed, i) for seed in cfg.seed_list() for i in indices]
    for k, (seed, i) in enumerate(plan, 1):
        stage = cfg.stage(i, seed)
        what = f"labels from {stage.lam_run}" if not stage.kind.trains else stage.model.method
        print(f"== stage {k}/{len(plan)} {stage.run_name}: {stage.stage} ({what}, seed {seed}) -> "
              f"{stage.storage_path}/{stage.run_name}", flush=True)
        result = train(stage, cfg.name, fresh=args.force, label=f"[{k}/{len(plan)}] {stage.run_name}")
        shown = {name: round(v, 4) for name, v in result.metrics.items()
                 if name in ("loss", "step", "samples_per_s", "num_labels")}
        print(f"== stage {k}/{len(plan)} {stage.run_name} done: {shown}", flush=True)
    return 0


def cmd_metrics(args) -> int:
    """Print (or save as CSV) a run's per-step history, read from wherever the run lives."""
    import csv

    from raylam.train.metrics import read_metrics

    rows = read_metrics(args.run)
    if not rows:
        print(f"raylam metrics: {args.run} has no reported steps yet", file=sys.stderr)
        return 1
    keys = sorted({k for row in rows for k in row})
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {len(rows)} rows x {len(keys)} metrics to {args.csv}")
        return 0
    shown = [k for k in ("step", "epoch", "loss", "lr", "samples_per_s", "data_wait_fraction") if k in keys]
    print(" ".join(f"{k:>14}" for k in shown))
    for row in rows[-args.last:]:
        print(" ".join(f"{row.get(k, float('nan')):>14.6g}" for k in shown))
    print(f"({len(rows)} reported steps; {len(keys)} metrics, all of them with --csv FILE)")
    return 0


def cmd_evaluate(args) -> int:
    from raylam.checks import check_output_dir, check_reachable, check_runs_exist
    from raylam.eval.config import MethodRuns
    from raylam.eval.evaluate import evaluate_methods

    if not args.config and not args.lam:
        raise UserError("give --config FILE (its evaluate.methods), or --lam RUN")
    cfg = _load(args)
    evaluation = cfg.evaluate
    if args.lam:  # ad hoc: probe these LAM runs, named by their directory
        evaluation.methods = [MethodRuns(name=path.rstrip("/").rsplit("/", 1)[-1], lam=path) for path in args.lam]
    if not evaluation.methods:
        print("raylam evaluate: nothing to evaluate: give --lam RUN or a config with evaluate.methods", file=sys.stderr)
        return 2
    output = args.output or cfg.eval_output()
    if args.output:
        cfg.evaluate.output = args.output
    probes, rollouts = (args.probe or not args.rollout), (args.rollout or not args.probe)
    roots = cfg.run_root() if args.lam else cfg.seed_roots()  # --lam names its runs itself
    check_runs_exist(evaluation.methods, {None: roots} if isinstance(roots, str) else roots)
    check_output_dir(output, "--output")
    check_reachable(output, "--output")
    require_cluster_paths(cfg, collect=False, train=bool(args.dataset))
    evaluate_methods(evaluation, roots, output, dataset=args.dataset, probes=probes, rollouts=rollouts,
                     experiment=cfg.name)
    print(f"results: {output}/results.json\nreport: {output}/report.md ({output}/report.html)")
    return 0


def cmd_report(args) -> int:
    from raylam.checks import check_output_dir
    from raylam.eval.report import merge_results, write_report

    check_output_dir(args.output, "--output")
    path = write_report(merge_results(args.runs), args.output)
    print(f"report: {path} ({len(args.runs)} evaluations merged)")
    return 0


def cmd_pipeline(args) -> int:
    from raylam.pipeline import run_pipeline

    methods = args.methods.split(",") if args.methods else None
    out = run_pipeline(_load(args), force=args.force, methods=methods)  # checks the paths once Ray is up
    t = out["timings"]
    seeds = sorted({r["seed"] for r in out["results"]["rows"] if r.get("seed") is not None})
    print(f"pipeline done in {t['total'] / 60:.1f} min (collect {t['collect']:.0f} s, evaluate {t['evaluate']:.0f} s; "
          f"training seeds {', '.join(map(str, seeds)) or '—'})")
    print(f"report: {out['report']} ({out['output']}/report.html)")
    return 0


def cmd_export(args) -> int:
    from raylam.export import describe, export_run

    path = export_run(args.run, args.output, decoder_dir=args.decoder)
    with open(path) as f:
        config = json.load(f)
    print(f"exported {describe(config)} to {args.output} (load with raylam.load({args.output!r}))")
    return 0


def cmd_inspect(args) -> int:
    from raylam.data.inspect import frame_grid, inspect_dataset

    report = inspect_dataset(args.dataset)
    print(report.summary())
    if args.grid:
        if report.manifest.get("physics_dim", 0):  # re-rendering needs MuJoCo; imported data has no physics
            from raylam.envs.render import configure_rendering

            configure_rendering("auto")
        frame_grid(args.dataset, args.grid, clips=args.clips, seed=args.seed)
        print(f"frame grid written to {args.grid}")
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raylam", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("collect", help="roll out experts in the distracting env, write WebDataset shards")
    _add_config_args(p)
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser("ingest", help="turn your own videos, frame folders, LeRobot v3 or LAOM HDF5 data into shards")
    _add_config_args(p)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("train", help="run the training stages of an experiment on Ray Train (all, or --stage)")
    _add_config_args(p)
    p.add_argument("--stage", action="append", metavar="RUN_NAME", help="run only this stage (repeatable)")
    p.add_argument("--force", action="store_true",
                   help="train from scratch even where a run of this very stage left checkpoints (default: resume)")
    _add_seeds_arg(p, "every stage runs once per seed, each seed in <runs>/<name>/seed<k>")
    p.set_defaults(func=cmd_train)

    from raylam.tune import add_tune_parser

    add_tune_parser(sub)

    p = sub.add_parser("evaluate", help="probes of the LAMs and rollouts of the policies; results.json + report")
    _add_config_args(p, required=False)
    p.add_argument("--probe", action="store_true", help="only the linear probes")
    p.add_argument("--rollout", action="store_true", help="only the rollouts")
    p.add_argument("--lam", action="append", metavar="RUN", help="probe this LAM/IDM run directory (repeatable)")
    p.add_argument("--dataset", help="dataset to evaluate on (default: the one each run trained on)")
    p.add_argument("--output", help="report directory (default: evaluate.output or <runs>/<name>/eval)")
    _add_seeds_arg(p, "evaluate every seed's runs and report mean ± std over the seeds")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("metrics", help="a run's per-step training history (on any storage)")
    p.add_argument("run", help="run directory or URI, e.g. runs/quickstart/laom_sup or s3://bucket/runs/x/laom")
    p.add_argument("--last", type=int, default=20, help="rows shown (default 20)")
    p.add_argument("--csv", metavar="FILE", help="write every row and metric to a CSV file instead")
    p.set_defaults(func=cmd_metrics)

    p = sub.add_parser("report", help="merge the results of many evaluations into one table and figure")
    p.add_argument("runs", nargs="+", metavar="EVAL", help="evaluation directories or results.json files")
    p.add_argument("--output", "-o", default="report", help="directory for the merged report")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("pipeline", help="collect -> train every stage -> evaluate -> report, in one go")
    _add_config_args(p)
    p.add_argument("--force", action="store_true", help="retrain every stage from scratch, also those already finished with this config and inputs")
    p.add_argument("--methods", metavar="A,B", help="only these evaluate.methods and the stages they need")
    _add_seeds_arg(p, "the chain runs once per seed; one merged report, mean ± std over the seeds")
    p.set_defaults(func=cmd_pipeline)

    p = sub.add_parser("export", help="a finished run as safetensors + config.json, loadable without Ray "
                                      "(raylam.load)")
    p.add_argument("run", help="run directory of a finished stage (a LAM, IDM, bc or latent_bc policy)")
    p.add_argument("--output", "-o", required=True, help="directory for model.safetensors and config.json")
    p.add_argument("--decoder", metavar="RUN", help="the action_decoder run of a latent_bc policy: exported with "
                                                   "it, loads as one acting policy")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("inspect", help="validate a dataset and print a summary; optional PNG of frames")
    p.add_argument("dataset", help="dataset directory or URI")
    p.add_argument("--grid", metavar="PNG", help="write a grid of recorded vs clean frames")
    p.add_argument("--clips", type=int, default=3, help="clips in the grid")
    p.add_argument("--seed", type=int, default=0, help="which clips to show")
    p.set_defaults(func=cmd_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Ray Data logs every dataset execution at INFO; a training run executes its datasets every
    # epoch. Keep warnings (workers started by a local ray.init() inherit this; set it to INFO to see all).
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
    # Ray Train's controller polls its workers every 2 s by default, which every stage pays at start
    # and at the end; 0.5 s costs nothing measurable and a pipeline of 16 stages saves ~1 min.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as err:  # a mistake in what was asked: one line; anything else is a bug and keeps its traceback
        kind = "config error: " if isinstance(err, ConfigError) else ""
        print(f"raylam {args.command}: {kind}{err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:  # a path the user named
        print(f"raylam {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
