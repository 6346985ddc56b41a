"""Model configuration: one dataclass for every method, the paper's settings as defaults.

``ModelConfig()`` is the paper's LAOM+supervision (encoder scale 6, latent 8192, heads 1024,
K = 10, EMA tau 0.001, supervision coef 0.001, augmentations on). The other methods differ from it
in a few fields; :meth:`ModelConfig.paper` applies those differences and :meth:`ModelConfig.small`
gives a CPU-sized variant for tests and the quickstart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from raylam.config import ConfigError, from_dict, spec, to_dict

METHODS = ("idm", "lapo", "laom", "laom_sup", "bc", "latent_bc", "action_decoder")
LAMS = ("lapo", "laom", "laom_sup")
POLICIES = ("bc", "latent_bc")

# What each method changes from the dataclass defaults (= the paper's LAOM+sup) to get the
# paper's (or, for LAPO, the LAPO paper's) configuration. Sources: dunnolab/laom configs/*.yaml,
# schmidtdominik/LAPO config.yaml.
_PAPER: dict[str, dict[str, Any]] = {
    "idm": {"encoder_scale": 12, "max_offset": 1, "augment": False},
    # LAPO as the LAOM paper ran it (dunnolab/laom train_lapo.py + configs/lapo.yaml): no quantizer,
    # an 8192-dim continuous z of (o_t, o_t+k), k ~ U{1..10}, pixel MSE to o_t+1, no augmentation.
    # The LAPO paper's own quantised single-step latent is one argument away:
    # paper("lapo", quantizer="vq") applies _LAPO_VQ below.
    "lapo": {"augment": False, "quantizer": "none"},
    "laom": {},
    "laom_sup": {},
    "bc": {"encoder_scale": 32, "max_offset": 1, "augment": False},
    "latent_bc": {"encoder_scale": 32, "max_offset": 1, "augment": False},
    "action_decoder": {"max_offset": 1, "augment": False, "lr": 3e-4},
}

# The LAPO paper's variant (schmidtdominik/LAPO config.yaml): one-step IDM, z of 2 codebooks x 4
# latents x 16 dims = 128, 64 codes per codebook shared by its 4 latents, EMA codebook (decay 0.999),
# commitment 0.05. Applied by paper()/small() for method lapo with quantizer vq.
_LAPO_VQ: dict[str, Any] = {
    "max_offset": 1, "latent_dim": 128, "vq_groups": 8, "vq_codebooks": 2, "vq_codes": 64,
    "vq_beta": 0.05, "vq_ema_decay": 0.999,
}

# CPU-sized settings: 32x32 frames, scale-1 encoder with one residual block, tiny heads.
_SMALL: dict[str, Any] = {
    "encoder_scale": 1,
    "encoder_blocks": 1,
    "image_size": 32,
    "latent_dim": 32,
    "hidden_dim": 64,
    "decoder_hidden": 32,
    "vq_groups": 4,
    "vq_codes": 16,
    "lr": 1e-3,
}


@dataclass
class ModelConfig:
    method: str = spec("laom_sup", choices=METHODS, help="which model build_model returns")

    # observations
    frame_stack: int = spec(3, ge=1, le=16, help="frames per observation")
    frame_channels: int = spec(3, ge=1, le=4, help="channels per frame (3 = RGB)")
    image_size: int = spec(64, ge=8, le=512, help="frame height = width in pixels")

    # IMPALA encoder
    encoder_scale: int = spec(6, ge=1, le=64, help="width multiplier on encoder_channels")
    encoder_channels: tuple[int, ...] = spec((16, 32, 32), ge=1, help="base channels per stage")
    encoder_blocks: int = spec(2, ge=0, le=8, help="residual blocks per stage")
    encoder_downsample: str = spec(
        "stride", choices=("stride", "maxpool"),
        help="stride: 3x3 conv with stride 2 (released LAOM code, faster); maxpool: conv + 3x3/2 max-pool (IMPALA)",
    )
    encoder_norm_out: bool = spec(False, help="LayerNorm (no affine) on the flattened features")

    # latent action and heads
    latent_dim: int = spec(8192, ge=1, le=65536, help="size of the latent action z")
    hidden_dim: int = spec(1024, ge=1, help="width of the IDM/FDM MLP heads")
    head_blocks: int = spec(3, ge=1, le=8, help="residual MLP blocks in each IDM/FDM head")
    decoder_hidden: int = spec(256, ge=1, help="hidden width of the action decoder MLP")
    max_offset: int = spec(10, ge=1, le=1000, help="K: the IDM sees (o_t, o_t+k) with k in 1..K")

    # LAOM
    ema_tau: float = spec(0.001, gt=0.0, le=1.0, help="target encoder <- (1-tau) target + tau online")
    ema_every: int = spec(1, ge=1, help="update the EMA target every this many steps")
    cosine_loss: bool = spec(False, help="LAOM latent loss 1 - cos instead of MSE")
    sup_coef: float = spec(0.001, ge=0.0, help="laom_sup: weight of MSE(head(z), a) on labeled data")
    probes: bool = spec(True, help="train linear probes (z -> action, features -> state) on detached inputs")

    # augmentations (the paper's set: random shift, rotation, perspective, one combo per image)
    augment: bool = spec(True, help="augment every view independently, batched on the device")
    aug_shift: float = spec(14 / 64, ge=0.0, le=1.0, help="max shift as a fraction of the side (paper: 14 of 64 px)")
    aug_rotate: float = spec(90.0, ge=0.0, le=180.0, help="max rotation in degrees")
    aug_perspective: float = spec(0.5, ge=0.0, le=1.0, help="perspective distortion scale")

    # LAPO quantizer
    quantizer: str = spec(
        "vq", choices=("vq", "fsq", "none"),
        help="lapo: vq (EMA codebooks + commitment loss, as the LAPO paper), fsq, or none (continuous z, "
             "as the LAOM paper's LAPO baseline)",
    )
    vq_groups: int = spec(8, ge=1, help="vq: z splits into this many discrete latents, each snapped to one code")
    vq_codebooks: int | None = spec(
        2, ge=1, help="vq: codebooks shared by the groups (group g uses book g // (vq_groups / vq_codebooks); "
                      "LAPO: 2 books for 8 latents); null: one codebook per group",
    )
    vq_codes: int = spec(64, ge=2, help="vq: codes per codebook")
    vq_beta: float = spec(0.05, ge=0.0, help="vq: commitment loss weight (LAPO: 0.05)")
    vq_ema_decay: float | None = spec(
        0.999, ge=0.0, lt=1.0, help="vq: codebook = EMA of its assigned vectors with this decay, no codebook "
                                     "gradient (LAPO: 0.999); null: learn it by the codebook loss instead",
    )
    fsq_levels: tuple[int, ...] = spec((8, 5, 5, 5), ge=2, help="fsq: levels per dimension, cycled over z")

    # optimisation (read by the trainer)
    lr: float = spec(1e-4, gt=0.0, help="Adam learning rate")
    weight_decay: float = spec(0.0, ge=0.0, help="weight decay on matrices (not on biases/norms)")
    warmup_fraction: float = spec(0.3, ge=0.0, le=1.0, help="linear warm-up share of the steps, then linear decay")
    grad_clip: float | None = spec(None, gt=0.0, help="clip the gradient norm (null: off)")

    def validate(self) -> None:
        if not self.encoder_channels:
            raise ConfigError("encoder_channels: expected at least one stage")
        stages = len(self.encoder_channels)
        if self.image_size % (2**stages):
            raise ConfigError(
                f"image_size: got {self.image_size}, expected a multiple of {2**stages} "
                f"(each of the {stages} encoder stages halves the frame)"
            )
        if self.method == "laom_sup" and self.sup_coef <= 0:
            raise ConfigError("sup_coef: method laom_sup needs sup_coef > 0 (use method laom for none)")
        if self.method == "lapo":
            if self.augment:
                raise ConfigError("augment: lapo reconstructs pixels; independent view augmentations "
                                  "make its target unpredictable, set augment: false")
            if self.quantizer == "vq" and self.latent_dim % self.vq_groups:
                raise ConfigError(f"latent_dim: got {self.latent_dim}, expected a multiple of "
                                  f"vq_groups={self.vq_groups}")
            if self.quantizer == "vq" and self.vq_codebooks and self.vq_groups % self.vq_codebooks:
                raise ConfigError(f"vq_codebooks: got {self.vq_codebooks}, expected a divisor of "
                                  f"vq_groups={self.vq_groups} (each book serves as many groups)")
            if self.quantizer == "fsq" and self.latent_dim % len(self.fsq_levels):
                raise ConfigError(f"latent_dim: got {self.latent_dim}, expected a multiple of "
                                  f"len(fsq_levels)={len(self.fsq_levels)}")

    # ------------------------------------------------------------------ presets
    @property
    def in_channels(self) -> int:
        """Channels of one stacked observation (frame_stack x frame_channels, 9 by default)."""
        return self.frame_stack * self.frame_channels

    @classmethod
    def paper(cls, method: str = "laom_sup", **overrides: Any) -> ModelConfig:
        """The paper's configuration for ``method``, with ``overrides`` on top.

        ``paper("lapo", quantizer="vq")`` is the LAPO paper's quantised single-step variant.
        """
        return from_dict(cls, {**_preset(method, overrides), "method": method, **overrides})

    @classmethod
    def small(cls, method: str = "laom_sup", **overrides: Any) -> ModelConfig:
        """A CPU-sized configuration (32x32 frames, scale-1 encoder) for tests and quick runs."""
        return from_dict(cls, {**_preset(method, overrides), **_SMALL, "method": method, **overrides})

    def replace(self, **changes: Any) -> ModelConfig:
        """A validated copy with ``changes``."""
        return from_dict(type(self), {**to_dict(self), **changes})


def _preset(method: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """What ``method`` changes from the defaults; LAPO with ``quantizer: vq`` gets the LAPO paper's VQ."""
    if method not in METHODS:
        raise ConfigError(f"method: got {method!r}, expected one of {list(METHODS)}")
    if method == "lapo" and overrides.get("quantizer") == "vq":
        return {**_PAPER[method], **_LAPO_VQ}
    return _PAPER[method]
