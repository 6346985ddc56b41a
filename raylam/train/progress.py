"""One readable line per report on rank 0: stage, step/total, loss (the model's objective), samples/s,
held-out probe, ETA.

Ray Train's own INFO lines (``Reporting training result N: TrainingReport(...)`` from every
worker, worker-group start-up) are silenced by the stage's ``log_level`` (``RunConfig``'s
``LoggingConfig``); this line is what a person watching a run reads instead.
"""

from __future__ import annotations

import time


def format_duration(seconds: float) -> str:
    """``75`` -> ``1m15s``, ``3725`` -> ``1h02m``: short and sortable by eye."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Formats a report as one line; the ETA extrapolates the steps done since this process began
    (a resumed run counts from where it resumed, not from step 0)."""

    def __init__(self, label: str, total_steps: int, start_step: int = 0, clock=time.perf_counter):
        self.label, self.total, self.start_step, self.clock = label, total_steps, start_step, clock
        self.started = clock()

    def line(self, values: dict, step: int) -> str:
        width = len(str(self.total))
        parts = [f"{self.label}", f"step {step:>{width}}/{self.total} ({100 * step / self.total:3.0f}%)"]
        if "loss" in values:  # the model's own objective; the probes are not in it
            parts.append(f"loss {values['loss']:.4g}")
        if "samples_per_s" in values:
            parts.append(f"{values['samples_per_s']:.0f} samples/s")
        parts += self.heldout(values)
        done = step - self.start_step
        elapsed = self.clock() - self.started
        if step >= self.total:
            parts.append(f"done in {format_duration(elapsed)}")
        elif done > 0:
            parts.append(f"ETA {format_duration(elapsed / done * (self.total - step))}")
        return " | ".join(parts)

    @staticmethod
    def heldout(values: dict) -> list[str]:
        """When this report evaluated: the held-out action probe's R² (what says a LAM is learning),
        else the first held-out MSE (a policy's or the IDM's action head)."""
        if "heldout/probe/action/r2" in values:
            return [f"held-out action probe R² {values['heldout/probe/action/r2']:.3f}"]
        for key, value in values.items():
            if key.startswith("heldout/") and key.endswith("/mse"):
                return [f"{key[len('heldout/'):]} {value:.4g}"]
        return []
