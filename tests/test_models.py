"""Unit tests for raylam.models: shapes, gradients, EMA, quantizer use, augmentations, config."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raylam.config import ConfigError
from raylam.models import (
    FSQ,
    IDM,
    LAMS,
    LAOM,
    LAPO,
    METHODS,
    ActionDecoder,
    Batch,
    ImpalaEncoder,
    ModelConfig,
    Policy,
    VectorQuantizer,
    augment,
    build_model,
    evaluate,
    masked_mse,
    to_float_image,
    to_uint8_frames,
)
from raylam.models.augment import homography, warp

A, S = 6, 5  # action and state sizes of the fake data


@pytest.fixture(autouse=True)
def _threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # the test machine is shared: more threads only oversubscribe its cores
    torch.manual_seed(0)
    yield
    torch.set_num_threads(previous)


def fake_batch(cfg: ModelConfig, n: int = 6, labeled: float = 0.5) -> Batch:
    shape = (n, cfg.frame_stack, cfg.image_size, cfg.image_size, cfg.frame_channels)

    def frames() -> torch.Tensor:
        return torch.randint(0, 256, shape, dtype=torch.uint8)

    return Batch(
        obs=frames(), next_obs=frames(), future_obs=frames(),
        offset=torch.randint(1, cfg.max_offset + 1, (n,)),
        actions=torch.randn(n, A), states=torch.randn(n, S),
        labeled=torch.arange(n) < max(1, int(n * labeled)),
        latents=torch.randn(n, cfg.latent_dim),
    )


def small(method: str, **overrides) -> ModelConfig:
    return ModelConfig.small(method, **overrides)


# ---------------------------------------------------------------- config


def test_defaults_are_the_papers_laom_sup():
    c = ModelConfig()
    assert (c.method, c.encoder_scale, c.encoder_channels, c.encoder_blocks) == ("laom_sup", 6, (16, 32, 32), 2)
    assert (c.latent_dim, c.hidden_dim, c.max_offset, c.frame_stack, c.image_size) == (8192, 1024, 10, 3, 64)
    assert (c.ema_tau, c.ema_every, c.sup_coef, c.augment, c.lr) == (0.001, 1, 0.001, True, 1e-4)
    assert c.in_channels == 9
    assert ModelConfig.paper("bc").encoder_scale == 32
    assert ModelConfig.paper("action_decoder").lr == 3e-4
    # LAPO as the LAOM paper ran it: continuous z, K = 10, latent 8192 (dunnolab/laom configs/lapo.yaml)
    lapo = ModelConfig.paper("lapo")
    assert (lapo.quantizer, lapo.max_offset, lapo.latent_dim, lapo.augment) == ("none", 10, 8192, False)
    # the LAPO paper's VQ variant (schmidtdominik/LAPO config.yaml): single step, 2 books x 4 latents x 16 dims
    vq = ModelConfig.paper("lapo", quantizer="vq")
    assert (vq.max_offset, vq.latent_dim, vq.vq_groups, vq.vq_codebooks, vq.vq_codes) == (1, 128, 8, 2, 64)
    assert (vq.vq_beta, vq.vq_ema_decay, vq.augment) == (0.05, 0.999, False)
    assert ModelConfig.paper("lapo", quantizer="vq", latent_dim=64).latent_dim == 64  # overrides win


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"image_size": 36}, "multiple of 8"),
        ({"method": "laom_sup", "sup_coef": 0.0}, "sup_coef"),
        ({"method": "lapo", "augment": True}, "augment"),
        ({"method": "lapo", "augment": False, "latent_dim": 30}, "vq_groups"),
        ({"method": "lapo", "augment": False, "latent_dim": 48, "vq_groups": 6, "vq_codebooks": 4}, "vq_codebooks"),
        ({"vq_ema_decay": 1.0}, "vq_ema_decay"),
        ({"method": "nope"}, "expected one of"),
        ({"latent_dim": 0}, ">= 1"),
    ],
)
def test_bad_configs_fail_with_a_message_naming_the_key(changes, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig().replace(**changes)


# ---------------------------------------------------------------- batch


def test_uint8_stacks_become_normalised_channels_last_images():
    obs = torch.randint(0, 256, (2, 3, 8, 8, 3), dtype=torch.uint8)
    x = to_float_image(obs)
    assert x.shape == (2, 9, 8, 8) and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    # channel i*C + c is channel c of frame i, scaled to [-1, 1]
    assert torch.allclose(x[:, 1 * 3 + 2], obs[:, 1, :, :, 2].float() / 127.5 - 1, atol=1e-6)
    assert x.min() >= -1 and x.max() <= 1
    assert torch.equal(to_uint8_frames(x, 3), obs)


def test_batch_helpers():
    cfg = small("laom")
    b = fake_batch(cfg)
    b.validate(cfg.frame_stack, cfg.image_size)
    moved = b.to("cpu")
    assert torch.equal(moved.obs, b.obs) and len(moved) == 6
    numpy_batch = {k: v.numpy() for k, v in b.as_dict().items() if v is not None}
    rebuilt = Batch.from_dict({**numpy_batch, "extra": np.zeros(3)})
    assert torch.equal(rebuilt.actions, b.actions) and rebuilt.labeled.dtype == torch.bool
    with pytest.raises(ValueError, match="batch.obs"):
        Batch(obs=b.obs.float()).validate(cfg.frame_stack, cfg.image_size)
    with pytest.raises(ValueError, match="'future_obs'"):
        build_model(cfg, A, S).loss(Batch(obs=b.obs, next_obs=b.next_obs))


def test_masked_mse_ignores_unlabeled_rows_and_survives_none():
    pred, target = torch.zeros(4, 2), torch.tensor([[1.0, 1.0], [2.0, 2.0], [9.0, 9.0], [9.0, 9.0]])
    assert masked_mse(pred, target, torch.tensor([1.0, 1.0, 0.0, 0.0])) == pytest.approx(2.5)
    assert masked_mse(pred, target, torch.zeros(4)) == 0.0


# ---------------------------------------------------------------- encoder


@pytest.mark.parametrize("downsample", ["stride", "maxpool"])
def test_encoder_feature_size(downsample):
    enc = ImpalaEncoder(9, 64, (16, 32, 32), scale=2, blocks=1, downsample=downsample)
    assert enc.out_shape == (64, 8, 8) and enc.feature_dim == 4096
    x = torch.randn(2, 9, 64, 64).contiguous(memory_format=torch.channels_last)
    assert enc.features(x).shape == (2, 4096)
    assert enc(x).shape == (2, 64, 8, 8)


def test_paper_encoder_has_12288_features():
    with torch.device("meta"):
        model = build_model(ModelConfig(), A, S)
    assert model.encoder.feature_dim == 12288  # 192 channels x 8 x 8
    n_params = sum(p.numel() for p in model.trainable_parameters())
    assert 180e6 < n_params < 200e6  # the paper's LAOM+sup has ~192 M


# ---------------------------------------------------------------- every model


@pytest.mark.parametrize("method", METHODS)
def test_shapes_dtypes_and_interface(method):
    cfg = small(method)
    model = build_model(cfg, A, S)
    assert isinstance(model, {"idm": IDM, "lapo": LAPO, "laom": LAOM, "laom_sup": LAOM, "bc": Policy,
                              "latent_bc": Policy, "action_decoder": ActionDecoder}[method])
    b = fake_batch(cfg)
    loss, metrics = model.loss(b, fake_batch(cfg, 3, labeled=1.0))
    assert loss.shape == () and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert "loss" in metrics
    for name, value in metrics.items():
        assert value.shape == () and not value.requires_grad, name
    model.after_step()
    if method in LAMS or method == "idm":
        z = model.latent_action(b.obs, b.next_obs)
        assert z.shape == (6, A if method == "idm" else cfg.latent_dim) and z.dtype == torch.float32
    if method in ("bc", "latent_bc"):
        assert model.act(b.obs).shape == (6, A if method == "bc" else cfg.latent_dim)
    if method == "action_decoder":
        assert model.decode(b.latents).shape == (6, A)
    report = evaluate(model, [b, fake_batch(cfg)])
    assert report and all(k.endswith(("/mse", "/r2")) for k in report)


@pytest.mark.parametrize("method", METHODS)
def test_gradient_reaches_every_trainable_parameter(method):
    cfg = small(method)
    model = build_model(cfg, A, S)
    loss, _ = model.loss(fake_batch(cfg, 8), fake_batch(cfg, 4, labeled=1.0))
    loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


# (method, config overrides, with a labeled batch): every way a method is trained
TRAINING_CASES = [
    *[(m, {}, labeled) for m in METHODS for labeled in (True, False)],
    ("lapo", {"quantizer": "vq"}, False),
    ("lapo", {"quantizer": "vq", "vq_codebooks": 1}, False),
    ("lapo", {"quantizer": "vq", "vq_ema_decay": None}, False),
    ("lapo", {"quantizer": "fsq"}, False),
    ("laom_sup", {"probes": False}, True),
]


def _case_id(case) -> str:
    method, overrides, labeled = case
    return "-".join([method, *(f"{k}={v}" for k, v in overrides.items()), "labeled" if labeled else "unlabeled"])


@pytest.mark.parametrize("method, overrides, labeled", TRAINING_CASES, ids=map(_case_id, TRAINING_CASES))
def test_every_trainable_parameter_takes_part_in_the_loss(method, overrides, labeled):
    """DDP can run with find_unused_parameters=False only if every trainable parameter gets a gradient
    (zero is fine) in every step: with and without a labeled batch, in every variant."""
    cfg = small(method, image_size=8, frame_stack=1, encoder_channels=[4, 4, 4], **overrides)
    model = build_model(cfg, A, S)
    loss, _ = model.loss(fake_batch(cfg, 4), fake_batch(cfg, 2, labeled=1.0) if labeled else None)
    loss.backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused


@pytest.mark.parametrize("method, overrides", [("laom_sup", {}), ("lapo", {"quantizer": "vq"})])
def test_ddp_without_find_unused_parameters(method, overrides, tmp_path):
    """Two DDP steps with find_unused_parameters=False (DDP raises on the second if a parameter was
    unused); for LAPO-VQ this also runs the all-reduce of the EMA codebook statistics."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    cfg = small(method, image_size=8, frame_stack=1, encoder_channels=[4, 4, 4], **overrides)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = build_model(cfg, A, S)
        ddp = DistributedDataParallel(model, find_unused_parameters=False)
        opt = torch.optim.Adam(model.param_groups(), lr=1e-3)
        for _ in range(2):
            loss, _ = ddp(fake_batch(cfg, 4))  # no labeled batch: laom_sup uses this batch's labeled rows
            opt.zero_grad()
            loss.backward()
            opt.step()
            model.after_step()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("method, overrides", [(m, {}) for m in METHODS] + [("laom_sup", {"probes": False}),
                                                                             ("lapo", {"quantizer": "vq"})])
