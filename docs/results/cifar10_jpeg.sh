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
# teachers and baselines are trained. Pick them on the validation split first, from seed 0's
# teacher, and never on test:
#   distill sweep --recipe cifar10_jpeg_resnet --dataset imagefolder:data/cifar10-jpeg \
#       --teacher outputs/cifar-teachers/cifar-teacher-s0
# JOBS=N runs N trainings at a time with one thread each; a baseline needs no teacher, so it
# trains beside the teachers. OUT=<folder> (default outputs) gets cifar-teachers/ and
# cifar-students/ (apart, so a baseline never picks up a teacher run by itself).
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
for s in "${seeds[@]}"; do
    train "$teachers" "cifar-teacher-s$s" teach "${recipe[@]}" --seed "$s"
    train "$students" "cifar-baseline-s$s" student "${recipe[@]}" --alpha 0 --seed "$s"
done
wait
distilled=""
if [ -n "${T:-}" ] && [ -n "${ALPHA:-}" ]; then
    distilled="cifar-distilled-T$T-a$ALPHA"  # the settings are in the name: a new choice is a new run
    for s in "${seeds[@]}"; do
        if [ ! -f "$teachers/cifar-teacher-s$s/summary.json" ]; then continue; fi
        train "$students" "$distilled-s$s" student "${recipe[@]}" --T "$T" --alpha "$ALPHA" \
            --teacher "$teachers/cifar-teacher-s$s" --seed "$s"
    done
    wait
else
    echo "distilled students: not trained; set T and ALPHA (chosen on validation, see above)"
fi

check_finished
if [ "${RECORD:-1}" = 1 ]; then
    for s in "${seeds[@]}"; do
        record cifar10_jpeg_resnet "cifar-teacher-s$s" teacher
        record cifar10_jpeg_resnet "cifar-baseline-s$s" baseline
        if [ -n "$distilled" ]; then record cifar10_jpeg_resnet "$distilled-s$s" distilled; fi
    done
    python "$here/results.py" tables > /dev/null
    echo "tables regenerated: docs/RESULTS.md"
fi
