#!/usr/bin/env bash
# The main job end to end on this machine. For now (engine stage): set up, build, report the machine with
# `histodistill doctor`, run the conv benchmark, and a 2-rank MPI smoke run. Later stages add
# pack -> train teacher -> distill student -> evaluate.
set -euo pipefail
cd "$(dirname "$0")/.."
bash cluster/setup.sh
swift build -c release
bin=$(swift build -c release --show-bin-path)
echo "== histodistill doctor"
"$bin/histodistill" doctor
echo "== conv benchmark (1 rep, OpenBLAS core type unset)"
env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$bin/histodistill-bench" --reps 1 --threads "$(nproc)"
echo "== 2-rank MPI smoke run"
bash cluster/mpirun-local.sh 2 "$bin/histodistill" doctor
