"""The Ray-free training loop: seeds, the frozen-policy action decoder, windows from a clip store."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raylam.config import from_dict, to_dict
from raylam.models.config import ModelConfig
from raylam.train.config import TrainConfig
from raylam.train.loop import fit, hash_seed, setup_model
from raylam.train.sampling import ClipStore, EpochSampler, LabeledSampler

DIMS = {"action_dim": 2, "state_dim": 3}


def store(episodes=4, length=30, clip_length=30, image=16, seed=0):
    """One clip per episode of random frames, episode 1 labeled."""
    rng = np.random.default_rng(seed)
    n = episodes
    return ClipStore({
        "frames": torch.from_numpy(rng.integers(0, 255, (n, clip_length, image, image, 3), dtype=np.uint8)),
        "actions": torch.from_numpy(rng.uniform(-1, 1, (n, clip_length, 2)).astype(np.float32)),
        "states": torch.from_numpy(rng.normal(size=(n, clip_length, 3)).astype(np.float32)),
        "episode": torch.arange(n), "start": torch.zeros(n, dtype=torch.long),
        "episode_length": torch.full((n,), length), "length": torch.full((n,), clip_length),
        "owned_lo": torch.zeros(n, dtype=torch.long), "owned_hi": torch.full((n,), length - 1),
        "labeled": torch.arange(n) == 1,
    })


class Data:
    """What ``fit`` needs of WorkerData: batches from an in-memory store."""

    def __init__(self, cfg, clips: ClipStore):
        m = cfg.model
        self.train = iter(EpochSampler(clips, cfg.batch_size, m.frame_stack, m.max_offset, seed=(cfg.seed, 0, 2)))
        self.labeled = iter(LabeledSampler(clips, cfg.labeled_batch_size, m.frame_stack, m.max_offset,
                                           seed=(cfg.seed, 0, 3)))
        self.current_epoch = 0

    def next(self):
        return next(self.train), next(self.labeled)


def config(method="laom_sup", seed=0, steps=2, **model):
    small = ModelConfig.small(method, image_size=16, **model)
    return from_dict(TrainConfig, {"stage": "lam" if method in ("laom", "laom_sup", "lapo") else method,
                                   "model": to_dict(small), "seed": seed, "steps": steps, "batch_size": 8,
                                   "labeled_batch_size": 4, "report_every": 1, "checkpoint_every": 1,
                                   "labels": "x", "policy_run": "y"})


def first_losses(cfg, clips, steps=2) -> list[float]:
    model, optimizer, scheduler = setup_model(cfg, DIMS, torch.device("cpu"))
    torch.manual_seed(hash_seed(cfg.seed, 0, 1))
    losses = []
    fit(model, model, optimizer, scheduler, Data(cfg, clips), cfg, torch.device("cpu"), 1, 0,
        lambda values, step: losses.append(values["loss"]))
    return losses


def test_same_seed_same_losses_other_seed_other_losses():
    clips = store()
    a, b, c = first_losses(config(seed=0), clips), first_losses(config(seed=0), clips), first_losses(config(seed=1), clips)
    assert len(a) == 2 and a == b  # init, offsets, batches and augmentation all follow the seed
    assert a[0] != c[0]


def test_reports_carry_the_objective_as_loss_and_the_probes_apart():
    """``loss`` in every report is the model's own objective (LAOM+sup: latent + coef * supervised),
    not the probes-included total it minimised; the probes are their own keys."""
    cfg = config("laom_sup", steps=3)
    model, optimizer, scheduler = setup_model(cfg, DIMS, torch.device("cpu"))
    reports = []
    fit(model, model, optimizer, scheduler, Data(cfg, store()), cfg, torch.device("cpu"), 1, 0,
        lambda values, step: reports.append(values))
    assert len(reports) == 3
    for v in reports:
        assert v["loss"] == pytest.approx(v["laom/latent_loss"] + cfg.model.sup_coef * v["laom/sup_loss"], rel=1e-5)
        assert v["probe/loss"] == pytest.approx(v["probe/action_mse"] + v["probe/state_mse"], rel=1e-5)


def test_same_seed_same_relabels():
    """Relabeling is inference with the trained weights: same seed, same weights, same labels."""
    clips = store()
    batch = next(iter(EpochSampler(clips, 16, 3, 1, seed=(9,))))
    labels = []
    for seed in (0, 0, 1):
        cfg = config(seed=seed)
        model, optimizer, scheduler = setup_model(cfg, DIMS, torch.device("cpu"))
        torch.manual_seed(hash_seed(seed, 0, 1))
        fit(model, model, optimizer, scheduler, Data(cfg, clips), cfg, torch.device("cpu"), 1, 0, lambda v, s: None)
        labels.append(model.eval().latent_action(batch.obs, batch.next_obs))
    assert torch.equal(labels[0], labels[1]) and not torch.allclose(labels[0], labels[2])


def test_decoder_learns_on_the_frozen_policy_outputs():
    clips = store()
    policy_cfg = ModelConfig.small("latent_bc", image_size=16, latent_dim=5)
    from raylam.models import build_model

    policy = build_model(policy_cfg, 2, 3)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    cfg = config("action_decoder", steps=5, latent_dim=5, augment=False)
    decoder, optimizer, scheduler = setup_model(cfg, DIMS, torch.device("cpu"), policy=policy)
    seen = []
    decoder.net[0].register_forward_hook(lambda module, inputs, out: seen.append(inputs[0].detach()))
    data = Data(cfg, clips)
    batch, labeled = data.next()
    decoder.eval()
    decoder(batch, labeled)
    expected = torch.cat([policy.act(batch.obs), policy.act(labeled.obs)])
    assert torch.allclose(seen[-1], expected)  # the decoder reads policy(o_t), not the LAM's z
    decoder.train()
    fit(decoder, decoder, optimizer, scheduler, data, cfg, torch.device("cpu"), 1, 0, lambda v, s: None)
    for name, value in policy.state_dict().items():  # the policy stays frozen
        assert torch.equal(value, before[name]), name
    assert all(not p.requires_grad for p in policy.parameters())


def test_progress_line_per_report():
    """fit's reports become one line each: label, step/total, loss, samples/s, ETA, then the total time."""
    from raylam.train.progress import Progress, format_duration

    cfg = config(steps=4)
    ticks = iter(range(0, 1000, 10))  # a clock that advances 10 s per reading: no real time involved
    progress = Progress("[2/16] laom_sup", cfg.steps, clock=lambda: next(ticks))
    lines = []
    model, optimizer, scheduler = setup_model(cfg, DIMS, torch.device("cpu"))
    fit(model, model, optimizer, scheduler, Data(cfg, store()), cfg, torch.device("cpu"), 1, 0,
        lambda values, step: lines.append(progress.line(values, step)))
    assert len(lines) == 4
    assert lines[0].startswith("[2/16] laom_sup | step 1/4 ( 25%) | loss ")
    assert "samples/s | ETA 30s" in lines[0]  # 10 s for 1 step, 3 to go
    assert lines[2].endswith("ETA 10s") and lines[3].endswith("done in 40s")
    resumed = Progress("x", 100, start_step=50, clock=iter([0, 30]).__next__)
    assert resumed.line({"heldout/probe/action/mse": 0.25, "heldout/probe/action/r2": 0.1}, 60) == (
        "x | step  60/100 ( 60%) | held-out action probe R² 0.100 | ETA 2m00s")
    policy = Progress("bc", 10, clock=iter([0, 1]).__next__)  # no probe: the held-out action head's MSE
    assert policy.line({"heldout/bc/action/mse": 0.5}, 10) == "bc | step 10/10 (100%) | bc/action/mse 0.5 | done in 1s"
    assert format_duration(3725) == "1h02m" and format_duration(59.6) == "1m00s"