def test_param_groups_cover_every_trainable_parameter_once(method, overrides):
    model = build_model(small(method, image_size=8, frame_stack=1, encoder_channels=[4, 4, 4], **overrides), A, S)
    groups = model.param_groups()
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))  # nothing twice
    assert set(ids) == {id(p) for p in model.trainable_parameters()}  # nothing left out
    assert groups[0]["name"] == "model" and not groups[0].get("constant_lr")
    probes = getattr(model, "probes", None)
    if probes is None:
        assert len(groups) == 1
    else:
        assert groups[1]["name"] == "probes" and groups[1]["constant_lr"] is True
        assert {id(p) for p in groups[1]["params"]} == {id(p) for p in probes.parameters()}
    torch.optim.Adam(groups, lr=1e-3)  # a valid optimizer spec


def _flat_color_batch(cfg: ModelConfig, n: int = 8) -> Batch:
    """A learnable toy: every frame is one flat colour; it brightens by 40 x a per step (a in 0..2)."""
    g = torch.Generator().manual_seed(0)
    base = torch.randint(30, 120, (n, 1, 1, 1, cfg.frame_channels), generator=g)
    a = torch.randint(0, 3, (n,), generator=g)

    def frames(step: int) -> torch.Tensor:
        x = (base + 40 * step * a.view(n, 1, 1, 1, 1)).clamp(0, 255).to(torch.uint8)
        return x.expand(n, cfg.frame_stack, cfg.image_size, cfg.image_size, cfg.frame_channels).contiguous()

    k = min(2, cfg.max_offset)
    return Batch(obs=frames(0), next_obs=frames(1), future_obs=frames(k), offset=torch.full((n,), k),
                 actions=a.float().view(n, 1).repeat(1, A), states=torch.randn(n, S, generator=g))


