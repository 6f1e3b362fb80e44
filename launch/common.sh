# shellcheck shell=bash source-path=SCRIPTDIR
# Helpers shared by the launch scripts; sourced by them, not meant to be run or sourced by hand.
# Kept to bash 3.2 (macOS) features.

ARDIFF_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY_RUN=0

# die MESSAGE: one line on stderr, exit status 2: bad usage or input, as `ardiff` itself exits.
die() {
  printf '%s: error: %s\n' "${0##*/}" "$*" >&2
  exit 2
}

# usage: prints the calling script's header comment (from line 2 up to `set -euo pipefail`).
usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;/^# shellcheck/d;s/^# \{0,1\}//;p;}' "$0"
}

# quote_cmd ARGS...: prints ARGS as one command line that bash reads back as the same words.
quote_cmd() {
  local out="" arg q="'\\''"
  for arg in "$@"; do
    if [[ $arg =~ ^[A-Za-z0-9_./:=,@+%-]+$ ]]; then
      out+="$arg "
    else
      out+="'${arg//\'/$q}' "
    fi
  done
  printf '%s\n' "${out% }"
}

# step CMD...: runs CMD in this shell, or with --dry-run prints it instead.
step() {
  if (( DRY_RUN )); then quote_cmd "$@"; else "$@"; fi
}

# last_step CMD...: like step, but the script ends here with CMD's exit status.
last_step() {
  if (( DRY_RUN )); then quote_cmd "$@"; exit 0; fi
  exec "$@"
}

# use_env: goes to the repo root and sources launch/env.sh (creates/updates/activates .venv).
use_env() {
  step cd "$ARDIFF_ROOT"
  if (( DRY_RUN )); then
    quote_cmd source launch/env.sh
  else
    # shellcheck source=env.sh
    source "$ARDIFF_ROOT/launch/env.sh" || exit 1
  fi
}

# opt_value "$@": the value of a leading `--opt=VALUE` or `--opt VALUE`; sets VAL and NSHIFT.
# shellcheck disable=SC2034  # VAL and NSHIFT are read by the calling script
opt_value() {
  case $1 in
    *=*) VAL=${1#*=}; NSHIFT=1 ;;
    *) (( $# >= 2 )) || die "option $1 needs a value"; VAL=$2; NSHIFT=2 ;;
  esac
}

# extra_option "$@": a script's own leading options; it handles "$1" (setting NSHIFT through
# opt_value when it takes a value) or returns 1. Scripts with options of their own redefine it.
extra_option() { return 1; }

# parse_run_args "$@": the leading options (--dry-run, --workdir=DIR, -h, and the script's
# extra_option ones), then [EXPERIMENT] unless the next word is a flag (default spiral), then
# the ARGS for `ardiff run`, where --dry-run is taken too (it is no `ardiff run` flag: a
# `local.sh spiral --dry-run` must not install and run).
# Sets DRY_RUN, WORKDIR, EXP, and RUN_ARGS: the ARGS (callers: set -- "${RUN_ARGS[@]}").
# shellcheck disable=SC2034  # WORKDIR and RUN_ARGS are read by the calling script
parse_run_args() {
  WORKDIR=""
  RUN_ARGS=()
  while (( $# )); do
    NSHIFT=1
    case $1 in
      --dry-run) DRY_RUN=1 ;;
      --workdir|--workdir=*) opt_value "$@"; WORKDIR=$VAL ;;
      -h|--help) usage; exit 0 ;;
      *) extra_option "$@" || break ;;
    esac
    shift "$NSHIFT"
  done
  local exp=spiral arg
  if (( $# )) && [[ $1 != -* ]]; then exp=$1; shift; fi
  for arg in "$@"; do
    if [[ $arg == --dry-run ]]; then DRY_RUN=1; else RUN_ARGS+=("$arg"); fi
  done
  experiment_name "$exp"  # after every --dry-run is seen: an unknown name fails either way
}

# experiment_name NAME: checks NAME (also accepts experiments/NAME.py) and sets EXP.
experiment_name() {
  EXP=${1#experiments/}
  EXP=${EXP%.py}
  [[ $EXP =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]*$ ]] || die "bad experiment name '$1'"
  [[ -f $ARDIFF_ROOT/experiments/$EXP.py ]] && return 0
  local known="" f
  for f in "$ARDIFF_ROOT"/experiments/*.py; do
    if [[ -f $f ]]; then f=${f##*/}; known+="${known:+ }${f%.py}"; fi
  done
  die "no experiment experiments/$EXP.py (known: ${known:-none})"
}
