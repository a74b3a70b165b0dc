#!/usr/bin/env bash
# Single-node launcher: mpirun with the fastest shared-memory settings measured here (histodistill chooses its
# OpenBLAS kernels itself; the environment passes unchanged), and root allowed (containers, CI).
# Usage: cluster/mpirun-local.sh NP histodistill-command [args...]
set -euo pipefail
np=${1:?usage: cluster/mpirun-local.sh NP COMMAND [ARGS...]}
shift
extra=()
if [ "$(id -u)" = 0 ]; then extra+=(--allow-run-as-root); fi
cores=$(nproc)
if [ "$np" -gt "$cores" ]; then extra+=(--oversubscribe); fi
exec \
    mpirun -np "$np" "${extra[@]}" --bind-to none \
    --mca btl self,vader --mca btl_vader_single_copy_mechanism none \
    "$@"
