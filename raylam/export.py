"""Finished models as plain files: safetensors weights + a JSON config, loadable without Ray.

``raylam export RUN -o DIR`` (or :func:`export_run`) writes ``DIR/model.safetensors`` and
``DIR/config.json`` (DIR may be an ``s3://`` or ``gs://`` URI); with ``--decoder RUN`` a latent policy and its action decoder go together
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

import numpy as np
import torch
import torch.nn as nn

from raylam.config import ConfigError, UserError, from_dict
from raylam.models import build_model
from raylam.models.config import ModelConfig

FORMAT = "raylam-export/1"
CONFIG = "config.json"
FILES = {"model": "model.safetensors", "decoder": "decoder.safetensors"}
EXPORTABLE = ("lam", "idm", "bc", "latent_bc")  # stages whose run holds a model (a decoder goes with --decoder)


class InputError(UserError, ValueError):
    """Frames given to a loaded model do not match what it was trained on (config.json)."""


def _frames(obs: Any, name: str, config: dict, device: torch.device) -> torch.Tensor:
    """``obs`` (numpy or torch) as the uint8 [B, stack, H, W, C] tensor the model was trained on, or one
    error naming what differs: float frames are refused rather than silently read as 0..255."""
    m = config["model"]["model"]
    want = (m["frame_stack"], m["image_size"], m["image_size"], m["frame_channels"])
    layout = f"uint8 [B, {', '.join(map(str, want))}] (config.json: frame_stack {want[0]}, image_size {want[1]})"
    if isinstance(obs, np.ndarray):
        obs = np.ascontiguousarray(obs)
        obs = torch.from_numpy(obs if obs.flags.writeable else obs.copy())
    elif not isinstance(obs, torch.Tensor):
        raise InputError(f"{name}: got {type(obs).__name__}, expected a numpy array or torch tensor {layout}")
    if obs.dtype != torch.uint8:
        raise InputError(f"{name}: dtype {str(obs.dtype).removeprefix('torch.')}, expected {layout}; float frames "
                         "are not rescaled: frames in [0, 1] convert with (x * 255).round() to uint8")
    if obs.ndim != 5 or tuple(obs.shape[1:]) != want:
        raise InputError(f"{name}: shape {list(obs.shape)}, expected {layout}"
                         + ("; resize frames to the model's image size" if obs.ndim == 5 else ""))
    return obs.to(device)


def _check_inputs(model: nn.Module, config: dict, device: torch.device) -> None:
    """Wrap the loaded model's ``act`` / ``latent_action`` to check and convert their frames; numpy in,
    numpy out."""
    def back(out: torch.Tensor, like: Any) -> Any:
        return out.cpu().numpy() if isinstance(like, np.ndarray) else out

    if hasattr(model, "act"):
        act = model.act

        def checked_act(obs):
            return back(act(_frames(obs, "obs", config, device)), obs)

        model.act = checked_act
    if hasattr(model, "latent_action"):
        latent_action = model.latent_action

        def checked_latent_action(obs, next_obs):
            return back(latent_action(_frames(obs, "obs", config, device),
                                      _frames(next_obs, "next_obs", config, device)), obs)

        model.latent_action = checked_latent_action


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
    """Write the model of a finished run (and its decoder) to ``output``, a folder or a URI
    (``s3://...``, ``gs://...``: written through pyarrow's filesystems, as runs are); returns the
    config's path there. On a cluster only a URI outlives the node the command ran on."""
    import shutil
    import tempfile

    import pyarrow.fs as pafs
    from safetensors.torch import save_model

    from raylam.checks import check_output_dir, check_reachable
    from raylam.cluster import is_uri
    from raylam.data.storage import resolve
    from raylam.train.artifacts import load_run

    check_output_dir(output, "--output")
    check_reachable(output, "--output")
    model, meta, artifact = load_run(run_dir, expect_stages=EXPORTABLE)  # a relabel run has no model
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
    remote = is_uri(output)
    folder = tempfile.mkdtemp(prefix="raylam-export-") if remote else output  # safetensors writes local files
    os.makedirs(folder, exist_ok=True)
    config: dict[str, Any] = {"format": FORMAT, "kind": "decoded_policy" if decoder_dir else artifact["stage"],
                              "source": {"run": run_dir, "decoder_run": decoder_dir,
                                         "dataset": artifact.get("dataset"),
                                         "num_labeled": artifact.get("num_labeled"),
                                         "seed": (artifact.get("config") or {}).get("seed"),
                                         "step": meta.get("step")}}
    for name, (module, part_meta, part_artifact) in parts.items():
        save_model(module, os.path.join(folder, FILES[name]), metadata={"format": FORMAT})
        os.chmod(os.path.join(folder, FILES[name]), 0o644)  # safetensors writes 0600; an export is for sharing
        config[name] = _part(module, part_meta, part_artifact, FILES[name])
    path = os.path.join(folder, CONFIG)
    with open(path, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    if not remote:
        return path
    target = resolve(output)
    try:
        target.makedirs()
        pafs.copy_files(folder, target.root, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=target.fs)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return f"{output.rstrip('/')}/{CONFIG}"


def _build(part: dict, directory: str, device: torch.device) -> nn.Module:
    from safetensors.torch import load_model

    model = build_model(from_dict(ModelConfig, part["model"]), part["action_dim"], part["state_dim"])
    load_model(model, os.path.join(directory, part["file"]), strict=True, device=str(device))
    return model.to(device).eval()


def load(path: str, device: str | torch.device = "cpu") -> nn.Module:
    """The exported model in ``path`` (a directory written by :func:`export_run`), in eval mode.

    A policy (bc) or a decoded policy answers ``act(obs)``; a LAM or IDM ``latent_action(obs, next_obs)``;
    a latent policy exported without its decoder (kind ``latent_bc``) answers ``act`` with latent actions.
    Frames are uint8 [B, stack, H, W, C], numpy (answered with numpy) or torch, checked against
    ``model.raylam_config``, the export's config (frame stack, image size, dims, source run)."""
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
    _check_inputs(model, config, device)
    return model


def describe(config: dict) -> str:
    """One line about an export, for the command line."""
    parts = [f"{config['model']['method']} ({config['model']['parameters']:,} parameters)"]
    if config.get("decoder"):
        parts.append(f"decoder ({config['decoder']['parameters']:,})")
    model = config["model"]["model"]
    shape = f"input uint8 [B, {model['frame_stack']}, {model['image_size']}, {model['image_size']}, " \
            f"{model['frame_channels']}]"
    if config["kind"] == "latent_bc":  # act() answers the LAM's latent actions; the decoder makes them actions
        return (f"{config['kind']}: {' + '.join(parts)}; {shape}, outputs latent actions [B, {model['latent_dim']}] "
                "(no decoder: export with --decoder RUN for environment actions)")
    return f"{config['kind']}: {' + '.join(parts)}; {shape}, action_dim {config['model']['action_dim']}"


__all__ = ["DecodedPolicy", "InputError", "describe", "export_run", "load"]
