"""Run the policy-regime measurement (experiments/policy_regime.yaml) on an all-labels view of the
reduced distracting data, then print its report's table.

    python experiments/policy_regime.py [overrides...]     # e.g. "stages=[...]" to add a cell
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

from oracle_bc import make_view  # noqa: E402


def main() -> int:
    from raylam.cli import main as raylam

    make_view()
    config = str(ROOT / "experiments" / "policy_regime.yaml")
    overrides = sys.argv[1:]
    # train + evaluate, not pipeline: its collection step would rewrite the view's manifest
    return raylam(["train", "--config", config, *overrides]) or raylam(["evaluate", "--config", config, *overrides])


if __name__ == "__main__":
    sys.exit(main())