@pytest.mark.parametrize("overrides", [{}, {"quantizer": "vq"}], ids=["released-continuous-K10", "lapo-vq"])
def test_both_lapo_variants_learn_a_fixed_batch(overrides):
    cfg = small("lapo", image_size=8, frame_stack=1, encoder_channels=[4, 4, 4], lr=3e-3, **overrides)
    if overrides:  # the LAPO paper's: single-step, quantised
        assert (cfg.quantizer, cfg.max_offset, cfg.vq_codebooks) == ("vq", 1, 2)
    else:  # the LAOM paper's LAPO line: no quantizer, (o_t, o_t+k) with K = 10
        assert (cfg.quantizer, cfg.max_offset) == ("none", 10)
    model = build_model(cfg, A, S)
    opt = torch.optim.Adam(model.param_groups(), lr=cfg.lr)
    b = _flat_color_batch(cfg)
    recon, total = [], []
    for _ in range(30):
        loss, metrics = model.loss(b)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.after_step()
        recon.append(float(metrics["lapo/recon_loss"]))
        total.append(float(metrics["loss"]))
    assert all(math.isfinite(v) for v in total)
    assert sum(recon[-3:]) < 0.9 * sum(recon[:3]), recon
    assert sum(total[-3:]) < sum(total[:3]), total


