#!/usr/bin/env bash
# Node setup for the Ray cluster launcher (cluster/aws.yaml, cluster/gcp.yaml): runs inside the
# rayproject/ray container of every node, as its `setup_commands`. Safe to run again.
#   bash setup_node.sh [RAYLAM_DIR]      (default: the repository this script lives in)
# 1. system libraries MuJoCo renders with: libosmesa6 (CPU nodes, MUJOCO_GL=osmesa) and
#    libegl1 (GPU nodes, MUJOCO_GL=egl); both everywhere, they are small;
# 2. torch: the default PyPI build (CUDA) where an NVIDIA GPU is visible, the CPU wheel elsewhere
#    (a CPU collection node has no use for ~3 GB of CUDA libraries); RAYLAM_DEVICE=gpu|cpu forces
#    the choice (image builds see no GPU), RAYLAM_TORCH picks the requirement (default: torch);
# 3. raylam, editable, with its dependencies (ray itself is already in the image).
set -euo pipefail
RAYLAM_DIR="${1:-$(cd "$(dirname "$0")/.." && pwd)}"

SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
missing=()
ldconfig -p | grep -q libOSMesa || missing+=(libosmesa6)
ldconfig -p | grep -q 'libEGL\.so\.1' || missing+=(libegl1)
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! python -c "import torch" 2>/dev/null; then
  device="${RAYLAM_DEVICE:-auto}"
  if [ "$device" = auto ]; then
    device=cpu
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then device=gpu; fi
  fi
  if [ "$device" = gpu ]; then
    pip install -q "${RAYLAM_TORCH:-torch}"
  else
    pip install -q "${RAYLAM_TORCH:-torch}" --index-url https://download.pytorch.org/whl/cpu
  fi
fi

pip install -q -e "$RAYLAM_DIR"
python -c "import raylam, ray, torch; print('raylam', raylam.__version__, 'ray', ray.__version__, \
'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
