"""Finished models as plain files: safetensors weights + a JSON config, loadable without Ray.

``raylam export RUN -o DIR`` (or :func:`export_run`) writes ``DIR/model.safetensors`` and
``DIR/config.json``; with ``--decoder RUN`` a latent policy and its action decoder go together
(``decoder.safetensors``) and load as one acting policy. :func:`load` (``raylam.load``) needs
torch and raylam's models only: no Ray, no dataset, no training code.

    import raylam
    policy = raylam.load("exports/laom_sup_policy")      # obs uint8 [B, stack, H, W, C]
    actions = policy.act(obs)                              # [B, action_dim]
    lam = raylam.load("exports/laom_sup_lam")
    z = lam.latent_action(obs, next_obs)                   # [B, latent_dim]
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
import torch.nn as nn

from raylam.config import ConfigError, from_dict
from raylam.models import build_model
from raylam.models.config import ModelConfig

FORMAT = "raylam-export/1"
CONFIG = "config.json"
FILES = {"model": "model.safetensors", "decoder": "decoder.safetensors"}


class DecodedPolicy(nn.Module):
    """A latent policy followed by its action decoder: ``act(obs)`` gives environment actions."""

    def __init__(self, policy: nn.Module, decoder: nn.Module):
        super().__init__()
        self.policy, self.decoder = policy, decoder

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        return self.decoder.decode(self.policy.act(obs).float())


def _part(model: nn.Module, meta: dict, artifact: dict, file: str) -> dict[str, Any]:
    return {"file": file, "stage": artifact["stage"], "method": meta["model"]["method"],
            "model": meta["model"], "action_dim": int(meta["action_dim"]), "state_dim": int(meta["state_dim"]),
            "parameters": sum(p.numel() for p in model.parameters())}


def export_run(run_dir: str, output: str, decoder_dir: str | None = None) -> str:
    """Write the model of a finished run (and its decoder) to ``output``; returns the config path."""
    from safetensors.torch import save_model

    from raylam.checks import check_output_dir
    from raylam.train.artifacts import load_run

    check_output_dir(output, "--output")
    model, meta, artifact = load_run(run_dir)
    parts = {"model": (model, meta, artifact)}
    if decoder_dir is not None:
        if artifact["stage"] != "latent_bc":
            raise ConfigError(f"--decoder: {run_dir} is a {artifact['stage']!r} run; a decoder goes with a "
                              "latent_bc policy")
        decoder, dmeta, dartifact = load_run(decoder_dir, expect_stages=("action_decoder",))
        if int(dmeta["model"]["latent_dim"]) != int(model.out_dim):
            raise ConfigError(f"--decoder: {decoder_dir} reads {dmeta['model']['latent_dim']}-dim latents, "
                              f"policy {run_dir} outputs {model.out_dim}")
        parts["decoder"] = (decoder, dmeta, dartifact)
    os.makedirs(output, exist_ok=True)
    config: dict[str, Any] = {"format": FORMAT, "kind": "decoded_policy" if decoder_dir else artifact["stage"],
                              "source": {"run": run_dir, "decoder_run": decoder_dir,
                                         "dataset": artifact.get("dataset"),
                                         "num_labeled": artifact.get("num_labeled"),
                                         "seed": (artifact.get("config") or {}).get("seed"),
                                         "step": meta.get("step")}}
    for name, (module, part_meta, part_artifact) in parts.items():
        save_model(module, os.path.join(output, FILES[name]), metadata={"format": FORMAT})
        config[name] = _part(module, part_meta, part_artifact, FILES[name])
    path = os.path.join(output, CONFIG)
    with open(path, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    return path


def _build(part: dict, directory: str, device: torch.device) -> nn.Module:
    from safetensors.torch import load_model

    model = build_model(from_dict(ModelConfig, part["model"]), part["action_dim"], part["state_dim"])
    load_model(model, os.path.join(directory, part["file"]), strict=True, device=str(device))
    return model.to(device).eval()


def load(path: str, device: str | torch.device = "cpu") -> nn.Module:
    """The exported model in ``path`` (a directory written by :func:`export_run`), in eval mode.

    A policy (bc) or a decoded policy answers ``act(obs)``; a LAM or IDM ``latent_action(obs, next_obs)``.
    ``model.raylam_config`` holds the export's config (frame stack, image size, dims, source run)."""
    config_path = os.path.join(path, CONFIG)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{path}: no {CONFIG}; not a directory written by `raylam export`")
    with open(config_path) as f:
        config = json.load(f)
    if config.get("format") != FORMAT:
        raise ConfigError(f"{config_path}: format {config.get('format')!r}, expected {FORMAT!r}")
    device = torch.device(device)
    model = _build(config["model"], path, device)
    if config.get("decoder"):
        model = DecodedPolicy(model, _build(config["decoder"], path, device)).eval()
    model.raylam_config = config
    return model


def describe(config: dict) -> str:
    """One line about an export, for the command line."""
    parts = [f"{config['model']['method']} ({config['model']['parameters']:,} parameters)"]
    if config.get("decoder"):
        parts.append(f"decoder ({config['decoder']['parameters']:,})")
    model = config["model"]["model"]
    return (f"{config['kind']}: {' + '.join(parts)}; input uint8 [B, {model['frame_stack']}, {model['image_size']}, "
            f"{model['image_size']}, {model['frame_channels']}], action_dim {config['model']['action_dim']}")


__all__ = ["DecodedPolicy", "describe", "export_run", "load"]
