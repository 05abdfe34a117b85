#!/usr/bin/env bash
# The CIFAR-10 (JPEG q75) reproduction of docs/RESULTS.md: for each seed a ResNet-56 teacher,
# a ResNet-20 baseline student (alpha 0, no teacher) and a ResNet-20 student distilled from
# that seed's teacher, all with the recipe cifar10_jpeg_resnet (45000 training images, the
# 5000 held out for validation, the 10000 test images). Each finished run is added to
# docs/results/ and the tables of docs/RESULTS.md are regenerated.
#
#   mkdir -p data/cifar10-jpeg && tar xzf ../shared/data/cifar10-jpeg.tar.gz -C data/cifar10-jpeg
#   bash docs/results/cifar10_jpeg.sh data/cifar10-jpeg [seed ...]      (seeds default to 0 1 2)
#
# T=<t> ALPHA=<a>: the distilled students' temperature and weight; without both, only the
# teachers and baselines are trained. Pick them on the validation split first, never on test:
# SWEEP=1 trains the recipe's T x alpha grid from the first seed's teacher (once it has
# finished) for SWEEP_EPOCHS epochs (default 10), in JOBS processes sharing the sweep folder
# $OUT/cifar-sweeps/cifar-val-sweep, prints its table and the chosen T and ALPHA, and stores
# its validation figures in docs/results/cifar10_jpeg_val_sweep.csv, its heatmap and
# validation curves in docs/results/cifar10_jpeg_val_sweep*.png (unless RECORD=0); with
# TEACHER_EPOCHS (below) the sweep and its files are named -e<n> too.
# JOBS=N runs N trainings at a time with one thread each; a baseline needs no teacher, so it
# trains beside the teachers. OUT=<folder> (default outputs) gets cifar-teachers/ and
# cifar-students/ (apart, so a baseline never picks up a teacher run by itself).
# TEACHER_EPOCHS=<n>: the teachers train n epochs instead of the recipe's 30. Their runs and
# their distilled students are named -e<n>- (cifar-teacher-e60-s0, cifar-distilled-e60-T4-
# a0.5-s0) and recorded as the experiment cifar10_jpeg_resnet_e<n>, which must be listed in
# results.py (e60 is; it refuses a teacher trained otherwise, by an --epochs in EXTRA, say).
# No baseline is trained or recorded then: a baseline sees no teacher, so that experiment
# pairs its students with the recipe's (a run without TEACHER_EPOCHS).
# EXTRA="--set ..." is appended to every fresh training (CI's smoke test shrinks the runs).
# RECORD=0 skips adding the runs to docs/results/. A stopped run is resumed where it stopped,
# so the script can be run again after a kill or the end of a session.
set -euo pipefail
folder="${1:?usage: cifar10_jpeg.sh <image folder with train/ and test/> [seed ...]}"
shift
here="$(cd "$(dirname "$0")" && pwd)"

data_args=(--dataset "imagefolder:$folder")
# shellcheck source=docs/results/runs.sh
source "$here/runs.sh" "$@"  # seeds, jobs_max, out, EXTRA

teachers="$out/cifar-teachers" students="$out/cifar-students"
recipe=(--recipe cifar10_jpeg_resnet)
experiment=cifar10_jpeg_resnet tag="" teacher_args=()
if [ -n "${TEACHER_EPOCHS+set}" ]; then  # set but empty is refused too, never the recipe's
    if ! [[ "$TEACHER_EPOCHS" =~ ^[1-9][0-9]*$ ]]; then
        echo "TEACHER_EPOCHS: '$TEACHER_EPOCHS' is not a whole number of epochs"; exit 2
    fi
    experiment="cifar10_jpeg_resnet_e$TEACHER_EPOCHS" tag="-e$TEACHER_EPOCHS"
    teacher_args=(--epochs "$TEACHER_EPOCHS")
    if [ "${RECORD:-1}" = 1 ]; then
        known="$(python "$here/results.py" experiments)" || exit 2
        if ! grep -qx "$experiment" <<< "$known"; then
            echo "TEACHER_EPOCHS=$TEACHER_EPOCHS: no experiment $experiment in" \
                 "$here/results.py to record the runs in; add it there, or run with RECORD=0"
            exit 2
        fi
    fi
