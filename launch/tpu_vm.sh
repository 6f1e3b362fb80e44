#!/usr/bin/env bash
# Usage: bash launch/tpu_vm.sh [--dry-run] [OPTIONS] create|setup|data|run|copy|delete [ARGS...]
#
# A Cloud TPU VM, single host or multi-host pod slice, driven by `gcloud compute tpus tpu-vm`:
#   create [GCLOUD_FLAGS...]     create it (extra flags go to gcloud, e.g. --spot)
#   setup                        copy this working tree (the files git tracks, and untracked ones it
#                                does not ignore) to every worker (--worker=all), then on each:
#                                apt-get python3.11 if no Python >= 3.11 is there, source
#                                launch/env.sh (project into .venv) and pip install -U "jax[tpu]"
#   data DATASET                 on every worker: prepare a tfds dataset (mnist, cifar10) in the
#                                ArrayRecord format under the data dir (TensorFlow is installed
#                                into .venv for this build only; training reads without it)
#   run [EXPERIMENT] [ARGS...]   on every worker at once (--worker=all):
#                                ardiff run experiments/EXPERIMENT.py --workdir=runs/EXPERIMENT ARGS
#                                (default spiral) with JAX_PLATFORMS=tpu unless set there and
#                                TFDS_DATA_DIR set to the data dir. Each
#                                worker is one JAX process; the code calls
#                                jax.distributed.initialize() itself.
#                                It runs over ssh in the foreground: a dropped connection stops it.
#   copy [EXPERIMENT]            copy the workdir from worker 0 to runs/tpu/NAME/ here
#   delete [GCLOUD_FLAGS...]     delete it
# Options (before the subcommand; defaults from the environment variables named):
#   --name NAME                  TPU name ($TPU_NAME, default ardiff-tpu)
#   --zone ZONE                  zone ($TPU_ZONE, default gcloud's compute/zone)
#   --accelerator-type TYPE      for create ($TPU_ACCELERATOR_TYPE, default v5p-8)
#   --version VERSION            TPU software version for create ($TPU_RUNTIME_VERSION, default
#                                v2-alpha-tpuv5; v6e: v2-alpha-tpuv6e, v5e: v2-alpha-tpuv5-lite)
#   --project PROJECT            Google Cloud project ($TPU_PROJECT, default gcloud's core/project)
#   --remote-dir DIR             the checkout on each worker, under its home (default ardiff)
#   --workdir DIR                for run and copy (default runs/EXPERIMENT inside the checkout);
#                                multi-host checkpoints may need a folder all workers share
#   --data-dir DIR               tfds data folder on the workers, for data and run
#                                ($TFDS_DATA_DIR, default tensorflow_datasets in the checkout)
#   --dry-run                    print the commands instead of running them
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

NAME=${TPU_NAME:-ardiff-tpu}
ZONE=${TPU_ZONE:-}
ACCELERATOR_TYPE=${TPU_ACCELERATOR_TYPE:-v5p-8}
RUNTIME_VERSION=${TPU_RUNTIME_VERSION:-v2-alpha-tpuv5}
PROJECT=${TPU_PROJECT:-}
REMOTE_DIR=ardiff
WORKDIR=""
DATA_DIR=${TFDS_DATA_DIR:-tensorflow_datasets}
while (( $# )); do
  NSHIFT=1
  case $1 in
    --dry-run) DRY_RUN=1 ;;
    --name|--name=*) opt_value "$@"; NAME=$VAL ;;
    --zone|--zone=*) opt_value "$@"; ZONE=$VAL ;;
    --accelerator-type|--accelerator-type=*) opt_value "$@"; ACCELERATOR_TYPE=$VAL ;;
    --version|--version=*) opt_value "$@"; RUNTIME_VERSION=$VAL ;;
    --project|--project=*) opt_value "$@"; PROJECT=$VAL ;;
    --remote-dir|--remote-dir=*) opt_value "$@"; REMOTE_DIR=$VAL ;;
    --workdir|--workdir=*) opt_value "$@"; WORKDIR=$VAL ;;
    --data-dir|--data-dir=*) opt_value "$@"; DATA_DIR=$VAL ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown option $1 (options go before the subcommand; see --help)" ;;
    *) break ;;
  esac
  shift "$NSHIFT"