@pytest.mark.parametrize("method", ["laom_sup", "lapo", "idm"])
def test_probes_never_change_the_models_gradients(method):
    """Training probes beside the model leaves the model's own gradients exactly as without them."""
    cfg = small(method)
    with_probes = build_model(cfg, A, S)
    without = build_model(cfg.replace(probes=False), A, S)
    without.load_state_dict(with_probes.state_dict(), strict=False)
    b, lb = fake_batch(cfg), fake_batch(cfg, 3, labeled=1.0)
    for model in (with_probes, without):
        torch.manual_seed(1)  # same augmentations
        model.loss(b, lb)[0].backward()
    grads = dict(without.named_parameters())
    for name, p in with_probes.named_parameters():
        if p.requires_grad and not name.startswith("probes."):
            assert torch.allclose(p.grad, grads[name].grad, atol=1e-6), name


# The objective's terms, as each method reports them: loss == sum(weight * metrics[term]).
OBJECTIVE_TERMS = {
    "laom_sup": lambda cfg: {"laom/latent_loss": 1.0, "laom/sup_loss": cfg.sup_coef},
    "laom": lambda cfg: {"laom/latent_loss": 1.0},
    "lapo": lambda cfg: {"lapo/recon_loss": 1.0, "lapo/quantizer_loss": 1.0 if cfg.quantizer != "none" else 0.0},
    "idm": lambda cfg: {"idm/action_mse": 1.0},
}


@pytest.mark.parametrize("method, overrides", [("laom_sup", {}), ("laom", {}), ("lapo", {}),
                                               ("lapo", {"quantizer": "vq"}), ("idm", {})])
