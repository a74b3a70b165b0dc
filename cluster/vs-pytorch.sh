#!/usr/bin/env bash
# One sitting of issue 16's comparison: histodistill's training, distillation and inference steps
# (`cost --measure --distill`) and then PyTorch's (`../shared/anchors/pytorch/bench_train.py`) in each of its layouts
# (fp32 NCHW, channels_last, bf16 autocast, both), for 1 and 2 threads, same model and batch, side by side.
# Usage: PYTHON=/path/to/venv/bin/python cluster/vs-pytorch.sh [THREADS...]   (default threads: 1 2)
#   environment: HISTODISTILL (default: the release build), ANCHORS=../shared/anchors/pytorch,
#                RESOLUTIONS=224,56 (teacher first), REPS=3, STEPS=3,
#                PRECISIONS="32-true bf16-mixed" (ours, each in turn: `cost --precision`)
# Nothing is set in the environment for either side; OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE are removed for ours.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:?set PYTHON to a Python with torch (python3 -m venv DIR && DIR/bin/pip install torch)}
bin=${HISTODISTILL:-$(swift build -c release --show-bin-path)/histodistill}
anchors=$(cd "${ANCHORS:-../shared/anchors/pytorch}" && pwd)
res=${RESOLUTIONS:-224,56} reps=${REPS:-3} steps=${STEPS:-3}
teacher=${res%%,*} student=${res#*,}; student=${student%%,*}
cases="train_sup_$teacher,train_sup_$student,distill_t${teacher}_s$student,infer_$teacher,infer_$student"
threads=("$@"); [ ${#threads[@]} -gt 0 ] || threads=(1 2)
echo "$(date -u +%FT%TZ) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
for t in "${threads[@]}"; do
    for p in ${PRECISIONS:-32-true bf16-mixed}; do
        echo "== histodistill $p, $t thread(s)"
        env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$bin" cost --measure --distill --threads "$t" --resolutions "$res" \
            --reps "$reps" --steps "$steps" --precision "$p"
    done
    for mode in "" "CL=1" "AMP=1" "CL=1 AMP=1"; do
        echo "== PyTorch ${mode:-fp32 NCHW}, $t thread(s)"
        (cd "$anchors" && env $mode "$py" -W ignore bench_train.py "$t" "$reps" "$steps" "$cases" 2>&1 | grep "img/s")
    done
done
