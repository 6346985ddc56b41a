"""Every command the README and docs/ show still works as written (issue 23): it parses, and the
config and overrides it names load and validate, with the command line's own parser and loader
(:func:`raylam.cli.check_command`), without Ray and without the data it may need (a command may
name what an earlier one makes). Scripts under benchmarks/ and experiments/ take the arguments
shown; `ray up` / `ray job submit` name files that exist. A failure here is a broken doc or a
broken command: fix whichever is wrong."""

from __future__ import annotations

import argparse
import ast
import functools
import importlib
import importlib.util
import os
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

from raylam.cli import build_parser, check_command

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"(?<!`)`([^`]+)`(?!`)")
RAYLAM = ("raylam", ".venv/bin/raylam")
PYTHON = ("python", "python3", ".venv/bin/python")


def is_command(tokens: list[str]) -> bool:
    """The commands checked here: raylam's, Python scripts and modules, Ray's cluster commands, bash scripts."""
    if not tokens:
        return False
    if tokens[0] in RAYLAM or tokens[0] == "bash":
        return len(tokens) > 1  # a lone `raylam` is the tool's name
    if tokens[0] in PYTHON:
        return len(tokens) > 1 and (tokens[1] in ("-c", "-m") or tokens[1].startswith(("benchmarks/", "experiments/")))
    return tokens[0] == "ray" and len(tokens) > 1 and tokens[1] in ("up", "job")


def split_commands(text: str) -> list[list[str]]:
    """The commands of one shell line (comments dropped, ``a && b`` split)."""
    try:
        tokens = shlex.split(text, comments=True)
    except ValueError:  # not shell (an unbalanced quote in prose)
        return []
    commands, current = [], []
    for token in tokens:
        if token in ("&&", "||", ";"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    return [c for c in [*commands, current] if is_command(c)]


def documented_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of every command in a fenced block or an inline code span of the pages."""
    found = []
    for page in PAGES:
        text = page.read_text()
        name = page.relative_to(ROOT).as_posix()
        for block in FENCE.finditer(text):
            line_no = text.count("\n", 0, block.start(1)) + 1
            for offset, line in enumerate(re.sub(r"\\\n\s*", " ", block.group(1)).splitlines()):
                found += [(f"{name}:{line_no + offset}", argv) for argv in split_commands(line)]
        prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)  # keeps line numbers
        for span in INLINE.finditer(prose):
            line_no = prose.count("\n", 0, span.start()) + 1
            found += [(f"{name}:{line_no}", argv) for argv in split_commands(" ".join(span.group(1).split()))]
    return found


COMMANDS = documented_commands()


def test_the_docs_show_commands():
    """The extraction finds what the pages hold (a regex that matches nothing would pass every check)."""
    kinds = {argv[0] if argv[0] not in PYTHON else argv[1].split("/")[0] for _, argv in COMMANDS}
    assert {"raylam", ".venv/bin/raylam", "benchmarks", "experiments", "ray", "bash"} <= kinds, kinds
    assert sum(argv[0] in RAYLAM and len(argv) > 2 for _, argv in COMMANDS) >= 20


@functools.cache
def subcommands() -> set[str]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(sub.choices)


@functools.cache
def written_configs() -> set[str]:
    """Configs that documented commands write: each `raylam tune` sweep's best.yaml (repo-relative)."""
    from raylam.tune import load_sweep
    from raylam.tune.sweep import FILES, plan_sweep

    out = set()
    for _, argv in COMMANDS:
        if argv[0] in RAYLAM and argv[1:2] == ["tune"] and len(argv) > 2:
            args = build_parser().parse_args(argv[1:])
            plan = plan_sweep(*load_sweep(args.config, args.overrides))
            out.add(os.path.relpath(f"{plan.sweep_dir}/{FILES['best']}", ROOT))
    return out


def check_raylam(argv: list[str]) -> None:
    args = argv[1:]
    if "..." in args:  # a sketch (`raylam pipeline ...`): its command exists
        args = args[:args.index("...")]
    if len(args) <= 1:  # `raylam train` named in prose
        assert not args or args[0] in subcommands(), f"no command {args[0]!r}; raylam has {sorted(subcommands())}"
        return
    config = next((args[i + 1] for i, a in enumerate(args[:-1]) if a in ("--config", "-c")), None)
    if config is not None and not (ROOT / config).exists():  # written by an earlier command, or a typo
        assert config in written_configs(), f"--config {config} does not exist and no documented command writes it"
        build_parser().parse_args(args)
        return
    check_command(args)


class _Parsed(Exception):
    """A script's arguments parsed: stop before it does any work."""


def check_script(path: str, args: list[str], monkeypatch) -> None:
    """The script exists and its own argparse parser takes ``args`` (run up to ``parse_args``)."""
    source = (ROOT / path).read_text()
    if "parse_args" not in source:
        assert not args, f"{path} takes no arguments, the docs give it {args}"
        compile(source, path, "exec")
        return
    original = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)
    monkeypatch.setattr(sys, "argv", [path, *args])
    environ, path_before = dict(os.environ), list(sys.path)
    try:
        with pytest.raises(_Parsed):
            runpy.run_path(str(ROOT / path), run_name="__main__")
    finally:  # what the script set up before parsing (MUJOCO_GL, sys.path) stays with it
        os.environ.clear()
        os.environ.update(environ)
        sys.path[:] = path_before


def check_python(argv: list[str], monkeypatch) -> None:
    if argv[1] == "-m":
        assert importlib.util.find_spec(argv[2]) is not None, f"no module {argv[2]}"
    elif argv[1] == "-c":  # a snippet: it compiles, and what it imports from raylam exists
        for node in ast.walk(ast.parse(argv[2])):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("raylam"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{node.module} has no {alias.name}"
    else:
        assert (ROOT / argv[1]).is_file(), f"{argv[1]} does not exist"
        check_script(argv[1], argv[2:], monkeypatch)


def check_ray(argv: list[str], monkeypatch) -> None:
    """Cluster commands are not run here: the files they name exist, the raylam command they submit checks."""
    if argv[1] == "up":
        assert (ROOT / argv[2]).is_file(), f"ray up {argv[2]}: no such file"
        return
    head, _, entrypoint = " ".join(argv).partition(" -- ")
    tokens = head.split()
    for flag in ("--working-dir", "--runtime-env"):
        if flag in tokens:
            value = tokens[tokens.index(flag) + 1]
            assert (ROOT / value).exists(), f"{flag} {value}: no such file"
    if entrypoint:
        for inner in split_commands(entrypoint):
            check(inner, monkeypatch)


def check(argv: list[str], monkeypatch) -> None:
    if argv[0] in RAYLAM:
        check_raylam(argv)
    elif argv[0] in PYTHON:
        check_python(argv, monkeypatch)
    elif argv[0] == "ray":
        check_ray(argv, monkeypatch)
    else:  # bash SCRIPT
        assert (ROOT / argv[1]).is_file(), f"bash {argv[1]}: no such file"


@pytest.mark.parametrize("where,argv", COMMANDS, ids=[f"{w} {' '.join(a)[:70]}" for w, a in COMMANDS])
def test_documented_command(where, argv, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # the docs' paths are relative to the repository
    try:
        check(argv, monkeypatch)
    except SystemExit as exit_:  # argparse refused it
        pytest.fail(f"{where}: {shlex.join(argv)}: exit {exit_.code}: {capsys.readouterr().err.strip()}")
    except Exception as err:  # the config loader's one line says what is wrong
        pytest.fail(f"{where}: {shlex.join(argv)}: {type(err).__name__}: {err}")
