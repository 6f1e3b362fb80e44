#!/usr/bin/env bash
# Usage: bash launch/tpu_vm.sh [--dry-run] [OPTIONS] SUBCOMMAND [ARGS...]
#
# A Cloud TPU VM, single host or multi-host pod slice, driven by `gcloud compute tpus tpu-vm`:
#   create [GCLOUD_FLAGS...]     create it (extra flags go to gcloud); with --spot a spot VM
#                                (cheap, preemptible), with --queued through a queued resource
#                                (waits for capacity instead of failing)
#   setup                        copy this working tree (the files git tracks, and untracked ones it
#                                does not ignore) to every worker (--worker=all), then on each:
#                                apt-get python3.11 if no Python >= 3.11 is there, source
#                                launch/env.sh (project into .venv) and pip install -U "jax[tpu]"
#   data DATASET                 prepare a tfds dataset (mnist, cifar10) in the ArrayRecord format
#                                under the data dir: on worker 0 when it is a bucket (gs://, read
#                                by every worker), else on every worker's own disk (TensorFlow is
#                                installed into .venv for this build only; training reads
#                                without it)
#   run [EXPERIMENT] [ARGS...]   on every worker at once (--worker=all):
#                                ardiff run experiments/EXPERIMENT.py --workdir=runs/EXPERIMENT ARGS
#                                (default spiral) with JAX_PLATFORMS=tpu unless set there and
#                                TFDS_DATA_DIR set to the data dir. Each
#                                worker is one JAX process; the code calls
#                                jax.distributed.initialize() itself.
#                                Detached (nohup, own session): it survives the ssh connection;
#                                each worker logs to ~/REMOTE_DIR/logs/EXPERIMENT.log and keeps
#                                the pid (.pid) and, once it ends, the exit status (.rc) beside it.
#                                --foreground keeps it attached to this terminal instead.
#   status [EXPERIMENT]          the VM's state, and on every worker: running, or exited with
#                                which status (0 done, 143 stopped or preempted after saving)
#   logs [EXPERIMENT] [-f]       the end of worker 0's log (process 0 is the one that prints);
#                                -f follows it
#   stop [EXPERIMENT]            SIGTERM on every worker: the hosts agree on a step, save it
#                                together and exit 143; `run` again resumes there
#   watch [EXPERIMENT] [ARGS...] keep a spot/queued run going: every $TPU_WATCH_SECONDS (300) look
#                                at the VM; preempted or gone: delete, create, setup, run again
#                                (resumes from the last checkpoint: use a gs:// --workdir, a spot
#                                VM's disks are lost); stops when the run exits 0. --dry-run
#                                prints one recovery round
#   copy [EXPERIMENT]            copy the workdir from worker 0 to runs/tpu/NAME/ here
#   delete [GCLOUD_FLAGS...]     delete it (and its queued resource, with --queued)
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
#   --spot                       create a spot VM (create, watch)
#   --queued                     create and delete through a queued resource (create, delete,
#                                watch)
#   --foreground                 run attached over ssh (a dropped connection stops the job)
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
SPOT=0
QUEUED=0
FOREGROUND=0
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
    --spot) SPOT=1 ;;
    --queued) QUEUED=1 ;;
    --foreground) FOREGROUND=1 ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown option $1 (options go before the subcommand; see --help)" ;;
    *) break ;;
  esac
  shift "$NSHIFT"
