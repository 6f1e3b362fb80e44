#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Usage: bash launch/local.sh [--dry-run] [--workdir=DIR] [EXPERIMENT] [ARGS...]
#
# Runs experiments/EXPERIMENT.py (default: spiral) on this machine:
#   ardiff run experiments/EXPERIMENT.py --workdir=runs/EXPERIMENT ARGS...
# after sourcing launch/env.sh (creates/updates .venv). ARGS go to `ardiff run` unchanged, e.g.
#   bash launch/local.sh spiral --config.num_steps=200
#   bash launch/local.sh --config.num_steps=200      (the first flag starts ARGS: spiral)
# Options (before EXPERIMENT):
#   --dry-run        print the commands instead of running them (creates and installs nothing)
#   --workdir=DIR    where the run writes (default runs/EXPERIMENT, relative to the repo root)
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_run_args "$@"
shift "$NARGS"

use_env
last_step ardiff run "experiments/$EXP.py" "--workdir=${WORKDIR:-runs/$EXP}" "$@"
