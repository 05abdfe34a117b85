#!/usr/bin/env bash
# The MNIST reproduction of docs/RESULTS.md, end to end: for each seed a teacher, a baseline
# student (hard labels only), distilled students whose transfer set is jittered like the
# teacher's training set (the recipe's alpha, chosen on validation, and alpha 0.9), and a
# distilled student without jitter (as published); all on the 60000 training images
# (data.val_size=0). Each finished run is added to docs/results/ and the
# tables of docs/RESULTS.md are regenerated.
#
#   bash docs/results/mnist_hinton.sh <data dir> [seed ...]        (seeds default to 0 1 2)
#
# JOBS=N runs N trainings at a time with one thread each (JOBS=2 on the 2-core CPU that made
# the committed numbers; on a GPU keep JOBS=1). OUT=<folder> holds the runs (default outputs).
# EXTRA="--set ..." is appended to every training command (CI's smoke test shrinks the runs).
# RECORD=0 skips adding the runs to docs/results/ (for trial runs).
# STUDENTS="distilled-val" trains only those students (default: baseline distilled-val distilled
# distilled-plain);
# the teachers are always trained (or found finished earlier). A stopped run is resumed.
set -euo pipefail
data="${1:?usage: mnist_hinton.sh <data dir> [seed ...]}"
shift
here="$(cd "$(dirname "$0")" && pwd)"

data_args=(--data-dir "$data" --set data.val_size=0)
# shellcheck source=docs/results/runs.sh
source "$here/runs.sh" "$@"  # seeds, jobs_max, out, EXTRA

read -r -a students <<< "${STUDENTS:-baseline distilled-val distilled distilled-plain}"
# distilled-val: the recipe's alpha (chosen on validation); distilled / distilled-plain: the
# alpha 0.9 used before that choice, with and without the jittered transfer set
declare -A student_args=([baseline]="--alpha 0" [distilled-val]="--set student.augment.jitter=2"
                         [distilled]="--alpha 0.9 --set student.augment.jitter=2"
                         [distilled-plain]="--alpha 0.9")
declare -A variant_of=([baseline]=baseline [distilled-val]=distilled_val [distilled]=distilled
                       [distilled-plain]=distilled_plain)
for kind in "${students[@]}"; do
    [ -n "${variant_of[$kind]+x}" ] || { echo "STUDENTS: unknown '$kind'"; exit 2; }
done
mkdir -p "$out"
student=(student --recipe mnist_hinton)
for s in "${seeds[@]}"; do
    train "$out" "mnist-teacher-s$s" teach --recipe mnist_hinton --seed "$s"
done
wait
for s in "${seeds[@]}"; do
    teacher=(--teacher "$out/mnist-teacher-s$s" --seed "$s")
    for kind in "${students[@]}"; do
        # shellcheck disable=SC2086
        train "$out" "mnist-$kind-s$s" "${student[@]}" "${teacher[@]}" ${student_args[$kind]}
    done
done
wait

check_finished
if [ "${RECORD:-1}" = 1 ]; then
    for s in "${seeds[@]}"; do
        for kind in teacher "${students[@]}"; do
            record mnist_hinton "mnist-$kind-s$s" "${variant_of[$kind]:-teacher}"
        done
    done
    python "$here/results.py" tables > /dev/null
    echo "tables regenerated: docs/RESULTS.md"
fi
