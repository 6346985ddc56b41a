"""Models for latent action learning: plain PyTorch, no Ray, no file I/O.

Every method is built by :func:`build_model` and trained through the same interface::

    model = build_model(ModelConfig.paper("laom_sup"), action_dim, state_dim)
    opt = torch.optim.Adam(model.param_groups(), lr)  # group "probes": keep its lr constant
    loss, metrics = model.loss(batch, labeled_batch)   # Batch: uint8 [B, stack, H, W, C] views
    loss.backward(); opt.step(); model.after_step()    # after_step: EMA target updates

LAMs (idm, lapo, laom, laom_sup) expose ``latent_action(obs, next_obs)``; policies (bc,
latent_bc, and the action decoder with a source) expose ``act(obs)``; :func:`evaluate` reports
held-out MSE and R^2 of every probe and head.
"""

from raylam.models.augment import augment
from raylam.models.base import Method, ema_update, masked_mse
from raylam.models.batch import Batch, to_float_image, to_uint8_frames
from raylam.models.config import LAMS, METHODS, POLICIES, ModelConfig
from raylam.models.encoder import ImpalaDecoder, ImpalaEncoder
from raylam.models.factory import build_model
from raylam.models.heads import FDMHead, IDMHead
from raylam.models.idm import IDM
from raylam.models.laom import LAOM
from raylam.models.lapo import LAPO
from raylam.models.policies import ActionDecoder, Policy
from raylam.models.probes import Moments, Probes, RidgeFit, evaluate, fit_linear_probe
from raylam.models.quantize import FSQ, VectorQuantizer

__all__ = [
    "LAMS", "METHODS", "POLICIES", "FSQ", "IDM", "LAOM", "LAPO", "ActionDecoder", "Batch", "FDMHead",
    "IDMHead", "ImpalaDecoder", "ImpalaEncoder", "Method", "ModelConfig", "Policy", "Probes",
    "Moments", "RidgeFit", "VectorQuantizer", "augment", "build_model", "ema_update", "evaluate", "fit_linear_probe", "masked_mse",
    "to_float_image", "to_uint8_frames",
]