def test_reported_loss_is_the_objective_without_the_probes(method, overrides):
    """``loss`` is the model's own objective (the sum of its terms); the probes report apart, and
    the minimised total still holds their losses, so the same backward pass trains them."""
    cfg = small(method, **overrides)
    model = build_model(cfg, A, S)
    total, metrics = model.loss(fake_batch(cfg), fake_batch(cfg, 3, labeled=1.0))
    terms = OBJECTIVE_TERMS[method](cfg)
    objective = sum(w * float(metrics[k]) for k, w in terms.items() if w)
    assert float(metrics["loss"]) == pytest.approx(objective, rel=1e-5)
    probes = [k for k in metrics if k.startswith("probe/") and k != "probe/loss"]
    assert probes and float(metrics["probe/loss"]) == pytest.approx(sum(float(metrics[k]) for k in probes), rel=1e-5)
    assert float(total.detach()) == pytest.approx(float(metrics["loss"]) + float(metrics["probe/loss"]), rel=1e-5)
    assert float(metrics["probe/loss"]) > 0.1 * float(metrics["loss"])  # the probes would have shown in `loss`
    total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.probes.parameters())


def test_laom_sup_supervises_labeled_rows_without_a_labeled_batch():
    cfg = small("laom_sup")
    model = build_model(cfg, A, S)
    _, metrics = model.loss(fake_batch(cfg))
    assert metrics["laom/sup_loss"] > 0
    _, metrics = build_model(small("laom"), A, S).loss(fake_batch(cfg))
    assert "laom/sup_loss" not in metrics


def test_bf16_autocast_gives_a_float32_loss_that_backpropagates():
    cfg = small("laom_sup")
    model = build_model(cfg, A, S)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = model.loss(fake_batch(cfg), fake_batch(cfg, 3))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert model.encoder.stages[0].conv.weight.grad is not None


def test_laom_sup_traces_as_one_graph():
    """No graph breaks: torch.compile(fullgraph=True) would fail on any (eager backend, CPU-cheap)."""
    cfg = small("laom_sup")
    model = build_model(cfg, A, S)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    loss, _ = compiled(fake_batch(cfg), fake_batch(cfg, 3))
    loss.backward()
    torch._dynamo.reset()


# ---------------------------------------------------------------- EMA


def test_ema_target_moves_exactly_tau_toward_online():
    cfg = small("laom", ema_tau=0.25, ema_every=2)
    model = build_model(cfg, A, S)
    with torch.no_grad():  # make online and target differ
        for p in model.encoder.parameters():
            p.add_(torch.randn_like(p))
    online = [p.detach().clone() for p in model.encoder.parameters()]
    before = [p.detach().clone() for p in model.target_encoder.parameters()]
    model.after_step()  # step 0: update
    after = [p.detach().clone() for p in model.target_encoder.parameters()]
    for o, b, a in zip(online, before, after, strict=True):
        assert torch.allclose(a, b + 0.25 * (o - b), atol=1e-6)
    model.after_step()  # step 1: ema_every=2 skips it
    for a, p in zip(after, model.target_encoder.parameters(), strict=True):
        assert torch.equal(a, p)
    assert all(not p.requires_grad for p in model.target_encoder.parameters())
    assert not any(p is q for p in model.trainable_parameters() for q in model.target_encoder.parameters())


# ---------------------------------------------------------------- quantizers


def _lapo_codes_after_training(quantizer: str, **overrides) -> tuple[torch.Tensor, float]:
    cfg = small("lapo", quantizer=quantizer, latent_dim=16, vq_groups=2, vq_codes=16, fsq_levels=[4, 4],
                image_size=16, encoder_channels=[8, 16, 16], **overrides)
    model = build_model(cfg, A, S)
    opt = torch.optim.Adam(model.trainable_parameters(), lr=1e-3)
    b = fake_batch(cfg, 32)
    for _ in range(10):
        loss, metrics = model.loss(b)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        obs, nxt = to_float_image(b.obs), to_float_image(b.future_obs)
        z = model.idm_out(torch.nn.functional.gelu(model.idm_encoder.features(torch.cat([obs, nxt], 1))))
        codes = model.quantizer.codes_of(z)
    return codes, float(metrics[f"{quantizer}/perplexity"])


