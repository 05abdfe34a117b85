#!/usr/bin/env bash
# The GPU measurements of issue 3, planned for one short lease of the device machine (a fresh
# machine per call, at most 10 minutes a command, 15 minutes a session; it has torch,
# torchvision, timm and typer but no pydantic, no wandb and no network).
#
# Here, once (copies the pydantic wheels and the data archives into the git-ignored .gpu/):
#   bash benchmarks/gpu_window.sh stage [shared data folder]    (default: ../shared/data)
# On the device, one step per call, each with carry [".gpu"]:
#   bash benchmarks/gpu_window.sh speed     training images/s, pipeline vs reference loop
#                                           (MNIST and CIFAR ResNets; benchmarks/data_path.py)
#   bash benchmarks/gpu_window.sh hinton    the MNIST reproduction of one seed as the issue
#                                           times it: teacher, baseline, distilled student
#   bash benchmarks/gpu_window.sh first     speed, then hinton, in one call and one archive
#                                           (first.tar.gz): a 15-minute lease's first call,
#                                           so that no second start or idle wait is paid
#   bash benchmarks/gpu_window.sh cifar S   seed S of the CIFAR reproduction (teacher and
#                                           baseline side by side, then the distilled student)
# Every step runs on whatever device distill picks (the GPU there, the CPU in CI's smoke
# test), is held to STEP_LIMIT seconds in all (default 540; the device stops a command at
# 600) and leaves one archive, <step>.tar.gz (cifar-s<S>.tar.gz), in $OUT (the device tool's
# result folder; ./gpu-results elsewhere): JSON, logs, times.txt and the run folders that
# were not finished when it began. The CIFAR archive keeps the teachers' weights, and the
# newest checkpoint of each run the step's time cut short (no other checkpoints, and none
# if they would take it over the 16 MiB a returned file may have). Here, after each call:
#   bash benchmarks/gpu_window.sh unpack <folder>/cifar-s0.tar.gz
# puts its runs into .gpu/runs (and drops the checkpoints of runs finished since), so the next
# call skips what finished and resumes what was cut short: a teacher longer than one call
# (TEACHER_EPOCHS=60, say) finishes over several, and a teacher finished in one call teaches
# in the next. `python docs/results/results.py add <run folder>`
# records a run as usual. BENCH_ARGS are appended to the speed benchmarks and EXTRA to every
# training (CI shrinks both). TEACHER_EPOCHS=60 reaches cifar10_jpeg.sh: the seed's 60-epoch
# teacher (cifar-teacher-e60-s<S>) and its distilled student, no baseline.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD" stage="${GPU_STAGE:-$PWD/.gpu}"  # GPU_STAGE: elsewhere (CI's smoke test)
usage="usage: gpu_window.sh stage [data folder] | speed | hinton | first | cifar <seed> |"
usage+=" unpack <archive>"
step="${1:?$usage}"
case "$step" in
    stage | speed | hinton | first | cifar | unpack) ;;
    *) echo "unknown step '$step'; $usage"; exit 2 ;;
esac