fi
for s in "${seeds[@]}"; do
    train "$teachers" "cifar-teacher$tag-s$s" teach "${recipe[@]}" \
        ${teacher_args[@]+"${teacher_args[@]}"} --seed "$s"
    if [ -z "$tag" ]; then
        train "$students" "cifar-baseline-s$s" student "${recipe[@]}" --alpha 0 --seed "$s"
    fi
done
wait
if [ "${SWEEP:-0}" = 1 ]; then
    teacher0="$teachers/cifar-teacher$tag-s${seeds[0]}"
    sweeps="$out/cifar-sweeps" sweep="cifar-val-sweep$tag"
    if [ ! -f "$teacher0/summary.json" ]; then
        echo "sweep: not run, $teacher0 has not finished"; exit 1
    fi
    sweep_args=(sweep "${recipe[@]}" "${data_args[@]}" --teacher "$teacher0"
                --epochs "${SWEEP_EPOCHS:-10}" --output-dir "$sweeps" --name "$sweep")
    read -r -a extra <<< "$EXTRA"
    sweep_args+=(${extra[@]+"${extra[@]}"})
    mkdir -p "$sweeps"
    pids=()
    for j in $(seq "$jobs_max"); do  # they share the grid: each cell is trained by one
        echo "sweep process $j: follow it with: tail -f $sweeps/$sweep.$j.log"
        distill "${sweep_args[@]}" >> "$sweeps/$sweep.$j.log" 2>&1 &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do
        if ! wait "$pid"; then
            kill "${pids[@]}" 2> /dev/null || true  # the others stop too; a rerun resumes
            echo "sweep failed: see $sweeps/$sweep.*.log"; exit 1
        fi
    done
    distill report "$sweeps/$sweep"
    csv=()
    if [ "${RECORD:-1}" = 1 ]; then
        prefix=""; if [ "$jobs_max" -gt 1 ]; then prefix="OMP_NUM_THREADS=1 ($jobs_max processes) "; fi
        csv=(--out "$here/cifar10_jpeg_val_sweep$tag.csv"
             --command "${prefix}distill ${sweep_args[*]}"
             --plot "$here/cifar10_jpeg_val_sweep$tag.png"
             --curves "$here/cifar10_jpeg_val_sweep${tag}_curves.png")
    fi
    python "$here/results.py" sweep "$sweeps/$sweep" ${csv[@]+"${csv[@]}"}
fi
distilled=""
if [ -n "${T:-}" ] && [ -n "${ALPHA:-}" ]; then
    # the settings are in the name: a new choice is a new run
    distilled="cifar-distilled$tag-T$T-a$ALPHA"
    for s in "${seeds[@]}"; do
        if [ ! -f "$teachers/cifar-teacher$tag-s$s/summary.json" ]; then continue; fi
        train "$students" "$distilled-s$s" student "${recipe[@]}" --T "$T" --alpha "$ALPHA" \
            --teacher "$teachers/cifar-teacher$tag-s$s" --seed "$s"
    done
    wait
else
    echo "distilled students: not trained; set T and ALPHA (chosen on validation, see above)"
fi

check_finished
if [ "${RECORD:-1}" = 1 ]; then
    for s in "${seeds[@]}"; do
        record "$experiment" "cifar-teacher$tag-s$s" teacher
        if [ -z "$tag" ]; then record "$experiment" "cifar-baseline-s$s" baseline; fi
        if [ -n "$distilled" ]; then record "$experiment" "$distilled-s$s" distilled; fi
    done
    python "$here/results.py" tables > /dev/null
    echo "tables regenerated: docs/RESULTS.md"
fi
