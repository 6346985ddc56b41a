"""A training checkpoint on disk: ``model.pt`` (model, optimizer, scheduler, step, data position)
and ``meta.json`` (what the model is: its config, the dataset's dimensions, the stage), so a model
can be rebuilt from the directory alone."""

from __future__ import annotations

import json
import os

import torch

from raylam.config import from_dict
from raylam.models import build_model
from raylam.models.config import ModelConfig

CHECKPOINT_FILE = "model.pt"
CHECKPOINT_META = "meta.json"


def save_checkpoint(directory: str, model: torch.nn.Module, optimizer, scheduler, step: int, meta: dict,
                    data_state: dict | None = None) -> None:
    torch.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
         "scheduler": scheduler.state_dict(), "step": step, "data": data_state or {}},
        os.path.join(directory, CHECKPOINT_FILE),
    )
    with open(os.path.join(directory, CHECKPOINT_META), "w") as f:
        json.dump({**meta, "step": step}, f, indent=2)


def load_model_from_directory(directory: str, device: str | torch.device = "cpu"):
    """(model in eval mode, meta) from a checkpoint directory written by this loop."""
    meta_path = os.path.join(directory, CHECKPOINT_META)
    if not os.path.exists(meta_path):
        raise FileNotFoundError(f"{directory}: no {CHECKPOINT_META}; not a raylam checkpoint")
    with open(meta_path) as f:
        meta = json.load(f)
    cfg = from_dict(ModelConfig, meta["model"])
    model = build_model(cfg, meta["action_dim"], meta["state_dim"])
    state = torch.load(os.path.join(directory, CHECKPOINT_FILE), map_location=device, weights_only=True)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), meta