if [ "$step" = stage ]; then
    data="${2:-${DISTILL_DATA_DIR:-../shared/data}}"
    wheels="${WHEELS:-$(dirname "$data")/wheels/gpu-py312}"
    [ -d "$data/mnist" ] && [ -f "$data/cifar10-jpeg.tar.gz" ] || {
        echo "stage: $data needs mnist/ and cifar10-jpeg.tar.gz (see its README)"; exit 2; }
    mkdir -p "$stage/data/mnist" "$stage/whl"
    cp "$data"/mnist/* "$stage/data/mnist/"
    cp "$data/cifar10-jpeg.tar.gz" "$stage/data/"
    if [ "$wheels" != none ]; then  # WHEELS=none: the GPU machine has pydantic itself
        compgen -G "$wheels/*.whl" > /dev/null || {
            echo "stage: no wheels in $wheels (set WHEELS=<folder> or WHEELS=none)"; exit 2; }
        cp "$wheels"/*.whl "$stage/whl/"
    fi
    echo "staged in .gpu/ ($(du -sh "$stage" | cut -f1)); call the device with carry [\".gpu\"]"
    exit 0
fi
if [ "$step" = unpack ]; then  # here: a step's runs into the stage, for the next call
    archive="${2:?$usage}"
    [ -d "$stage/data" ] || {
        echo "unpack: no stage at $stage (run the stage step first)"; exit 2; }
    # only CIFAR runs go on in a later call: the hinton step is timed whole within one call,
    # and its archive holds no weights for a later call's students to learn from
    members="$(tar tzf "$archive")"  # a damaged archive fails here, saying why
    grep -q '^runs/cifar/' <<< "$members" || {
        echo "unpack: no CIFAR runs in $archive (only the cifar step's archives go on in a" \
             "later call)"; exit 2; }
    tar xzf "$archive" -C "$stage" runs/cifar
    # a run that has finished since its checkpoint came back needs it no more: it would only
    # weigh on every call's carry (64 MiB in all)
    for summary in "$stage"/runs/*/*/*/summary.json; do
        [ -f "$summary" ] && rm -f "$(dirname "$summary")"/checkpoint-*.pt
    done
    echo "unpacked into $stage/runs ($(du -sh "$stage" | cut -f1) to carry)"
    exit 0
fi

deadline=$((SECONDS + ${STEP_LIMIT:-540}))  # the device stops a command at 600 s
# Runs record their data and teacher folders by path, and the checkout's path may differ from
# one machine to the next: a fixed link to the stage (GPU_LINK) and a fixed image folder beside
# it keep those paths the same, so a run cut short in one call resumes in the next
link="${GPU_LINK:-/tmp/distill-gpu}"
if [ -e "$link" ] && [ ! -L "$link" ]; then echo "$link: not a link; set GPU_LINK"; exit 2; fi
mkdir -p "$stage/runs"
stage="$(cd "$stage" && pwd)"  # absolute: GPU_STAGE may be relative, and tar changes folders
ln -sfn "$stage" "$link"
results="${OUT:-$root/gpu-results}" runs="$link/runs" images="$link-cifar10-jpeg"
work="$(mktemp -d)" tools="$(mktemp -d)"  # what comes back; what does not
trap 'rm -rf "$work" "$tools" "$images"' EXIT
mkdir -p "$results"
export WANDB_MODE=disabled PYTHONUNBUFFERED=1
# the checkout's package, also for benchmarks/*.py (their own folder is not the root)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
if ! python3 -c "import pydantic" 2> /dev/null; then  # the device has none: the staged wheels
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$tools/site" \
        "$stage"/whl/*.whl
    export PYTHONPATH="$tools/site:$PYTHONPATH"
fi
mkdir -p "$tools/bin"
export PATH="$tools/bin:$PATH"
if ! command -v distill > /dev/null; then  # not pip-installed there
    printf '#!/bin/sh\nexec python3 -m distill "$@"\n' > "$tools/bin/distill"
    chmod +x "$tools/bin/distill"
fi
# the reproduction scripts call `python`: the python3 found above (a wrapper, not a link: a
# link would lose a virtual environment's packages)
printf '#!/bin/sh\nexec "%s" "$@"\n' "$(command -v python3)" > "$tools/bin/python"
chmod +x "$tools/bin/python"
if [ "$step" != hinton ]; then  # the images, for the steps that read them (60000 files, 55 MB)
    rm -rf "$images" && mkdir -p "$images"
    tar xzf "$stage/data/cifar10-jpeg.tar.gz" -C "$images"
fi
python3 -c "import torch; print('device:', torch.cuda.get_device_name() if \
torch.cuda.is_available() else 'cpu', '| torch', torch.__version__)" | tee "$work/device.txt"

failed=0
timed() {  # timed <name> <command...>: runs it in what is left of the step's time, logged
    local name="$1" start ms status=0 left=$((deadline - SECONDS - 20)); shift  # 20 s: the tar
    start=$(date +%s%N)
    if [ "$left" -gt 10 ]; then
        timeout "$left" "$@" > "$work/$name.log" 2>&1 || status=$?
    else
        status=124; echo "no time left" > "$work/$name.log"
    fi
    ms=$(( ($(date +%s%N) - start) / 1000000 ))
    printf '%s: exit %d, %d.%03d s wall\n' "$name" "$status" $((ms / 1000)) $((ms % 1000)) \
        | tee -a "$work/times.txt"
    [ "$status" = 0 ] || failed=1
}
read -r -a bench <<< "${BENCH_ARGS:-}"
cifar=(--recipe cifar10_jpeg_resnet --dataset "imagefolder:$images")
left_out=(--exclude='*.safetensors')  # the MNIST nets' weights would outgrow 16 MiB
speed() {  # pipeline vs reference loop, MNIST then the CIFAR ResNets
    timed speed-mnist python3 benchmarks/data_path.py --recipe mnist_hinton \
        --data-dir "$stage/data" --epochs 2 --out "$work/speed-mnist.json" \
        ${bench[@]+"${bench[@]}"}
    timed speed-cifar python3 benchmarks/data_path.py "${cifar[@]}" --epochs 2 \
        --out "$work/speed-cifar.json" ${bench[@]+"${bench[@]}"}
}
hinton() {  # one seed of the MNIST reproduction, timed whole; its runs come back
    timed hinton env OUT="$runs/mnist" RECORD=0 STUDENTS="baseline distilled-val" \
        bash docs/results/mnist_hinton.sh "$link/data" 0
    kept=(runs/mnist)
}
kept=()
case "$step" in
    speed) speed ;;
    hinton) hinton ;;
    first) speed; hinton ;;
    cifar)
        seed="${2:?$usage}"
        step="cifar-s$seed"
        left_out=(--exclude=best.safetensors --exclude='*cifar-students*.safetensors')
        resumable=1
        for summary in "$stage"/runs/cifar/*/*/summary.json; do  # finished before: here already
            [ -f "$summary" ] && left_out+=(--exclude="$(dirname "${summary#"$stage"/}")")
        done
        timed "$step" env OUT="$runs/cifar" RECORD=0 JOBS=2 T="${T:-4}" ALPHA="${ALPHA:-0.5}" \
            bash docs/results/cifar10_jpeg.sh "$images" "$seed"
        kept=(runs/cifar) ;;
esac
# weights only of the CIFAR teachers, so that a teacher finished in one call teaches in the
# next; no checkpoint (*.pt; *.tmp: a save cut short) but, for CIFAR, the newest one of each
# run cut short (it holds the best weights so far too), so that the next call resumes it;
# no run that had finished before the call (it came from here)
pack() {  # pack <with checkpoints: 1 or 0>; tar's status 1 (a file changed as it was read,
    # by a run the time limit was stopping) still leaves a whole archive
    local archive=(--exclude=wandb --exclude=teacher-logits --exclude='*.tmp'
                   ${left_out[@]+"${left_out[@]}"}) last status=0
    if [ "$1" = 1 ]; then
        archive+=(--exclude=checkpoint-best.pt --exclude='chunk-*.pt'
                  --exclude='cifar-sweeps/*.pt')
        for last in "$stage"/runs/cifar/*/*/checkpoint-last.pt; do
            if [ -f "$(dirname "$last")/summary.json" ]; then  # finished: no need
                archive+=(--exclude="${last#"$stage"/}")
            fi
        done
    else
        archive+=(--exclude='*.pt')
    fi
    archive+=(-C "$work" .)
    if [ ${#kept[@]} -gt 0 ]; then archive+=(-C "$stage" "${kept[@]}"); fi
    tar czf "$results/$step.tar.gz" "${archive[@]}" || status=$?
    [ "$status" -le 1 ] || exit "$status"
    size=$(du -k "$results/$step.tar.gz" | cut -f1)
}
pack "${resumable:-0}"
most="${GPU_FILE_KB:-16384}"  # the device returns files of 16 MiB at most
if [ "$size" -gt "$most" ] && [ -n "${resumable:-}" ]; then
    echo "over $most KB with checkpoints ($size KB): packed again without them; the runs cut" \
         "short resume from the checkpoint the stage had before this call, if any, else start" \
         "again" | tee -a "$work/times.txt"
    failed=1
    pack 0
fi
echo "results: $results/$step.tar.gz ($size KB)"
if [ "$size" -gt "$most" ]; then
    echo "warning: over the $most KB a file can have to come back from the device"
fi
exit "$failed"
