#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Usage: bash launch/test.sh [--dry-run] [PYTEST_ARGS...]
#
# Runs the whole test suite from the repo root, after sourcing launch/env.sh:
#   python -m pytest -q -n auto --maxprocesses=4 --dist loadgroup PYTEST_ARGS...
# and exits with pytest's status. Examples:
#   bash launch/test.sh                       (everything; what .ci/run calls)
#   bash launch/test.sh -m 'not slow' tests/test_launch.py
# Options (first):
#   --dry-run        print the commands instead of running them (creates and installs nothing)
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

case ${1:-} in
  --dry-run) DRY_RUN=1; shift ;;
  -h|--help) usage; exit 0 ;;
esac

use_env
# Tests run in parallel (pytest-xdist): tests/conftest.py groups each file's tests on one
# worker (module fixtures built once) and spreads the experiment smoke runs; on 2 cores the
# suite takes about half the time of a serial run.
last_step python -m pytest -q -n auto --maxprocesses=4 --dist loadgroup "$@"
