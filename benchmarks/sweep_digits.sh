#!/usr/bin/env bash
# A 5 x 5 T x alpha grid (one seed) of digits students, 10 epochs, from a digits teacher
# trained first into the output dir (untimed): batched vs sequential sweep, timed side by
# side in one run.
# Usage: bash benchmarks/sweep_digits.sh [output dir]      (default outputs/bench)
set -euo pipefail
out="${1:-outputs/bench}"
distill teach --output-dir "$out" --name "bench-teacher-$(date +%s)" --wandb disabled -q > /dev/null
for mode in batched sequential; do
    start=$(date +%s.%N)
    distill sweep --T 1,2,4,8,16 --alpha 0.1,0.3,0.5,0.7,0.9 --seeds 0 --epochs 10 \
        --mode "$mode" --name "sweep-$mode-$(date +%s)" --output-dir "$out" --wandb disabled -q \
        > /dev/null
    end=$(date +%s.%N)
    echo "$mode: $(echo "$end - $start" | bc) s"
done