# LAPO's EMA codebook needs hundreds of steps to spread out (its first updates throw unused codes far
# away, see quantize.py): test_vq_ema_codebook_settles_on_the_cluster_means covers it.
@pytest.mark.parametrize("quantizer, overrides", [("vq", {"vq_ema_decay": None}), ("fsq", {})])
def test_quantizer_codes_are_used(quantizer, overrides):
    codes, perplexity = _lapo_codes_after_training(quantizer, **overrides)
    distinct = [len(torch.unique(codes[:, g])) for g in range(codes.shape[1])]
    assert min(distinct) >= 4, distinct  # 32 transitions, no group collapsed onto one code
    assert perplexity > 3


@pytest.mark.parametrize("ema_decay", [0.999, None])
def test_vector_quantizer_snaps_to_codes_with_straight_through_gradient(ema_decay):
    vq = VectorQuantizer(8, groups=2, codes=5, codebooks=2, ema_decay=ema_decay).eval()
    z = torch.randn(10, 8, requires_grad=True)
    z_q, loss, _ = vq(z)
    idx = vq.codes_of(z)
    expected = torch.stack([vq.codebook[g, idx[:, g]] for g in range(2)], 1).view(10, 8)
    assert torch.equal(z_q, expected)  # exactly the codes: relabels are codebook entries
    (grad,) = torch.autograd.grad(z_q.sum(), z, retain_graph=True)
    assert torch.equal(grad, torch.ones_like(z))  # straight through
    loss.backward()
    assert z.grad is not None  # the commitment loss pulls z toward its codes
    if ema_decay is None:
        assert vq.codebook.grad is not None  # learned by the codebook loss
    else:
        assert not isinstance(vq.codebook, torch.nn.Parameter) and not list(vq.parameters())


