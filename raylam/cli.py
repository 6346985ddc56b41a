"""The raylam command: thin wrappers that parse arguments, load a config and call a stage.

Imports stay inside the commands so that `raylam --help` answers at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from raylam import __version__
from raylam.config import ConfigError, UserError, to_dict

DESCRIPTION = """\
raylam learns latent actions from video full of distractors, on Ray.

Every command reads and writes a directory (or s3:// / gs:// URI) that the next one takes:
  collect or ingest -> train -> evaluate -> report    (or all of them: pipeline)
Start with the quickstart, which runs on a CPU laptop:
  raylam pipeline --config configs/quickstart.yaml
Run `raylam COMMAND --help` for a command's options and examples."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks and shows a default wherever one means something."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or "default" in text or default in (None, False, argparse.SUPPRESS)
                or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)"


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _add_verbose_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", "-v", action="store_true", default=argparse.SUPPRESS,
                        help="show every line Ray prints (by default its known noise is filtered)")


def _add_config_args(parser: argparse.ArgumentParser, example: str, required: bool = True) -> None:
    parser.add_argument("--config", "-c", required=required, help="experiment YAML file (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help=f"dotted overrides of the config, e.g. {example}")
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


def _experiment(args):
    """The experiment of ``--config`` plus overrides and ``--seeds``, validated; nothing else touched."""
    from raylam.experiment import load_experiment

    overrides = list(args.overrides)
    if getattr(args, "seeds", None):
        overrides.append(f"seeds={parse_seeds(args.seeds)}")
    return load_experiment(args.config, overrides)


def _load(args):
    """The experiment of ``--config`` plus overrides, checked against what the command will touch."""
    from raylam.checks import check_experiment
    from raylam.cluster import limit_oom_retries

    cfg = _experiment(args)
    if args.print_config:
        print(json.dumps(to_dict(cfg), indent=2))
        sys.exit(0)
    check_experiment(cfg, args.command)
    limit_oom_retries(cfg.oom_retries)  # read when Ray starts, which comes later
    return cfg


def _start_ray() -> None:
    from raylam.console import start_ray

    start_ray()


def cmd_tune(args) -> int:
    from raylam.console import quiet_ray
    from raylam.tune import cmd_tune as run

    quiet_ray()
    return run(args)


def cmd_collect(args) -> int:
    from raylam.cluster import require_cluster_paths

    cfg = _load(args)
    _start_ray()
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

    exp = _load(args)
    cfg = exp.ingest
    cfg.require_inputs()  # an experiment file without an `ingest` section fails here, naming the key
    m = ingest(cfg, heldout_for=_heldout_reader(exp))
    print(f"wrote {m['num_episodes']} episodes ({m['num_transitions']} frames, {len(m['shards'])} shards, "
          f"{m['num_labeled']} labeled, {len(m['splits']['heldout'])} held-out shards) to {cfg.output}; "
          f"available: {m['available']}")
    return 0


def _heldout_reader(exp) -> str | None:
    """The first stage of ``exp`` that evaluates on the held-out split of the data it ingests, as words."""
    for i, entry in enumerate(exp.stages):
        try:
            stage = exp.stage(i)
        except UserError:  # a stage the ingest does not need; `raylam train` reports it
            continue
        same = os.path.normpath(stage.dataset) == os.path.normpath(exp.ingest.output)
        if stage.kind.trains and same and stage.eval_every:
            return f"stage {entry['run_name']} (eval_every {stage.eval_every})"
    return None


def cmd_train(args) -> int:
    from raylam.cluster import require_cluster_paths

    cfg = _load(args)
    if not cfg.stages:
        raise ConfigError(f"{args.config} defines no `stages`; expected a list such as "
                          "[{run_name: laom_sup, stage: lam, model: {method: laom_sup}}]")
    indices = [cfg.stage_index(name) for name in args.stage] if args.stage else range(len(cfg.stages))
    _start_ray()
    require_cluster_paths(cfg, collect=False, evaluate=False)
    from raylam.pipeline import run_stages

    # the pipeline's stage runner: finished stages are skipped, and on a cluster every stage driver
    # is a retried Ray task
    run_stages(cfg, list(indices), args.force, {})
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


def _require_config_or_lam(args) -> None:
    if not args.config and not args.lam:
        raise UserError("give --config FILE (its evaluate.methods), or --lam RUN")


def cmd_evaluate(args) -> int:
    from raylam.checks import check_output_dir, check_reachable, check_runs_exist
    from raylam.cluster import require_cluster_paths
    from raylam.eval.config import MethodRuns

    _require_config_or_lam(args)
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
    sweep = cfg.label_budgets is not None and not args.lam  # one evaluation per label budget, merged
    for budget_roots in [cfg.run_dirs(b) for b in cfg.label_budgets] if sweep else [roots]:
        check_runs_exist(evaluation.methods, {None: budget_roots} if isinstance(budget_roots, str) else budget_roots)
    check_output_dir(output, "--output")
    check_reachable(output, "--output")
    _start_ray()
    require_cluster_paths(cfg, collect=False, train=bool(args.dataset))
    from raylam.eval.evaluate import evaluate_methods
    from raylam.pipeline import evaluate_budgets

    if sweep:
        evaluate_budgets(cfg, output, dataset=args.dataset, probes=probes, rollouts=rollouts)
    else:
        evaluate_methods(evaluation, roots, output, dataset=args.dataset, probes=probes, rollouts=rollouts,
                         experiment=cfg.name)
    cells = f"{output}/labels*/seed*/results.json (one per label budget and seed)" if cfg.seeds is not None else \
        f"{output}/labels*/results.json (one per label budget)"
    results = cells if sweep else f"{output}/results.json"
    print(f"results: {results}\nreport: {output}/report.md ({output}/report.html)")
    return 0


def cmd_report(args) -> int:
    from raylam.checks import check_output_dir
    from raylam.eval.report import merge_results, write_report

    check_output_dir(args.output, "--output")
    merged = merge_results(args.runs)
    path = write_report(merged, args.output)
    print(f"report: {path} ({len(merged['sources'])} results.json merged)")
    return 0


def cmd_pipeline(args) -> int:
    from raylam.pipeline import run_pipeline

    methods = args.methods.split(",") if args.methods else None
    cfg = _load(args)
    _start_ray()
    out = run_pipeline(cfg, force=args.force, methods=methods)  # checks the paths once Ray is up
    t = out["timings"]
    seeds = sorted({r["seed"] for r in out["results"]["rows"] if r.get("seed") is not None})
    print(f"pipeline done in {t['total'] / 60:.1f} min (collect {t['collect']:.0f} s, evaluate {t['evaluate']:.0f} s; "
          f"training seeds {', '.join(map(str, seeds)) or '—'})")
    print(f"report: {out['report']} ({out['output']}/report.html)")
    return 0


def cmd_export(args) -> int:
    from raylam.data.storage import resolve
    from raylam.export import describe, export_run

    export_run(args.run, args.output, decoder_dir=args.decoder)
    config = resolve(args.output).read_json("config.json")  # a folder or a URI
    print(f"exported {describe(config)} to {args.output} (load with raylam.load({args.output!r}))")
    if config["kind"] == "latent_bc":
        print("note: a latent policy alone outputs latent actions, not environment actions; export it with "
              "--decoder RUN (its action_decoder run) to act", file=sys.stderr)
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


def _ingest_keys() -> str:
    """The ``ingest:`` keys with their defaults and help, from the config itself (never out of date)."""
    import dataclasses
    import textwrap

    from raylam.data.ingest.config import IngestConfig

    lines = ["ingest keys (ingest.KEY=VALUE, or under `ingest:` in the YAML; default in brackets):"]
    for field in dataclasses.fields(IngestConfig):
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        if dataclasses.is_dataclass(default):
            default = ", ".join(f"{k}: {v}" for k, v in to_dict(default).items())
            default = "{" + default + "}"
        text = f"{field.name} [{json.dumps(default) if not isinstance(default, str) else default}]: " \
               f"{field.metadata.get('help', '')}"
        lines += textwrap.wrap(text, 110, initial_indent="  ", subsequent_indent="      ")
    return "\n".join(lines)


INGEST_SOURCES = """\
sources (ingest.source):
  video_folder   <path>/**/*.mp4|webm|mkv|mov|avi|m4v, one episode per video; actions (optional) in a
                 sidecar beside each video: <name>.npy | .parquet | .csv, one row per frame
  frame_folders  <path>/<episode>/<frame>.jpg|png (frames in name order); actions.npy|.parquet|.csv inside
  lerobot        LeRobot v3 dataset roots; name the camera: ingest.lerobot.camera_key=observation.images.top
  hdf5           .hdf5 files in the LAOM paper's layout: one group per trajectory with obs, actions, states"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raylam", description=DESCRIPTION, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"raylam {__version__}")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="show every line Ray prints (by default its known noise is filtered)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, examples: tuple[str, ...], func) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, epilog=_examples(*examples),
                           formatter_class=HelpFormatter)
        _add_verbose_arg(p)
        p.set_defaults(func=func)
        return p

    p = command("collect", "roll out experts in the distracting env, write WebDataset shards",
                ("raylam collect --config configs/quickstart.yaml",
                 "raylam collect --config configs/quickstart.yaml collect.episodes=8 collect.output=data/more"),
                cmd_collect)
    _add_config_args(p, "collect.episodes=8 collect.env.preset=hard")

    p = command("ingest", "turn your own videos, frame folders, LeRobot v3 or LAOM HDF5 data into shards",
                ("raylam ingest --config configs/ingest_example.yaml ingest.paths=data/my_videos",
                 "raylam ingest --config configs/ingest_example.yaml ingest.source=frame_folders "
                 "ingest.paths=data/frames",
                 "raylam ingest --config configs/ingest_example.yaml ingest.source=lerobot "
                 "ingest.paths=data/lerobot/pusht ingest.lerobot.camera_key=observation.image",
                 "raylam ingest --config configs/ingest_example.yaml ingest.source=hdf5 "
                 "ingest.paths=data/cheetah-run.hdf5 ingest.heldout_episodes=[cheetah-run_traj_0]"),
                cmd_ingest)
    p.epilog = f"{INGEST_SOURCES}\n\n{_ingest_keys()}\n\n{p.epilog}"
    _add_config_args(p, "ingest.paths=data/my_videos ingest.min_heldout=2")

    p = command("train", "run the training stages of an experiment on Ray Train (all, or --stage)",
                ("raylam train --config configs/laom_sup.yaml",
                 "raylam train --config configs/laom_sup.yaml --stage laom_sup train.steps=200",
                 "raylam train --config configs/ingest_example.yaml --seeds 0,1,2"),
                cmd_train)
    _add_config_args(p, "train.steps=200 stages.laom_sup.model.sup_coef=0.01")
    p.add_argument("--stage", action="append", metavar="RUN_NAME", help="run only this stage (repeatable)")
    p.add_argument("--force", action="store_true",
                   help="train from scratch even where a run of this very stage left checkpoints (default: resume)")
    _add_seeds_arg(p, "every stage runs once per seed, each seed in <runs>/<name>/seed<k>")

    p = command("tune", "sweep a training stage with Ray Tune + ASHA (tune: section of the config)",
                ("raylam tune --config configs/tune_quickstart.yaml",
                 "raylam tune --config configs/tune_supervision.yaml tune.num_samples=8 --resume"),
                cmd_tune)
    p.add_argument("--config", "-c", required=True, help="experiment YAML file with a tune: section "
                                                         "(configs/tune_*.yaml)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides of the config, e.g. tune.num_samples=8 train.steps=200")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--resume", action="store_true", help="continue the sweep in its directory (unfinished and "
                                                         "errored trials; their Train runs resume)")

    p = command("evaluate", "probes of the LAMs and rollouts of the policies; results.json + report",
                ("raylam evaluate --config configs/quickstart.yaml",
                 "raylam evaluate --config configs/quickstart.yaml --probe --output runs/quickstart/probes",
                 "raylam evaluate --lam runs/quickstart/laom_sup --lam runs/quickstart/laom --probe"),
                cmd_evaluate)
    _add_config_args(p, "evaluate.rollout.episodes=4", required=False)
    p.add_argument("--probe", action="store_true", help="only the linear probes")
    p.add_argument("--rollout", action="store_true", help="only the rollouts")
    p.add_argument("--lam", action="append", metavar="RUN", help="probe this LAM/IDM run directory (repeatable)")
    p.add_argument("--dataset", help="dataset to evaluate on (default: the one each run trained on)")
    p.add_argument("--output", help="report directory (default: evaluate.output or <runs>/<name>/eval)")
    _add_seeds_arg(p, "evaluate every seed's runs and report mean ± std over the seeds")

    p = command("metrics", "a run's per-step training history (on any storage)",
                ("raylam metrics runs/quickstart/laom_sup",
                 "raylam metrics s3://bucket/runs/x/laom --csv laom.csv"),
                cmd_metrics)
    p.add_argument("run", help="run directory or URI, e.g. runs/quickstart/laom_sup or s3://bucket/runs/x/laom")
    p.add_argument("--last", type=int, default=20, help="rows shown")
    p.add_argument("--csv", metavar="FILE", help="write every row and metric to a CSV file instead")

    p = command("report", "merge the results of many evaluations into one table and figure",
                ("raylam report runs/a/eval runs/b/eval -o report",),
                cmd_report)
    p.add_argument("runs", nargs="+", metavar="EVAL", help="evaluation directories, results.json files, or folders "
                   "(every results.json below) and globs of them")
    p.add_argument("--output", "-o", default="report", help="directory for the merged report")

    p = command("pipeline", "collect -> train every stage -> evaluate -> report, in one go",
                ("raylam pipeline --config configs/quickstart.yaml",
                 "raylam pipeline --config configs/quickstart.yaml --methods laom_sup --seeds 0,1"),
                cmd_pipeline)
    _add_config_args(p, "collect.episodes=8 train.steps=200")
    p.add_argument("--force", action="store_true",
                   help="retrain every stage from scratch, also those already finished with this config and inputs")
    p.add_argument("--methods", metavar="A,B", help="only these evaluate.methods and the stages they need")
    _add_seeds_arg(p, "the chain runs once per seed; one merged report, mean ± std over the seeds")

    p = command("export", "a finished run as safetensors + config.json, loadable without Ray (raylam.load)",
                ("raylam export runs/quickstart/laom_sup -o exports/laom_sup_lam",
                 "raylam export runs/quickstart/laom_sup_bc --decoder runs/quickstart/laom_sup_decoder "
                 "-o exports/laom_sup_policy"),
                cmd_export)
    p.add_argument("run", help="run directory of a finished stage (a LAM, IDM, bc or latent_bc policy)")
    p.add_argument("--output", "-o", required=True, help="directory for model.safetensors and config.json")
    p.add_argument("--decoder", metavar="RUN", help="the action_decoder run of a latent_bc policy: exported with "
                                                   "it, loads as one acting policy")

    p = command("inspect", "validate a dataset and print a summary; optional PNG of frames",
                ("raylam inspect data/quickstart",
                 "raylam inspect data/my_robot --grid frames.png --clips 6"),
                cmd_inspect)
    p.add_argument("dataset", help="dataset directory or URI")
    p.add_argument("--grid", metavar="PNG", help="write a grid of recorded vs clean frames")
    p.add_argument("--clips", type=int, default=3, help="clips in the grid")
    p.add_argument("--seed", type=int, default=0, help="which clips to show")
    return parser


def check_command(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv`` and load what it names as the command would (config, overrides, ``--seeds``,
    ``--stage``, ``--methods``, a sweep's plan), then stop: no Ray, no data read, no path required to
    exist, since a documented command may name data that an earlier one makes. Raises what the
    command would (``SystemExit`` for bad arguments, ``UserError``); tests/test_docs_commands.py runs
    every command of the docs through it. Not a flag: a real command fails on the same mistakes in
    a second, before Ray starts, and ``--print-config`` already loads and stops."""
    args = build_parser().parse_args(argv)
    if not hasattr(args, "overrides"):  # metrics, report, export, inspect: their arguments are all there is
        return args
    if args.command == "tune":
        from raylam.tune import load_sweep
        from raylam.tune.sweep import plan_sweep

        plan_sweep(*load_sweep(args.config, args.overrides))
        return args
    if args.command == "evaluate":
        _require_config_or_lam(args)
    cfg = _experiment(args)
    if args.command == "ingest":
        cfg.ingest.require_inputs()
    for name in getattr(args, "stage", None) or ():
        cfg.stage_index(name)
    if getattr(args, "methods", None):
        from raylam.pipeline import select_methods

        select_methods(cfg, args.methods.split(","))
    return args


def one_line(err: BaseException) -> str:
    """An error's message on one line (messages quoting a library's multi-line text included)."""
    return " ".join(str(err).split())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from raylam.console import VERBOSE_ENV, quiet_ray, quiet_ray_environment

    if getattr(args, "verbose", False):
        os.environ[VERBOSE_ENV] = "1"  # Ray processes started from here inherit it
    quiet_ray_environment()
    quiet_ray()
    # Ray Train's controller polls its workers every 2 s by default, which every stage pays at start
    # and at the end; 0.5 s costs nothing measurable and a pipeline of 16 stages saves ~1 min.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    try:
        return args.func(args)
    except UserError as err:  # a mistake in what was asked: one line; anything else is a bug and keeps its traceback
        kind = "config error: " if isinstance(err, ConfigError) else ""
        print(f"raylam {args.command}: {kind}{one_line(err)}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:  # a path the user named
        print(f"raylam {args.command}: {one_line(err)}", file=sys.stderr)
        return 2
    except Exception as err:  # the machine could not do it (out of memory, a killed process, no Ray): one line
        from raylam.cluster import MachineError, memory_kill, out_of_memory, process_death
        from raylam.console import verbose

        if not isinstance(err, MachineError):
            memory = memory_kill(err)
            if memory is not None:
                err = out_of_memory(f"a task of raylam {args.command}", memory)
            elif not verbose() and (death := process_death(err)) is not None:  # --verbose: Ray's pages
                err = MachineError(death)
            else:
                raise
        print(f"raylam {args.command}: {one_line(err)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
