"""raylam export / raylam.load: a finished run's weights as safetensors + JSON, back without Ray."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from raylam.cli import main
from raylam.config import to_dict
from raylam.models import ModelConfig, build_model
from raylam.train.checkpoint import save_checkpoint

A, S = 6, 5
ROOT = Path(__file__).resolve().parents[1]


def save_run(root: Path, cfg: ModelConfig, stage: str, seed: int) -> tuple[str, torch.nn.Module]:
    """A finished run as the trainer leaves it: checkpoint_x/ (model + meta.json) and artifact.json."""
    torch.manual_seed(seed)
    model = build_model(cfg, A, S)
    for p in model.parameters():  # not the initialisation: every weight must travel
        p.data.add_(0.01 * torch.randn_like(p))
    checkpoint = root / "checkpoint_x"
    checkpoint.mkdir(parents=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    meta = {"stage": stage, "model": to_dict(cfg), "dataset": "data/x", "num_labeled": 2, "seed": seed,
            "action_dim": A, "state_dim": S}
    save_checkpoint(str(checkpoint), model, optimizer, scheduler, 7, meta)
    artifact = {"stage": stage, "method": cfg.method, "checkpoint": str(checkpoint), "dataset": "data/x",
                "num_labeled": 2, "config": {"seed": seed}}
    (root / "artifact.json").write_text(json.dumps(artifact))
    return str(root), model.eval()


def frames(n: int, cfg: ModelConfig, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (n, cfg.frame_stack, cfg.image_size, cfg.image_size, cfg.frame_channels)
    return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)


def load_without_ray(export: str, script: str) -> dict:
    """Run ``script`` (with ``model = raylam.load(export)``) in a fresh interpreter; check Ray never loaded."""
    code = (f"import sys, json, torch, raylam\nmodel = raylam.load({export!r})\n{script}\n"
            "assert 'ray' not in sys.modules, 'raylam.load imported ray'\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=900,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_decoded_policy_round_trip(tmp_path, capsys):
    policy_cfg = ModelConfig.small("latent_bc", latent_dim=8)
    policy_dir, policy = save_run(tmp_path / "bc", policy_cfg, "latent_bc", 0)
    decoder_dir, decoder = save_run(tmp_path / "dec", ModelConfig.small("action_decoder", latent_dim=8),
                                    "action_decoder", 1)
    out = tmp_path / "export"
    assert main(["export", policy_dir, "--decoder", decoder_dir, "-o", str(out)]) == 0
    assert "decoded_policy: latent_bc" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "decoder.safetensors"}
    obs = frames(4, policy_cfg, 3)
    torch.save(obs, tmp_path / "obs.pt")
    with torch.no_grad():
        expected = decoder.decode(policy.act(obs).float())
    got = load_without_ray(str(out), f"obs = torch.load({str(tmp_path / 'obs.pt')!r})\n"
                                     "print(json.dumps({'act': model.act(obs).tolist(), "
                                     "'seed': model.raylam_config['source']['seed']}))")
    np.testing.assert_allclose(got["act"], expected.numpy(), rtol=1e-5, atol=1e-6)
    assert got["seed"] == 0


def test_lam_round_trip_in_process(tmp_path):
    import raylam
    from raylam.export import export_run

    cfg = ModelConfig.small("laom_sup", latent_dim=16)
    run, lam = save_run(tmp_path / "lam", cfg, "lam", 2)
    export_run(run, str(tmp_path / "lam_export"))
    loaded = raylam.load(str(tmp_path / "lam_export"))
    assert not loaded.training and loaded.raylam_config["kind"] == "lam"
    obs, nxt = frames(3, cfg, 4), frames(3, cfg, 5)
    torch.testing.assert_close(loaded.latent_action(obs, nxt), lam.latent_action(obs, nxt))
    for name, tensor in lam.state_dict().items():  # every weight and buffer, EMA target included
        torch.testing.assert_close(loaded.state_dict()[name], tensor, msg=name)


def test_export_errors_are_one_line(tmp_path, capsys):
    run, _ = save_run(tmp_path / "bc", ModelConfig.small("bc"), "bc", 0)
    decoder, _ = save_run(tmp_path / "dec", ModelConfig.small("action_decoder", latent_dim=8), "action_decoder", 1)
    assert main(["export", run, "--decoder", decoder, "-o", str(tmp_path / "x")]) == 2
    assert "a decoder goes with a latent_bc policy" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nope"), "-o", str(tmp_path / "y")]) == 2
    assert "is not a finished raylam run" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="not a directory written by `raylam export`"):
        import raylam

        raylam.load(str(tmp_path))


def test_load_checks_its_inputs_and_takes_numpy(tmp_path, capsys):
    """numpy in, numpy out; a wrong size, float frames or a list fail with one clear error."""
    import raylam
    from raylam.export import InputError

    cfg = ModelConfig.small("bc")
    run, policy = save_run(tmp_path / "bc", cfg, "bc", 0)
    out = tmp_path / "bc_export"
    assert main(["export", run, "-o", str(out)]) == 0
    assert all((p.stat().st_mode & 0o777) == 0o644 for p in out.iterdir())  # readable by everyone it is shared with
    loaded = raylam.load(str(out))
    obs = frames(2, cfg, 1)
    got = loaded.act(obs.numpy())
    assert isinstance(got, np.ndarray)
    np.testing.assert_allclose(got, policy.act(obs).numpy(), rtol=1e-5, atol=1e-6)
    size = cfg.image_size
    big = np.zeros((2, cfg.frame_stack, size + 32, size + 32, 3), np.uint8)
    with pytest.raises(InputError, match=rf"obs: shape \[2, {cfg.frame_stack}, {size + 32}, {size + 32}, 3\], expected "
                                         rf"uint8 \[B, {cfg.frame_stack}, {size}, {size}, 3\].*resize frames"):
        loaded.act(big)
    with pytest.raises(InputError, match="obs: dtype float32, expected uint8.*float frames are not rescaled"):
        loaded.act(obs.float() / 255)
    with pytest.raises(InputError, match=r"obs: shape \[.*\], expected uint8 \[B, "):
        loaded.act(obs[0])  # no batch dimension
    with pytest.raises(InputError, match="obs: got list, expected a numpy array or torch tensor"):
        loaded.act(obs.tolist())


def test_lam_checks_both_frames(tmp_path):
    import raylam
    from raylam.export import InputError, export_run

    cfg = ModelConfig.small("laom", latent_dim=8)
    run, lam = save_run(tmp_path / "lam", cfg, "lam", 2)
    export_run(run, str(tmp_path / "lam_export"))
    loaded = raylam.load(str(tmp_path / "lam_export"))
    obs, nxt = frames(2, cfg, 4), frames(2, cfg, 5)
    np.testing.assert_allclose(loaded.latent_action(obs.numpy(), nxt.numpy()), lam.latent_action(obs, nxt).numpy(),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="next_obs: dtype int64"):
        loaded.latent_action(obs, nxt.long())


def test_a_latent_policy_without_its_decoder_says_so(tmp_path, capsys):
    run, _ = save_run(tmp_path / "bc", ModelConfig.small("latent_bc", latent_dim=8), "latent_bc", 0)
    assert main(["export", run, "-o", str(tmp_path / "x")]) == 0
    captured = capsys.readouterr()
    assert "outputs latent actions [B, 8] (no decoder" in captured.out and "action_dim" not in captured.out
    assert "--decoder RUN" in captured.err