def test_vq_groups_share_codebooks():
    """LAPO: 8 discrete latents, 2 codebooks, each shared by 4 of them; vq_codebooks=1: one for all."""
    vq = VectorQuantizer(32, groups=8, codes=16, codebooks=2)
    assert vq.codebook.shape == (2, 16, 4) and vq.book_of.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    shared = VectorQuantizer(32, groups=8, codes=16, codebooks=1).eval()
    assert shared.codebook.shape == (1, 16, 4)
    z = torch.randn(5, 8, 4)
    z[:, 6] = z[:, 1]  # two groups, same vector: same code of the one codebook
    z_q = shared(z.view(5, 32))[0].view(5, 8, 4)
    assert torch.equal(z_q[:, 6], z_q[:, 1])
    rows = shared.codebook[0]
    assert all((z_q[b, g] == rows).all(-1).any() for b in range(5) for g in range(8))
    # in LAPO: one shared codebook, and the relabels of every group are entries of it
    cfg = small("lapo", quantizer="vq", vq_groups=4, vq_codebooks=1, image_size=8, frame_stack=1,
                encoder_channels=[4, 4, 4])
    model = build_model(cfg, A, S)
    assert model.quantizer.codebook.shape == (1, cfg.vq_codes, cfg.latent_dim // 4)
    b = fake_batch(cfg)
    z = model.latent_action(b.obs, b.next_obs).view(6, 4, -1)
    assert all((z[i, g] == model.quantizer.codebook[0]).all(-1).any() for i in range(6) for g in range(4))


def _lapo_ema_reference(codebook, ema_count, ema_weight, x, idx, decay, eps=1e-5):
    """LAPO's VQEmbeddingEMA update written out per codebook with one-hot encodings."""
    books, m, d = codebook.shape
    per_book = x.shape[1] // books  # groups per codebook, contiguous
    x = x.view(x.shape[0], books, per_book, d).transpose(0, 1).reshape(books, -1, d)  # [K, B*G/K, d]
    idx = idx.view(idx.shape[0], books, per_book).transpose(0, 1).reshape(books, -1)
    enc = F.one_hot(idx, m).float()  # [K, N, M]
    count = decay * ema_count + (1 - decay) * enc.sum(1)
    n = count.sum(-1, keepdim=True)
    count = (count + eps) / (n + m * eps) * n
    weight = decay * ema_weight + (1 - decay) * torch.bmm(enc.transpose(1, 2), x)
    return weight / count.unsqueeze(-1), count, weight


def test_vq_codebook_moves_by_ema_not_by_gradient():
    cfg = small("lapo", quantizer="vq", image_size=8, frame_stack=1, encoder_channels=[4, 4, 4])
    model = build_model(cfg, A, S)
    vq = model.quantizer
    names = dict(model.named_parameters())
    assert not any("quantizer" in n for n in names)  # no codebook in the optimizer
    assert {"quantizer.codebook", "quantizer.ema_count", "quantizer.ema_weight"} <= set(model.state_dict())
    opt = torch.optim.Adam(model.param_groups(), lr=1e-3)
    b = fake_batch(cfg)
    with torch.no_grad():
        obs, end = to_float_image(b.obs), to_float_image(b.future_obs)
        x = model.idm_out(F.gelu(model.idm_encoder.features(torch.cat([obs, end], 1))))
        idx = vq.codes_of(x)
    expected = _lapo_ema_reference(vq.codebook.clone(), vq.ema_count.clone(), vq.ema_weight.clone(),
                                   x.view(6, cfg.vq_groups, -1), idx, cfg.vq_ema_decay)
    loss, metrics = model.loss(b)
    assert "vq/codebook_loss" not in metrics  # LAPO: commitment loss only
    for got, want in zip((vq.codebook, vq.ema_count, vq.ema_weight), expected, strict=True):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    loss.backward()
    opt.step()
    after_step = vq.codebook.clone()
    assert torch.equal(after_step, expected[0])  # the optimizer step did not touch it
    model.latent_action(b.obs, b.next_obs)  # no_grad relabeling leaves it alone, in train mode too
    model.eval()
    model.loss(b)  # eval mode too (LAPO: only in training)
    assert torch.equal(vq.codebook, after_step)


def test_vq_ema_codebook_settles_on_the_means_of_its_assignments():
    """On fixed clustered vectors the EMA codebook reaches k-means' fixed point: each used code is the
    mean of the vectors assigned to it (codes thrown away by the first updates come back near 0)."""
    vq = VectorQuantizer(16, groups=2, codes=16, codebooks=1, ema_decay=0.99)
    centers = torch.randn(6, 8) * 2
    x = (centers[torch.randint(0, 6, (128, 2))] + 0.3 * torch.randn(128, 2, 8)).view(128, 16)
    for _ in range(1500):
        vq(x)
    idx = vq.codes_of(x).flatten()
    used = idx.unique()
    assert len(used) >= 4, used  # the six clusters did not collapse onto a few codes
    vectors = x.view(-1, 8)
    for c in used:
        assert torch.allclose(vq.codebook[0, c], vectors[idx == c].mean(0), atol=1e-2), int(c)


def test_fsq_rounds_to_its_levels():
    fsq = FSQ(4, levels=(5, 4))
    z_q, loss, _ = fsq(torch.randn(100, 4) * 3)
    assert loss == 0
    assert set(torch.unique(z_q[:, 0] * 2).tolist()) <= {-2.0, -1.0, 0.0, 1.0, 2.0}
    assert set(torch.unique(z_q[:, 1] * 2).tolist()) <= {-2.0, -1.0, 0.0, 1.0}
    assert fsq.codes_of(torch.randn(100, 4)).max() < 20


# ---------------------------------------------------------------- augmentations


def test_warp_identity_shift_and_rotation_are_exact():
    x = torch.randn(2, 3, 16, 16)
    eye = torch.eye(3).expand(2, 3, 3)
    assert torch.allclose(warp(x, eye), x, atol=1e-5)
    shift = torch.eye(3).repeat(2, 1, 1)
    shift[:, 0, 2] = 2 * 2 / 16  # sample 2 pixels to the right
    assert torch.allclose(warp(x, shift)[..., :-2], x[..., 2:], atol=1e-5)
    rot = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]).expand(2, 3, 3)
    assert torch.allclose(warp(x, rot), torch.rot90(x, 1, dims=(2, 3)), atol=1e-5)


