# Shared by the reproduction scripts (sourced, not run): start, resume or skip one training,
# a few at a time, and record the finished runs in docs/results/.
#
#   source "$here/runs.sh" [seed ...]
# sets seeds (default 0 1 2), jobs_max (JOBS, default 1; above 1, one thread per training),
# out (OUT, default outputs) and EXTRA (appended to fresh trainings). The sourcing script
# sets here (this folder) and data_args (the data arguments every training gets).
# A run whose folder holds summary.json is finished and skipped; a folder without it is a
# stopped run and is resumed from its newest checkpoint (`distill <role> --resume`), so a
# reproduction interrupted by a kill, a reboot or the end of a session picks up where it was
# (one stopped before its first checkpoint is moved aside and started again). A run that a
# live process trains in (another call of the script, say) is left to it and reported as not
# finished. Each training writes its per-epoch lines to <output folder>/<run name>.log.

seeds=("${@:-0 1 2}")
read -r -a seeds <<< "${seeds[*]}"
jobs_max="${JOBS:-1}"
out="${OUT:-outputs}"
EXTRA="${EXTRA:-}"
if [ "$jobs_max" -gt 1 ]; then export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1; fi

declare -A commands  # run name -> the command line recorded in docs/results
declare -A folders   # run name -> its run folder
declare -A elsewhere # run name -> 1 when another process was training it

folder_state() {  # folder_state <run folder>: busy (a live process holds distill's lock
    # on it), resumable (a checkpoint to continue from) or unstarted (stopped before one)
    local status=0
    python - "$1" <<'PY' || status=$?
import sys
from pathlib import Path
from distill.checkpoint import LAST, LOCK, take_lock
run = Path(sys.argv[1])
sys.exit(3 if take_lock(run / LOCK) is None else 4 if (run / LAST).is_file() else 5)
PY
    case "$status" in
        3) echo busy ;;
        4) echo resumable ;;
        5) echo unstarted ;;
        *) echo "$1: cannot tell whether a process trains in it (python exited $status; is" \
                "distill installed for this python?)" >&2; return 2 ;;
    esac
}

train() {  # train <output folder> <run name> <teach|student> <distill arguments...>
    local parent="$1" name="$2" role="$3"; shift 3
    local dir="$parent/$name"
    commands[$name]="distill $role $* ${data_args[*]} --output-dir $parent --name $name"
    folders[$name]="$dir"
    mkdir -p "$parent"
    if [ -f "$dir/summary.json" ]; then echo "$name: finished earlier"; return; fi
    local state=new
    if [ -d "$dir" ]; then state="$(folder_state "$dir")" || exit 2; fi
    if [ "$state" = busy ]; then
        echo "$name: another process is training it; left to it"; elsewhere[$name]=1; return
    fi
    local run=(distill "$role" "$@" "${data_args[@]}" --output-dir "$parent" --name "$name")
    if [ "$state" = unstarted ]; then
        # stopped before its first checkpoint: nothing to resume, so it starts again
        mv "$dir" "$dir.unstarted-$(date +%s)"
        echo "$name: stopped before its first checkpoint, starting again"
    fi
    if [ -d "$dir" ]; then
        echo "$name: stopped earlier, resuming"
        run=(distill "$role" --resume "$dir")
    else
        local extra
        read -r -a extra <<< "$EXTRA"
        run+=(${extra[@]+"${extra[@]}"})
    fi
    echo "$name: training, follow it with: tail -f $parent/$name.log"
    ("${run[@]}" >> "$parent/$name.log" 2>&1 && echo "$name: done") &
    while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do wait -n || true; done
}

check_finished() {  # exit 1, naming each run started by train() that did not finish
    local failed=0 name
    for name in "${!folders[@]}"; do
        if [ -f "${folders[$name]}/summary.json" ]; then continue; fi
        failed=1
        if [ -n "${elsewhere[$name]:-}" ]; then
            echo "$name: not finished, another process is training it"
        else
            echo "$name failed: see ${folders[$name]}.log"
        fi
    done
    [ "$failed" = 0 ] || exit 1
}

record() {  # record <experiment> <run name> <variant>
    python "$here/results.py" add "${folders[$2]}" --experiment "$1" --variant "$3" \
        --command "${commands[$2]}" > /dev/null
}
