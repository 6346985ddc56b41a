"""Diagnostic: can any policy act at the reduced scale? Behaviour cloning on the true actions of
every training episode (an "oracle" label budget of 72, against the experiment's 16), with more
updates than the reduced chain gives BC (1,500 against 400).

If BC on all labels acts and BC on 16 does not, the reduced-scale policies fail for want of labels
(as the paper's label-budget curves predict), not because rollouts or decoding are broken. The
dataset view shares the reduced dataset's shards and marks every training episode labeled.

    python experiments/oracle_bc.py            # writes runs/oracle_bc/eval/report.md
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "data" / "reduced_distracting"
VIEW = ROOT / "data" / "reduced_distracting_all_labels"


def make_view() -> int:
    """A dataset that links the source's shards and labels every training episode."""
    manifest = json.loads((SOURCE / "manifest.json").read_text())
    train = set(manifest["splits"]["train"])
    episodes = [e for s in manifest["shards"] if s["name"] in train for e in s["episodes"]]
    VIEW.mkdir(parents=True, exist_ok=True)
    for shard in manifest["shards"]:
        link = VIEW / shard["name"]
        if not link.exists():
            os.symlink(SOURCE / shard["name"], link)
        if shard["name"] in train:
            shard["labeled_episodes"] = list(shard["episodes"])
    manifest["labeled_episodes"] = manifest["labeled_episodes"] + [e for e in episodes
                                                                     if e not in manifest["labeled_episodes"]]
    manifest["num_labeled"] = len(manifest["labeled_episodes"])
    (VIEW / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return len(episodes)


def main() -> int:
    from raylam.cli import main as raylam

    labeled = make_view()
    overrides = [
        f"train.dataset={VIEW}", "name=oracle_bc", "seeds=null",
        "evaluate.methods=[{name: bc_16, policy: bc_16}, {name: bc_all, policy: bc_all}]",
        "stages=[{run_name: bc_16, stage: bc, num_labeled: 16, steps: 1500, model: {method: bc, augment: false}},"
        f" {{run_name: bc_all, stage: bc, num_labeled: {labeled}, steps: 1500, model: {{method: bc, augment: false}}}}]",
    ]
    config = str(ROOT / "configs" / "reduced_cheetah.yaml")
    # train + evaluate, not pipeline: its collection step would rewrite this view's manifest
    return raylam(["train", "--config", config, *overrides]) or raylam(["evaluate", "--config", config, *overrides])


if __name__ == "__main__":
    sys.exit(main())