def test_homography_maps_the_four_points():
    src = torch.tensor([[[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]])
    dst = src + torch.tensor([[[0.2, 0.1], [-0.1, 0.3], [-0.2, -0.2], [0.1, -0.1]]])
    h = homography(src, dst)
    p = torch.cat([src, torch.ones(1, 4, 1)], -1) @ h.transpose(1, 2)
    assert torch.allclose(p[..., :2] / p[..., 2:], dst, atol=1e-5)


def test_augment_is_batched_random_and_float32_under_autocast():
    x = torch.rand(64, 9, 32, 32) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = augment(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    changed = (y - x).abs().flatten(1).amax(1) > 1e-4
    assert 0.7 < changed.float().mean() < 1.0  # 1 recipe in 8 is "nothing"
    assert y.min() >= -1 - 1e-5 and y.max() <= 1 + 1e-5


def test_every_view_gets_its_own_augmentation():
    cfg = small("laom")
    model = build_model(cfg, A, S)
    x = to_float_image(fake_batch(cfg).obs)
    same = torch.cat([x, x])
    out = model.augment(same)
    assert not torch.allclose(out[:6], out[6:])
    model.eval()
    assert torch.equal(model.augment(x), x)  # off outside training


# ---------------------------------------------------------------- policies and pipeline


def test_latent_bc_from_a_frozen_lam_and_decoder_from_the_policy():
    lam_cfg = small("laom_sup")
    lam = build_model(lam_cfg, A, S).eval()
    policy = build_model(small("latent_bc"), A, S)
    policy.set_labeler(lam.latent_action)
    b = fake_batch(lam_cfg)
    b.latents = None
    loss, metrics = policy.loss(b)
    loss.backward()
    assert all(p.grad is None for p in lam.parameters())  # the labeler stays frozen
    assert "latent_bc/latent_mse" in metrics and "probe/action_mse" in metrics
    decoder = build_model(small("action_decoder"), A, S)
    decoder.set_source(policy.act)
    assert decoder.act(b.obs).shape == (6, A)
    loss, _ = decoder.loss(b)
    assert torch.isfinite(loss)
    assert "policy" not in dict(decoder.named_modules())  # sources are not submodules


def test_bc_learns_only_from_labeled_rows():
    cfg = small("bc")
    model = build_model(cfg, A, S)
    b = fake_batch(cfg, 6)
    loss_a, _ = model.loss(b)
    b.actions[~b.labeled] += 100.0  # unlabeled actions must not matter
    loss_b, _ = model.loss(b)
    assert torch.allclose(loss_a, loss_b)


def test_evaluate_reports_mse_and_r2():
    class Perfect(torch.nn.Module):
        def predictions(self, batch):
            return {"exact": (batch.actions, batch.actions),
                    "mean": (torch.zeros_like(batch.actions) + batch.actions.mean(0), batch.actions)}

    b = fake_batch(small("laom"), 50)
    report = evaluate(Perfect(), [b])
    assert report["exact/mse"] == 0 and report["exact/r2"] == pytest.approx(1.0)
    assert report["mean/r2"] == pytest.approx(0.0, abs=1e-6)
    assert report["mean/mse"] == pytest.approx(float(b.actions.var(0, unbiased=False).mean()), rel=1e-5)
    assert math.isfinite(report["mean/mse"])
