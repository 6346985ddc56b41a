"""One factory for every trainable method, so the trainer never branches on the method."""

from __future__ import annotations

from raylam.models.base import Method
from raylam.models.config import ModelConfig
from raylam.models.idm import IDM
from raylam.models.laom import LAOM
from raylam.models.lapo import LAPO
from raylam.models.policies import ActionDecoder, Policy

_CLASSES: dict[str, type[Method]] = {
    "idm": IDM,
    "lapo": LAPO,
    "laom": LAOM,
    "laom_sup": LAOM,
    "bc": Policy,
    "latent_bc": Policy,
    "action_decoder": ActionDecoder,
}


def build_model(cfg: ModelConfig, action_dim: int, state_dim: int) -> Method:
    """The model ``cfg.method`` selects, on the CPU, in training mode."""
    # unsupervised LAMs learn from video alone (imported data may have no actions: action_dim 0)
    least = 0 if cfg.method in ("laom", "lapo") else 1
    if action_dim < least or state_dim < 0:
        raise ValueError(f"build_model: {cfg.method} needs action_dim >= {least} and state_dim >= 0, "
                         f"got {action_dim}, {state_dim}")
    return _CLASSES[cfg.method](cfg, action_dim, state_dim)
