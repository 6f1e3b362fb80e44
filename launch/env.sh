# shellcheck shell=bash
# Usage: source launch/env.sh        (from bash, in any folder)
#
# Makes the repo's .venv ready and activates it:
#   - creates .venv with the first of python3.13, python3.12, python3.11, python3 that is >= 3.11;
#   - runs `pip install -e '.[test,peers]'` when pyproject.toml changed since the last install
#     (peers: diffusers and a CPU build of torch, which tests/peers cross-check the solvers against,
#     and transformers, the peer column of `ardiff bench ar`)
#     (pyproject.toml's sha256 is kept in .venv/.ardiff-pyproject.sha256, pip's log beside it);
#   - activates .venv. JAX_PLATFORMS is left as it is.
# Silent on success (one line on a terminal while it installs). On failure it says why on stderr
# and returns 1, or 2 when no Python >= 3.11 was found.

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  echo "launch/env.sh: source this file (source launch/env.sh), do not run it" >&2
  exit 1
fi

_ardiff_env() {
  local root venv py cand out want have stamp log
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)" || return 1
  venv="$root/.venv"

  if [[ ! -e $venv ]]; then
    py=""
    for cand in python3.13 python3.12 python3.11 python3; do
      if command -v "$cand" >/dev/null 2>&1 &&
        "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
        py=$cand
        break
      fi
    done
    if [[ -z $py ]]; then
      echo "launch/env.sh: no Python >= 3.11 found (tried python3.13, python3.12, python3.11," \
        "python3); install one, e.g. 'sudo apt-get install python3.11 python3.11-venv'" >&2
      return 2
    fi
    if ! out=$("$py" -m venv "$venv" 2>&1); then
      rm -rf "$venv"
      echo "launch/env.sh: '$py -m venv $venv' failed:" >&2
      echo "$out" >&2
      echo "launch/env.sh: on Debian/Ubuntu install the venv module: sudo apt-get install" \
        "python3.X-venv (X = the minor version of $py)" >&2
      return 1
    fi
  fi
  if ! "$venv/bin/python" -c '' >/dev/null 2>&1; then
    echo "launch/env.sh: $venv exists but $venv/bin/python does not run; remove it" \
      "(rm -rf '$venv') and source launch/env.sh again" >&2
    return 1
  fi

  want=$("$venv/bin/python" -c 'import hashlib, sys
print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$root/pyproject.toml") || {
    echo "launch/env.sh: cannot read $root/pyproject.toml" >&2
    return 1
  }
  stamp="$venv/.ardiff-pyproject.sha256"
  have=$(cat "$stamp" 2>/dev/null) || have=""
  if [[ $want != "$have" ]]; then
    log="$venv/.ardiff-install.log"
    [[ -t 2 ]] && echo "launch/env.sh: installing the project into $venv (log: $log)" >&2
    if ! "$venv/bin/python" -m pip install --disable-pip-version-check -q -e "${root}[test,peers]" \
      >"$log" 2>&1; then
      echo "launch/env.sh: 'pip install -e .[test,peers]' into $venv failed; the end of $log:" >&2
      tail -n 25 "$log" >&2
      return 1
    fi
    printf '%s\n' "$want" >"$stamp"
  fi

  # shellcheck source=/dev/null
  source "$venv/bin/activate" || {
    echo "launch/env.sh: could not activate $venv" >&2
    return 1
  }
}

if _ardiff_env; then
  unset -f _ardiff_env
else
  _ardiff_status=$?
  unset -f _ardiff_env
  # shellcheck disable=SC2317  # reached when sourced
  return "$_ardiff_status"
fi
