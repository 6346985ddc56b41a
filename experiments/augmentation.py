"""Which augmentation lets a reduced-scale LAOM+sup learn? A Ray-free measurement on real frames.

Trains the small LAOM+sup on the labeled episodes of a collected dataset (i.i.d. batches from a
clip store, windows cut as in training) with each augmentation setting and prints the training
supervised loss and the held-out R^2 of the supervised head (windows of the held-out episodes).

    python experiments/augmentation.py --dataset data/reduced_distracting --steps 400
"""

from __future__ import annotations

import argparse
import time

import torch

from raylam.config import from_dict, to_dict
from raylam.data.clips import read_clips_local
from raylam.data.pipeline import DatasetInfo, WindowSpec
from raylam.models import evaluate
from raylam.models.config import ModelConfig
from raylam.train.config import TrainConfig
from raylam.train.loop import fit, hash_seed, setup_model
from raylam.train.sampling import ClipStore, EpochSampler, fixed_windows

SETTINGS = {
    "paper (shift 14px, rotate 90, perspective 0.5)": {},
    "shift 4px only": {"aug_shift": 4 / 64, "aug_rotate": 0.0, "aug_perspective": 0.0},
    "none": {"augment": False},
}


class Data:
    def __init__(self, cfg, store):
        m = cfg.model
        self.train = iter(EpochSampler(store, cfg.batch_size, m.frame_stack, m.max_offset, seed=(cfg.seed, 0, 2)))
        self.current_epoch = 0

    def next(self):
        return next(self.train), None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="data/reduced_distracting")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-labeled", type=int, default=None)
    parser.add_argument("--sup-coef", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    info = DatasetInfo(args.dataset)
    spec = WindowSpec(num_labeled=args.num_labeled)
    labeled = ClipStore.from_batches(read_clips_local(info, spec, "train", labeled_only=True))
    heldout = ClipStore.from_batches(read_clips_local(info, spec, "heldout"))
    print(f"{args.dataset}: {len(labeled)} labeled clips, {len(heldout)} held-out clips; "
          f"{args.steps} steps of batch {args.batch_size}, sup_coef {args.sup_coef}")
    for name, changes in SETTINGS.items():
        model_cfg = ModelConfig.small("laom_sup", image_size=info.manifest["frame_shape"][0], latent_dim=64,
                                      hidden_dim=128, head_blocks=2, lr=3e-4, sup_coef=args.sup_coef, **changes)
        cfg = from_dict(TrainConfig, {"model": to_dict(model_cfg), "steps": args.steps, "seed": args.seed,
                                      "batch_size": args.batch_size, "report_every": 50, "checkpoint_every": 50})
        model, optimizer, scheduler = setup_model(cfg, {"action_dim": info.manifest["action_dim"],
                                                        "state_dim": info.manifest["state_dim"]}, torch.device("cpu"))
        torch.manual_seed(hash_seed(cfg.seed, 0, 1))
        sup = []
        start = time.perf_counter()
        fit(model, model, optimizer, scheduler, Data(cfg, labeled), cfg, torch.device("cpu"), 1, 0,
            lambda values, step, sup=sup: sup.append(values["laom/sup_loss"]))
        elapsed = time.perf_counter() - start
        scores = evaluate(model, fixed_windows(heldout, 3, model_cfg.max_offset, 2048, 128))
        print(f"  {name:<48} sup loss {sup[0]:.3f} -> {sup[-1]:.3f}; held-out head R^2 "
              f"{scores['sup/action/r2']:.3f}, action probe R^2 {scores['probe/action/r2']:.3f} ({elapsed:.0f} s)",
              flush=True)


if __name__ == "__main__":
    main()
