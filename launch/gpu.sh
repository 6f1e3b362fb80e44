#!/usr/bin/env bash
# Usage: bash launch/gpu.sh [--dry-run] [--cuda 12|13] [--no-install] [--workdir=DIR] [EXPERIMENT] [ARGS...]
#
# Runs experiments/EXPERIMENT.py (default: spiral) on an NVIDIA GPU machine:
#   source launch/env.sh                       (creates/updates .venv)
#   python -m pip install -U "jax[cudaN]"      (JAX's CUDA wheels; CUDA itself comes from pip)
#   export JAX_PLATFORMS=cuda                  (only if JAX_PLATFORMS is not already set)
#   python -c "import jax; ..."                (prints the devices; fails if no GPU is usable)
#   ardiff run experiments/EXPERIMENT.py --workdir=runs/EXPERIMENT ARGS...
# Options (before EXPERIMENT):
#   --cuda 12|13     CUDA major version of the JAX wheels (default 12). CUDA 13 wheels need an
#                    NVIDIA driver >= 580; CUDA 12 wheels need >= 525 (see nvidia-smi).
#   --no-install     skip the pip step (the CUDA wheels are already in .venv)
#   --workdir=DIR    where the run writes (default runs/EXPERIMENT, relative to the repo root)
#   --dry-run        print the commands instead of running them (creates and installs nothing)
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

CUDA=12
INSTALL=1
extra_option() {
  case $1 in
    --cuda|--cuda=*) opt_value "$@"; CUDA=$VAL ;;
    --no-install) INSTALL=0 ;;
    *) return 1 ;;
  esac
}
parse_run_args "$@"
set -- ${RUN_ARGS[@]+"${RUN_ARGS[@]}"}  # the ARGS (this spelling: bash 3.2 under set -u)
[[ $CUDA == 12 || $CUDA == 13 ]] || die "--cuda must be 12 or 13, got '$CUDA'"

use_env
if (( INSTALL )); then
  step python -m pip install --disable-pip-version-check -q -U "jax[cuda$CUDA]"
fi
if [[ -z ${JAX_PLATFORMS+set} ]]; then
  step export JAX_PLATFORMS=cuda
fi
step python -c 'import jax; print("JAX", jax.__version__, "devices:", jax.devices())'
last_step ardiff run "experiments/$EXP.py" "--workdir=${WORKDIR:-runs/$EXP}" "$@"