def test_weight_decay_shrinks_matrices_only():
    """model.weight_decay: one AdamW step moves every matrix by exactly lr * wd * w more than plain Adam
    (weight_decay 0), and leaves biases and norms alone; probes never decay."""
    after, lr = {}, None
    for decay in (0.0, 0.5):
        cfg = config("laom_sup", steps=1, weight_decay=decay)
        model, optimizer, scheduler = setup_model(cfg, DIMS, torch.device("cpu"))
        start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}  # no EMA target
        lr = optimizer.param_groups[0]["lr"]
        if decay:
            kinds = {(g["weight_decay"], p.ndim >= 2) for g in optimizer.param_groups for p in g["params"]}
            assert kinds == {(0.5, True), (0.0, False), (0.0, True)}  # (0, matrix): the probes
        torch.manual_seed(5)
        fit(model, model, optimizer, scheduler, Data(cfg, store()), cfg, torch.device("cpu"), 1, 0,
            lambda values, step: None)
        after[decay] = {n: p.detach().clone() for n, p in model.named_parameters()}
    for name, w in start.items():
        expected = after[0.0][name]
        if w.ndim >= 2 and not name.startswith("probes."):
            expected = expected - lr * 0.5 * w
        torch.testing.assert_close(after[0.5][name], expected, msg=name)