done
(( $# )) || die "missing subcommand: create, setup, data, run, copy or delete (see --help)"
CMD=$1
shift
[[ $NAME =~ ^[a-z][-a-z0-9]*$ ]] || die "bad TPU name '$NAME' (lowercase letters, digits, -)"

# tpu_vm SUBCOMMAND ARGS...: gcloud compute tpus tpu-vm SUBCOMMAND ARGS, plus --zone/--project.
tpu_vm() {
  step gcloud compute tpus tpu-vm "$@" ${ZONE:+"--zone=$ZONE"} ${PROJECT:+"--project=$PROJECT"}
}

# on_all_workers COMMAND: runs the shell command line COMMAND on every worker.
on_all_workers() {
  tpu_vm ssh "$NAME" --worker=all "--command=$1"
}

# experiment_args [EXPERIMENT] [ARGS...]: sets EXP and REMOTE_WORKDIR (relative to the home dir).
experiment_args() {
  if (( $# )) && [[ $1 != -* ]]; then experiment_name "$1"; else experiment_name spiral; fi
  local workdir=${WORKDIR:-runs/$EXP}
  case $workdir in
    /*|gs://*) REMOTE_WORKDIR=$workdir ;;
    *) REMOTE_WORKDIR=$REMOTE_DIR/$workdir ;;
  esac
}

case $CMD in
  create)
    tpu_vm create "$NAME" "--accelerator-type=$ACCELERATOR_TYPE" "--version=$RUNTIME_VERSION" "$@"
    ;;
  setup)
    (( $# == 0 )) || die "setup takes no arguments, got: $*"
    tarball="${TMPDIR:-/tmp}/ardiff-src-$NAME.tgz"
    if (( ! DRY_RUN )); then trap 'rm -f "$tarball"' EXIT; fi
    step cd "$ARDIFF_ROOT"
    step bash -o pipefail -c \
      "git ls-files -z -co --exclude-standard | tar --null -T - -czf $(quote_cmd "$tarball")"
    tpu_vm scp "$tarball" "$NAME:ardiff-src.tgz" --worker=all
    step rm -f "$tarball"
    dir=$(quote_cmd "$REMOTE_DIR")
    on_all_workers "mkdir -p $dir && tar -xzf ardiff-src.tgz -C $dir && rm -f ardiff-src.tgz \
&& cd $dir && { source launch/env.sh || { [ \$? = 2 ] && sudo apt-get update -qq \
&& sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.11 python3.11-venv \
&& source launch/env.sh; }; } \
&& python -m pip install --disable-pip-version-check -q -U 'jax[tpu]' \
&& python -c 'import jax; print(\"worker\", jax.process_index(), \"devices\", jax.device_count())'"
    ;;
  data)
    (( $# == 1 )) || die "data takes one dataset name (mnist or cifar10), got: ${*:-nothing}"
    [[ $1 == mnist || $1 == cifar10 ]] || die "data: unknown dataset '$1' (mnist or cifar10)"
    on_all_workers "cd $(quote_cmd "$REMOTE_DIR") && source launch/env.sh \
&& python -m pip install --disable-pip-version-check -q tensorflow-cpu \
&& $(quote_cmd tfds build "$1" --file_format=array_record "--data_dir=$DATA_DIR")"
    ;;
  run)
    experiment_args "$@"
    if (( $# )) && [[ $1 != -* ]]; then shift; fi
    on_all_workers "cd $(quote_cmd "$REMOTE_DIR") && source launch/env.sh \
&& export JAX_PLATFORMS=\"\${JAX_PLATFORMS:-tpu}\" \
&& export $(quote_cmd "TFDS_DATA_DIR=$DATA_DIR") \
&& $(quote_cmd ardiff run "experiments/$EXP.py" "--workdir=${WORKDIR:-runs/$EXP}" "$@")"
    ;;
  copy)
    experiment_args "$@"
    (( $# <= 1 )) || die "copy takes at most an EXPERIMENT, got: $*"
    [[ $REMOTE_WORKDIR != gs://* ]] \
      || die "workdir $REMOTE_WORKDIR is in Cloud Storage: gcloud storage cp -r $REMOTE_WORKDIR ."
    step cd "$ARDIFF_ROOT"
    step mkdir -p "runs/tpu/$NAME"
    tpu_vm scp --recurse "$NAME:$REMOTE_WORKDIR" "runs/tpu/$NAME/" --worker=0
    ;;
  delete)
    tpu_vm delete "$NAME" "$@"
    ;;
  *)
    die "unknown subcommand '$CMD': use create, setup, data, run, copy or delete (see --help)"
    ;;
esac
