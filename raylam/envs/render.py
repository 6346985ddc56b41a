"""Choose MuJoCo's OpenGL backend before dm-control is imported.

MuJoCo reads ``MUJOCO_GL`` once, at import. ``auto`` keeps a value the user already set, else
picks EGL when an NVIDIA GPU is visible (the fast path on GPU nodes) and OSMesa otherwise (CPU
software rendering, needs Debian's ``libosmesa6``). Where ``auto`` lands on EGL it first checks,
once per process, that an EGL context really opens (a container without the driver's EGL vendor
library, i.e. without ``graphics`` in ``NVIDIA_DRIVER_CAPABILITIES``, has none) and falls back to
OSMesa with one warning saying why. An explicit ``egl`` is never replaced. Ray workers on other
nodes do not inherit the driver's environment, so every process that renders calls this first.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings

BACKENDS = ("auto", "osmesa", "egl", "glfw")


def configure_rendering(backend: str = "auto") -> str:
    if backend not in BACKENDS:
        raise ValueError(f"render backend: got {backend!r}, expected one of {BACKENDS}")
    if backend == "auto":
        if os.environ.get("MUJOCO_GL") and (os.environ["MUJOCO_GL"] != "egl" or _EGL_CHECKED in os.environ):
            return os.environ["MUJOCO_GL"]
        has_gpu = os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi") is not None
        backend = os.environ.get("MUJOCO_GL") or ("egl" if has_gpu else "osmesa")
        if backend == "egl":
            error = egl_error()
            os.environ[_EGL_CHECKED] = "1"
            if error:
                warnings.warn(f"MuJoCo cannot open an EGL context here ({error}); rendering with OSMesa "
                              "(CPU) instead. On a GPU container, NVIDIA_DRIVER_CAPABILITIES must include "
                              "`graphics` and libEGL/libOpenGL must be installed (cluster/setup_node.sh); set "
                              "render_backend=egl to make this an error", stacklevel=2)
                backend = "osmesa"
    os.environ["MUJOCO_GL"] = backend
    _quiet_model_loading()
    return backend


_EGL_CHECKED = "RAYLAM_EGL_CHECKED"


def egl_error(timeout: float = 120) -> str | None:
    """Why MuJoCo cannot render through EGL in this environment, or None when it can: a tiny context
    opened in a fresh process (MuJoCo binds its GL backend once per process, at import)."""
    code = "from mujoco.egl import GLContext\nc = GLContext(8, 8)\nc.make_current()\nc.free()"
    env = {**os.environ, "MUJOCO_GL": "egl", "PYOPENGL_PLATFORM": "egl"}
    try:
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"no EGL context within {timeout:.0f} s"
    if proc.returncode == 0:
        return None
    return (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]


def _quiet_model_loading() -> None:
    """dm-control 1.0.50 on mujoco 3.17 logs a deprecation warning (``settotalmass``) through absl
    on every model load; one per episode would drown the progress bar."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)
