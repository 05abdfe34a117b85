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
# (one stopped before its first checkpoint is moved aside and started again; one that a
# process still trains in is refused by distill and reported as not finished).

seeds=("${@:-0 1 2}")
read -r -a seeds <<< "${seeds[*]}"
jobs_max="${JOBS:-1}"
out="${OUT:-outputs}"
EXTRA="${EXTRA:-}"
if [ "$jobs_max" -gt 1 ]; then export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1; fi

declare -A commands  # run name -> the command line recorded in docs/results
declare -A folders   # run name -> its run folder

train() {  # train <output folder> <run name> <teach|student> <distill arguments...>
    local parent="$1" name="$2" role="$3"; shift 3
    local dir="$parent/$name"
    commands[$name]="distill $role $* ${data_args[*]} --output-dir $parent --name $name"
    folders[$name]="$dir"
    mkdir -p "$parent"
    if [ -f "$dir/summary.json" ]; then echo "$name: finished earlier"; return; fi
    local run=(distill "$role" "$@" "${data_args[@]}" --output-dir "$parent" --name "$name"
               --quiet)
    if [ -d "$dir" ] && [ ! -f "$dir/checkpoint-last.pt" ]; then
        # stopped before its first checkpoint: nothing to resume, so it starts again
        mv "$dir" "$dir.unstarted-$(date +%s)"
        echo "$name: stopped before its first checkpoint, starting again"
    fi
    if [ -d "$dir" ]; then
        # (refused by distill, and reported below, if a process still trains in it)
        echo "$name: stopped earlier, resuming"
        run=(distill "$role" --resume "$dir" --quiet)
    else
        local extra
        read -r -a extra <<< "$EXTRA"
        run+=(${extra[@]+"${extra[@]}"})
    fi
    ("${run[@]}" >> "$parent/$name.log" 2>&1 && echo "$name: done") &
    while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do wait -n || true; done
}

check_finished() {  # exit 1, naming each run started by train() that did not finish
    local failed=0 name
    for name in "${!folders[@]}"; do
        if [ ! -f "${folders[$name]}/summary.json" ]; then
            echo "$name failed: see ${folders[$name]}.log"; failed=1
        fi
    done
    [ "$failed" = 0 ] || exit 1
}

record() {  # record <experiment> <run name> <variant>
    python "$here/results.py" add "${folders[$2]}" --experiment "$1" --variant "$3" \
        --command "${commands[$2]}" > /dev/null
}
