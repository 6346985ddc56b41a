"""Choose MuJoCo's OpenGL backend before dm-control is imported.

MuJoCo reads ``MUJOCO_GL`` once, at import. ``auto`` keeps a value the user already set, else
picks EGL when an NVIDIA GPU is visible (the fast path on GPU nodes) and OSMesa otherwise (CPU
software rendering, needs Debian's ``libosmesa6``). Ray workers on other nodes do not inherit the
driver's environment, so every process that renders calls this first.
"""

from __future__ import annotations

import os
import shutil

BACKENDS = ("auto", "osmesa", "egl", "glfw")


def configure_rendering(backend: str = "auto") -> str:
    if backend not in BACKENDS:
        raise ValueError(f"render backend: got {backend!r}, expected one of {BACKENDS}")
    if backend == "auto":
        if os.environ.get("MUJOCO_GL"):
            return os.environ["MUJOCO_GL"]
        has_gpu = os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi") is not None
        backend = "egl" if has_gpu else "osmesa"
    os.environ["MUJOCO_GL"] = backend
    _quiet_model_loading()
    return backend


def _quiet_model_loading() -> None:
    """dm-control 1.0.50 on mujoco 3.17 logs a deprecation warning (``settotalmass``) through absl
    on every model load; one per episode would drown the progress bar."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)
