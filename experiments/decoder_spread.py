"""How much the decoded policies move: action spread on held-out frames, per label budget.

A decoded policy is latent BC (frames -> latent) followed by the action decoder (latent -> action),
the decoder fitted on the budget's labeled episodes. Where the policy's latent carries little of the
action, a decoder fitted on many labels regresses to the mean action (small spread, lower MSE),
and one fitted on a single episode does not. Prints, for each method and budget, the per-dim std
of the decoded actions, their mean |a| and MSE to the expert's actions, beside BC's; and, to tell
the decoder's error from latent BC's, the decoder's MSE when fed the LAM's own latent of the true
(o_t, o_t+1) and how much of that latent latent BC predicts from o_t alone (R²).

    python experiments/decoder_spread.py --root runs/label_curve --seed 0 --budgets labels1 labelsall
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from raylam.data.pipeline import ClipsToWindows, DatasetInfo, WindowSpec
from raylam.data.shards import iter_tar_samples
from raylam.models.batch import rows_to_batch
from raylam.models.probes import Moments
from raylam.train.artifacts import load_run


def heldout_windows(dataset: str, shards: int) -> dict[str, np.ndarray]:
    """The windows of the first ``shards`` held-out shards, cut as the probes cut them."""
    info = DatasetInfo(dataset)
    manifest = info.manifest
    cut = ClipsToWindows(WindowSpec(frame_stack=3, max_offset=1, seed=0), manifest["clip_length"],
                         manifest["overlap"], info.labeled_episodes())
    parts = []
    for url in info.shard_urls("heldout")[:shards]:
        with info.location.open_read(url.rsplit("/", 1)[-1]) as stream:
            samples = list(iter_tar_samples(stream, url))
        parts.append(cut({name: np.array([s[name] for s in samples], dtype=object) for name in samples[0]}))
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def describe(name: str, actions: np.ndarray, expert: np.ndarray, upstream: str = "— | —") -> str:
    spread = actions.std(0)
    return (f"| {name} | {' '.join(f'{s:.2f}' for s in spread)} | {spread.mean():.2f} | "
            f"{np.abs(actions).mean():.2f} | {((actions - expert) ** 2).mean():.3f} | {upstream} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="runs/label_curve", help="the experiment's run root")
    parser.add_argument("--dataset", default="data/reduced_distracting_288")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budgets", nargs="+", default=["labels1", "labelsall"], help="budget folders")
    parser.add_argument("--shards", type=int, default=2, help="held-out shards to read")
    args = parser.parse_args()
    torch.set_num_threads(1)
    windows = heldout_windows(args.dataset, args.shards)
    batch = rows_to_batch({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in windows.items()
                           if v.dtype != object}, torch.device("cpu"))
    expert = windows["actions"].astype(np.float32)
    print(f"{len(expert)} held-out windows\n")
    print("| policy | action std per dim | mean std | mean abs action | MSE to expert | MSE, decoder on the LAM's "
          "own latent | latent BC's R² to that latent |\n|---|---|---|---|---|---|---|")
    print(describe("expert", expert, expert))
    seed = f"seed{args.seed}"
    with torch.no_grad():
        for budget in args.budgets:
            for method in ("laom_sup", "laom", "lapo"):
                # LAOM+sup and its latent BC read the budget's labels; LAOM's and LAPO's are shared by every budget
                runs = f"{args.root}/{budget}/{seed}" if method == "laom_sup" else f"{args.root}/{seed}"
                lam, _, _ = load_run(f"{runs}/{method}", "cpu")
                policy, _, _ = load_run(f"{runs}/{method}_bc", "cpu")
                decoder, _, _ = load_run(f"{args.root}/{budget}/{seed}/{method}_decoder", "cpu")
                predicted = policy.act(batch.obs).float()
                actions = decoder.decode(predicted).clamp(-1, 1).numpy()
                # the decoder's own error (fed the latents it was fitted on) apart from latent BC's
                latent = lam.latent_action(batch.obs, batch.next_obs).float()
                latent_bc = Moments()
                latent_bc.add(predicted, latent)
                upstream = (f"{((decoder.decode(latent).clamp(-1, 1).numpy() - expert) ** 2).mean():.3f} | "
                            f"{latent_bc.pooled_r2():.2f}")
                print(describe(f"{method} · {budget}", actions, expert, upstream))
            bc, _, _ = load_run(f"{args.root}/{budget}/{seed}/bc", "cpu")
            print(describe(f"bc · {budget}", bc.act(batch.obs).clamp(-1, 1).numpy(), expert))


if __name__ == "__main__":
    main()