done
SUBCOMMANDS="create, setup, data, run, status, logs, stop, watch, copy or delete"
(( $# )) || die "missing subcommand: $SUBCOMMANDS (see --help)"
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

# create_vm [GCLOUD_FLAGS...]: a TPU VM, or with --queued a queued resource that makes one.
create_vm() {
  local spot=()
  if (( SPOT )); then spot=(--spot); fi
  if (( QUEUED )); then
    step gcloud compute tpus queued-resources create "$NAME" "--node-id=$NAME" \
      "--accelerator-type=$ACCELERATOR_TYPE" "--runtime-version=$RUNTIME_VERSION" \
      "${spot[@]}" "$@" ${ZONE:+"--zone=$ZONE"} ${PROJECT:+"--project=$PROJECT"}
  else
    tpu_vm create "$NAME" "--accelerator-type=$ACCELERATOR_TYPE" "--version=$RUNTIME_VERSION" \
      "${spot[@]}" "$@"
  fi
}

# delete_vm [GCLOUD_FLAGS...]: the VM, or with --queued its queued resource (--force: and the VM).
delete_vm() {
  if (( QUEUED )); then
    step gcloud compute tpus queued-resources delete "$NAME" --force "$@" \
      ${ZONE:+"--zone=$ZONE"} ${PROJECT:+"--project=$PROJECT"}
  else
    tpu_vm delete "$NAME" "$@"
  fi
}

# run_command EXPERIMENT_ARGS...: the shell line each worker runs for `run` (EXP set).
run_command() {
  local prepare run log="logs/$EXP"
  prepare="source launch/env.sh && export JAX_PLATFORMS=\"\${JAX_PLATFORMS:-tpu}\" \
&& export $(quote_cmd "TFDS_DATA_DIR=$DATA_DIR")"
  run=$(quote_cmd ardiff run "experiments/$EXP.py" "--workdir=${WORKDIR:-runs/$EXP}" "$@")
  if (( FOREGROUND )); then
    printf '%s' "cd $(quote_cmd "$REMOTE_DIR") && $prepare && $run"
    return
  fi
  # The wrapper keeps the job's pid (for status and stop: SIGTERM goes to ardiff itself, which
  # saves and exits 143) and its exit status. nohup + setsid: neither a closed ssh session nor
  # its SIGHUP reaches the job.
  local wrapper="$prepare || { echo \$? > $log.rc; exit 1; }; $run & echo \$! > $log.pid; \
wait \$!; echo \$? > $log.rc"
  printf '%s' "cd $(quote_cmd "$REMOTE_DIR") && mkdir -p logs && rm -f $log.rc $log.pid \
&& { nohup setsid bash -c $(quote_cmd "$wrapper") > $log.log 2>&1 < /dev/null & } \
&& echo \"\$(hostname): started; log ~/$REMOTE_DIR/$log.log\""
}

# status_command: prints each worker's state of the run (EXP set).
status_command() {
  local log="logs/$EXP"
  printf '%s' "cd $(quote_cmd "$REMOTE_DIR") && if [ -f $log.pid ] && kill -0 \$(cat $log.pid) \
2>/dev/null; then echo \"\$(hostname): running (pid \$(cat $log.pid))\"; elif [ -f $log.rc ]; \
then echo \"\$(hostname): exited \$(cat $log.rc)\"; else echo \"\$(hostname): not running\"; fi"
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
    create_vm "$@"
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
    build="cd $(quote_cmd "$REMOTE_DIR") && source launch/env.sh \
&& python -m pip install --disable-pip-version-check -q tensorflow-cpu \
&& $(quote_cmd tfds build "$1" --file_format=array_record "--data_dir=$DATA_DIR")"
    if [[ $DATA_DIR == gs://* ]]; then
      tpu_vm ssh "$NAME" --worker=0 "--command=$build"  # one copy in the bucket, for all
    else
      on_all_workers "$build"  # each worker's own disk
    fi
    ;;
  run)
    experiment_args "$@"
    if (( $# )) && [[ $1 != -* ]]; then shift; fi
    on_all_workers "$(run_command "$@")"
    ;;
  status)
    experiment_args "$@"
    (( $# <= 1 )) || die "status takes at most an EXPERIMENT, got: $*"
    tpu_vm describe "$NAME" "--format=value(state)"
    on_all_workers "$(status_command)"
    ;;
  logs)
    tail_opts=(-n 100)
    words=()
    for arg in "$@"; do
      if [[ $arg == -f ]]; then tail_opts+=(-f); else words+=("$arg"); fi
    done
    (( ${#words[@]} <= 1 )) || die "logs takes at most an EXPERIMENT and -f, got: $*"
    experiment_args "${words[@]}"
    tpu_vm ssh "$NAME" --worker=0 \
      "--command=$(quote_cmd tail "${tail_opts[@]}" "$REMOTE_DIR/logs/$EXP.log")"
    ;;
  stop)
    experiment_args "$@"
    (( $# <= 1 )) || die "stop takes at most an EXPERIMENT, got: $*"
    on_all_workers "cd $(quote_cmd "$REMOTE_DIR") && if [ -f logs/$EXP.pid ]; then \
kill -TERM \$(cat logs/$EXP.pid) 2>/dev/null || true; fi"
    ;;
  watch)
    experiment_args "$@"
    if (( $# )) && [[ $1 != -* ]]; then shift; fi
    (( ! FOREGROUND )) || die "watch runs detached jobs; drop --foreground"
    interval=${TPU_WATCH_SECONDS:-300}
    [[ $interval =~ ^[1-9][0-9]*$ ]] || die "TPU_WATCH_SECONDS must be a positive integer"
    recover() {
      delete_vm --quiet || true
      create_vm
      bash "$0" "${PASS_OPTS[@]}" setup
      on_all_workers "$(run_command "$@")"
    }
    PASS_OPTS=("--name=$NAME" "--accelerator-type=$ACCELERATOR_TYPE" "--version=$RUNTIME_VERSION"
               "--remote-dir=$REMOTE_DIR" ${ZONE:+"--zone=$ZONE"} ${PROJECT:+"--project=$PROJECT"})
    (( ! DRY_RUN )) || PASS_OPTS=(--dry-run "${PASS_OPTS[@]}")
    if (( DRY_RUN )); then recover "$@"; exit 0; fi
    while true; do
      state=$(gcloud compute tpus tpu-vm describe "$NAME" "--format=value(state)" \
              ${ZONE:+"--zone=$ZONE"} ${PROJECT:+"--project=$PROJECT"} 2>/dev/null || echo GONE)
      case $state in
        READY)
          done_rc=$(gcloud compute tpus tpu-vm ssh "$NAME" --worker=0 \
            "--command=cat $(quote_cmd "$REMOTE_DIR/logs/$EXP.rc") 2>/dev/null || true" \
            ${ZONE:+"--zone=$ZONE"} ${PROJECT:+"--project=$PROJECT"} 2>/dev/null || true)
          if [[ $done_rc == 0 ]]; then echo "watch: $EXP finished"; exit 0; fi
          echo "watch: $(date -u +%H:%M:%S) $NAME READY, $EXP ${done_rc:+exited $done_rc}${done_rc:-running}" ;;
        PREEMPTED|TERMINATED|GONE|FAILED|SUSPENDED)
          echo "watch: $(date -u +%H:%M:%S) $NAME is $state: recreating and resuming"
          recover "$@" ;;
        *) echo "watch: $(date -u +%H:%M:%S) $NAME is $state" ;;
      esac
      sleep "$interval"
    done
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
    delete_vm "$@"
    ;;
  *)
    die "unknown subcommand '$CMD': use $SUBCOMMANDS (see --help)"
    ;;
esac
