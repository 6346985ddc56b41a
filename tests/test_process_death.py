"""A Ray process that dies under a command (killed by the kernel's OOM killer, a node that left,
`ray stop`) ends the command with one line naming what died and how to go on, exit 1, not Ray's
pages of traceback; --verbose keeps the traceback for a bug report."""

from __future__ import annotations

import os
import signal

import pytest

from raylam.cli import main
from raylam.cluster import process_death
from raylam.console import VERBOSE_ENV


def killed_actor_error() -> BaseException:
    """The real error of a call to an actor whose process is killed while it runs the call."""
    import ray

    @ray.remote(num_cpus=0)
    class Labeler:
        def ready(self) -> bool:
            return True

        def label(self) -> None:
            os.kill(os.getpid(), signal.SIGKILL)

    labeler = Labeler.remote()
    ray.get(labeler.ready.remote())
    with pytest.raises(ray.exceptions.ActorDiedError) as caught:
        ray.get(labeler.label.remote())
    return caught.value


def killed_stage_error() -> BaseException:
    """A stage driver (a Ray task) whose work calls an actor that is killed: the error a pipeline's
    stage raises, the actor's death wrapped in the task's error."""
    import ray

    @ray.remote(num_cpus=0)
    class Labeler:
        def label(self) -> None:
            os.kill(os.getpid(), signal.SIGKILL)

    @ray.remote(num_cpus=0, max_retries=0)
    def driver() -> None:
        ray.get(Labeler.remote().label.remote())

    with pytest.raises(ray.exceptions.RayTaskError) as caught:
        ray.get(driver.remote())
    return caught.value


def test_a_killed_actor_is_named_in_one_line(ray_local):
    line = process_death(killed_actor_error())
    assert line is not None and "\n" not in line
    assert "actor Labeler (pid " in line and "ActorDiedError" in line and "worker exit SYSTEM_ERROR" in line
    assert "rerun goes on from them" in line and "--verbose" in line
    assert process_death(ValueError("a bug")) is None  # anything else keeps its traceback


def test_a_command_whose_ray_process_dies_ends_with_one_line(ray_local, monkeypatch, capsys):
    """The command's work is a real Ray task that calls an actor killed under it, as a stage driver
    calls its labeling actors."""
    monkeypatch.setenv(VERBOSE_ENV, "0")
    error = killed_stage_error()
    assert process_death(error) is not None

    def command(args) -> int:
        raise error

    monkeypatch.setattr("raylam.cli.cmd_report", command)
    capsys.readouterr()
    assert main(["report", "docs/label_curve"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("raylam report: a Ray process died under the job: actor Labeler (pid "), err
    assert "\n" not in err and "Traceback" not in err
    with pytest.raises(type(error)):  # --verbose: Ray's own error and its traceback, for a bug report
        main(["report", "docs/label_curve", "--verbose"])
