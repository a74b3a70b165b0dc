#!/usr/bin/env bash
# The main job end to end on this machine, as far as it exists today: set up, build, report the machine,
# pack the LC25000 lung tiles into shards, inspect, verify and measure them, the model's cost table, and a
# 2-rank MPI smoke run. (Training the teacher, distilling students and evaluating arrive with issue 5.)
# Usage: cluster/quickstart.sh [DATA_ROOT]   (default ../shared/data/lc25000-lung, with train/ and val/)
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data/lc25000-lung}
work=${WORK_DIR:-runs/quickstart}
bash cluster/setup.sh
swift build -c release
bin=$(swift build -c release --show-bin-path)
export -n OPENBLAS_CORETYPE OPENBLAS_L2_SIZE 2>/dev/null || true
unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE
echo "== histodistill doctor"
"$bin/histodistill" doctor
if [ -d "$data/train" ] && [ -d "$data/val" ]; then
    echo "== pack $data (train and val) into $work/shards"
    rm -rf "$work/shards"
    "$bin/histodistill" pack "$data/train" -o "$work/shards/train" --magnification 10
    "$bin/histodistill" pack "$data/val" -o "$work/shards/val" --magnification 10
    "$bin/histodistill" inspect "$work/shards/train"
    "$bin/histodistill" verify "$work/shards/train" "$work/shards/val"
    echo "== normalisation statistics (1,000-tile sample)"
    "$bin/histodistill" stats "$work/shards/train" --max-tiles 1000
    "$bin/histodistill" export "$work/shards/val" -o "$work/export" --sample 4 --augment --factor 4
    "$bin/histodistill" bench-pipeline "$work/shards/train" --workers "$(nproc)" --steps 10
else
    echo "== $data/train and $data/val not found: skipping the packing steps (give a data root as the first argument)"
fi
echo "== model cost: the paper's teacher at 224 px and students at 112, 56, 28, 14 px"
"$bin/histodistill" cost
echo "== 2-rank MPI smoke run"
bash cluster/mpirun-local.sh 2 "$bin/histodistill" doctor
