#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Usage: bash launch/local.sh [--dry-run] [--workdir=DIR] [EXPERIMENT] [ARGS...]
#
# Runs experiments/EXPERIMENT.py (default: spiral) on this machine:
#   ardiff run experiments/EXPERIMENT.py --workdir=runs/EXPERIMENT ARGS...
# after sourcing launch/env.sh (creates/updates .venv). ARGS go to `ardiff run` unchanged
# (`ardiff config experiments/EXPERIMENT.py` lists every key), e.g.
#   bash launch/local.sh spiral --config.train.steps=2000
#   bash launch/local.sh --config.train.steps=2000   (the first flag starts ARGS: spiral)
#   bash launch/local.sh digits_ar --config=smoke   (seconds: the whole pipeline, tiny)
# Options (before EXPERIMENT; --dry-run anywhere):
#   --dry-run        print the commands instead of running them (creates and installs nothing)
#   --workdir=DIR    where the run writes (default runs/EXPERIMENT, relative to the repo root)
# An unknown EXPERIMENT stops with one line and exit status 2, as `ardiff` does on bad input.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_run_args "$@"
set -- ${RUN_ARGS[@]+"${RUN_ARGS[@]}"}  # the ARGS (this spelling: bash 3.2 under set -u)

use_env
last_step ardiff run "experiments/$EXP.py" "--workdir=${WORKDIR:-runs/$EXP}" "$@"
