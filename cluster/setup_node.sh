#!/usr/bin/env bash
# Node setup for the Ray cluster launcher (cluster/aws.yaml, cluster/gcp.yaml): runs inside the
# rayproject/ray container of every node, as its `setup_commands`. Safe to run again.
#   bash setup_node.sh [RAYLAM_DIR]      (default: the repository this script lives in)
# 1. system libraries MuJoCo renders with: libosmesa6 (CPU nodes, MUJOCO_GL=osmesa, and the
#    fallback where EGL fails) and GLVND's EGL/GL/GLES loaders (GPU nodes, MUJOCO_GL=egl; the NVIDIA
#    EGL vendor library itself comes from the driver, mounted by the NVIDIA container runtime when
#    NVIDIA_DRIVER_CAPABILITIES includes `graphics`); all everywhere, they are small;
# 2. torch, pinned: RAYLAM_TORCH (default torch==2.13.0, the version the tests run) from the CUDA
#    12.8 index where an NVIDIA GPU is visible (needs an R570+ driver on the host; PyPI's default
#    build is CUDA 13 and needs R580+), the CPU index elsewhere (a CPU collection node has no use
#    for ~3 GB of CUDA libraries); RAYLAM_DEVICE=gpu|cpu forces the choice (image builds see no
#    GPU), RAYLAM_TORCH_INDEX picks another index (e.g. .../whl/cu126 for an older driver);
# 3. raylam, editable, with its dependencies (ray itself is already in the image);
# 4. on a node with a visible GPU: torch must see CUDA, or the setup fails here, loudly (a Ray
#    worker holding a GPU would otherwise fail later, or compute on the CPU).
set -euo pipefail
RAYLAM_DIR="${1:-$(cd "$(dirname "$0")/.." && pwd)}"

SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
missing=()
# the whole listing is read once: `ldconfig -p | grep -q` under pipefail fails at random when grep
# exits at its first match and ldconfig dies of SIGPIPE, and a library present would be "missing"
libraries="$(ldconfig -p 2>/dev/null || true)"
has() { grep -q "$1" <<<"$libraries"; }
has libOSMesa || missing+=(libosmesa6)
has 'libEGL\.so\.1' || missing+=(libegl1)
has 'libGL\.so\.1' || missing+=(libgl1)
has 'libGLESv2\.so\.2' || missing+=(libgles2)
has 'libOpenGL\.so\.0' || missing+=(libopengl0)
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

TORCH="${RAYLAM_TORCH:-torch==2.13.0}"
device="${RAYLAM_DEVICE:-auto}"
visible_gpu=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then visible_gpu=1; fi
if [ "$device" = auto ]; then
  device=cpu; [ "$visible_gpu" = 1 ] && device=gpu
fi
if [ "$device" = gpu ]; then
  index="${RAYLAM_TORCH_INDEX:-https://download.pytorch.org/whl/cu128}"
else
  index="${RAYLAM_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
fi
if ! python -c "import torch" 2>/dev/null; then
  pip install -q "$TORCH" --index-url "$index"
fi

pip install -q -e "$RAYLAM_DIR"
python -c "import raylam, ray, torch; print('raylam', raylam.__version__, 'ray', ray.__version__, \
'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
if [ "$visible_gpu" = 1 ] && ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  driver="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1)"
  echo "setup_node.sh: this node has a GPU (driver $driver) but torch" \
    "$(python -c 'import torch; print(torch.__version__, "built for CUDA", torch.version.cuda)') sees no CUDA;" \
    "install a torch built for this driver (RAYLAM_TORCH, RAYLAM_TORCH_INDEX) or use a host image with a newer" \
    "driver (CUDA 12.8 needs R570+)" >&2
  exit 1
fi
