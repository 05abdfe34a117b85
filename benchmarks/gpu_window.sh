#!/usr/bin/env bash
# The GPU measurements of issue 3, planned for one short lease of the device machine (a fresh
# machine per call, at most 10 minutes a command, about 30 minutes a session; it has torch,
# torchvision, timm and typer but no pydantic, no wandb and no network).
#
# Here, once (copies the pydantic wheels and the data archives into the git-ignored .gpu/):
#   bash benchmarks/gpu_window.sh stage [shared data folder]    (default: ../shared/data)
# On the device, one step per call, each with carry [".gpu"]:
#   bash benchmarks/gpu_window.sh speed     training images/s, pipeline vs reference loop
#                                           (MNIST and CIFAR ResNets; benchmarks/data_path.py)
#   bash benchmarks/gpu_window.sh hinton    the full MNIST reproduction, one seed (teacher,
#                                           then baseline and distilled side by side),
#                                           timed end to end
#   bash benchmarks/gpu_window.sh cifar S   seed S of the CIFAR reproduction (teacher and
#                                           baseline side by side, then the distilled student)
# Every step runs on whatever device distill picks (the GPU there, the CPU in CI's smoke
# test) and leaves one archive, <step>.tar.gz, in $OUT (the device tool's result folder;
# ./gpu-results elsewhere): the JSON, logs and run folders without weights. Unpack it here,
# then `python docs/results/results.py add <run folder> ...` records a run as usual.
# BENCH_ARGS are appended to the speed benchmarks and EXTRA to every training (CI shrinks
# both); the device's limit is met with `timeout`, so a step always returns what it has.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD" stage="${GPU_STAGE:-$PWD/.gpu}"  # GPU_STAGE: elsewhere (CI's smoke test)
step="${1:?usage: gpu_window.sh stage [data folder] | speed | hinton | cifar <seed>}"

if [ "$step" = stage ]; then
    data="${2:-${DISTILL_DATA_DIR:-../shared/data}}"
    wheels="${WHEELS:-$(dirname "$data")/wheels/gpu-py312}"
    [ -d "$data/mnist" ] && [ -f "$data/cifar10-jpeg.tar.gz" ] || {
        echo "stage: $data needs mnist/ and cifar10-jpeg.tar.gz (see its README)"; exit 2; }
    mkdir -p "$stage/data/mnist" "$stage/whl"
    cp "$data"/mnist/* "$stage/data/mnist/"
    cp "$data/cifar10-jpeg.tar.gz" "$stage/data/"
    if compgen -G "$wheels/*.whl" > /dev/null; then cp "$wheels"/*.whl "$stage/whl/"; fi
    echo "staged in .gpu/ ($(du -sh "$stage" | cut -f1)); call the device with carry [\".gpu\"]"
    exit 0
fi

results="${OUT:-$root/gpu-results}"
work="$(mktemp -d)"
mkdir -p "$results"
export WANDB_MODE=disabled PYTHONUNBUFFERED=1
if ! python3 -c "import pydantic" 2> /dev/null; then  # the device has none: the staged wheels
    python3 -m pip install -q --no-index --no-deps --target "$work/site" "$stage"/whl/*.whl
    export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! python3 -c "import distill" 2> /dev/null; then  # not installed there: the checkout's
    export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! command -v distill > /dev/null; then
    mkdir -p "$work/bin"
    printf '#!/bin/sh\nexec python3 -m distill "$@"\n' > "$work/bin/distill"
    chmod +x "$work/bin/distill"
    export PATH="$work/bin:$PATH"
fi
if [ ! -d "$stage/data/cifar10-jpeg/train" ]; then
    mkdir -p "$stage/data/cifar10-jpeg"
    tar xzf "$stage/data/cifar10-jpeg.tar.gz" -C "$stage/data/cifar10-jpeg"
fi
python3 -c "import torch; print('device:', torch.cuda.get_device_name() if \
torch.cuda.is_available() else 'cpu', '| torch', torch.__version__)" | tee "$work/device.txt"

failed=0
timed() {  # timed <name> <command...>: runs it within the lease's limit, logs and times it
    local name="$1" start ms status=0; shift
    start=$(date +%s%N)
    timeout "${STEP_LIMIT:-560}" "$@" > "$work/$name.log" 2>&1 || status=$?
    ms=$(( ($(date +%s%N) - start) / 1000000 ))
    printf '%s: exit %d, %d.%03d s wall\n' "$name" "$status" $((ms / 1000)) $((ms % 1000)) \
        | tee -a "$work/times.txt"
    [ "$status" = 0 ] || failed=1
}
read -r -a bench <<< "${BENCH_ARGS:-}"
cifar=(--recipe cifar10_jpeg_resnet --dataset "imagefolder:$stage/data/cifar10-jpeg")
case "$step" in
    speed)
        timed speed-mnist python3 benchmarks/data_path.py --recipe mnist_hinton \
            --data-dir "$stage/data" --epochs 2 --out "$work/speed-mnist.json" \
            ${bench[@]+"${bench[@]}"}
        timed speed-cifar python3 benchmarks/data_path.py "${cifar[@]}" --epochs 2 \
            --out "$work/speed-cifar.json" ${bench[@]+"${bench[@]}"} ;;
    hinton)
        timed hinton env OUT="$work/runs" RECORD=0 JOBS=2 STUDENTS="baseline distilled-val" \
            bash docs/results/mnist_hinton.sh "$stage/data" 0 ;;
    cifar)
        seed="${2:?usage: gpu_window.sh cifar <seed>}"
        timed "cifar-s$seed" env OUT="$work/runs" RECORD=0 JOBS=2 T="${T:-4}" \
            ALPHA="${ALPHA:-0.5}" bash docs/results/cifar10_jpeg.sh "$stage/data/cifar10-jpeg" \
            "$seed" ;;
    *) echo "unknown step '$step': stage, speed, hinton or cifar <seed>"; exit 2 ;;
esac
tar czf "$results/$step.tar.gz" -C "$work" --exclude=site --exclude=bin --exclude=wandb \
    --exclude='*.pt' --exclude='*.safetensors' .
echo "results: $results/$step.tar.gz"
rm -rf "$work"
exit "$failed"
