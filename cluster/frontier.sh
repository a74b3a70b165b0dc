#!/usr/bin/env bash
# The accuracy-vs-compute frontier and the headline numbers with seeds (issue 18, items 2 and 4; docs/results.md):
# for one seed, a teacher at 224 px trained with the shipped config (its recipe: configs/README.md), students at 112, 56, 28
# and 14 px distilled from it without labels in ONE pass (one teacher forward per batch), and the same four
# resolutions trained from scratch with labels. Every run is then evaluated on the lung validation split.
# Run it once per seed, then `cluster/frontier.sh summary` for the table over seeds, and `cluster/frontier.sh speed`
# for tiles/s of every resolution (predict over the training shards; speed does not depend on the seed).
#
# Usage: cluster/frontier.sh SEED | summary | speed
#   environment: WORK=runs/frontier, SHARDS=<dir with train/ and val/> (packed from LUNG when absent),
#                LUNG=../shared/data/lc25000-lung, EPOCHS (teacher and students; default: the teacher config's 10,
#                the students' 10), TEACHER_EPOCHS=$EPOCHS, STUDENT_EPOCHS=${EPOCHS:-10},
#                SIZES="112 56 28 14" (the students' input sizes; the pass's cost is mostly the teacher and the largest),
#                STUDENT_SET="key=value ..." (extra --set overrides for the students and the from-scratch runs alike),
#                TEACHER_SET="key=value ..." (extra --set overrides for the teacher only; e.g. train.ema_decay=0.995 for a short run),
#                SET="key=value ..." (extra --set overrides for every run, the teacher's too; e.g. SET=train.precision=bf16-mixed
#                with WORK=runs/frontier-bf16 for the bf16-mixed runs of docs/results.md)
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:?usage: cluster/frontier.sh SEED | summary | speed}
work=${WORK:-runs/frontier}
lung=${LUNG:-../shared/data/lc25000-lung}
shards=${SHARDS:-$work/shards}
teacher_epochs=${TEACHER_EPOCHS:-${EPOCHS:-}} student_epochs=${STUDENT_EPOCHS:-${EPOCHS:-10}}
bin=${HISTODISTILL:-$(swift build -c release --show-bin-path)/histodistill}   # HISTODISTILL: another binary (a copy, while you rebuild)
log() { echo "$(date -u +%H:%M:%S) $*"; }
read -r -a sizes <<< "${SIZES:-112 56 28 14}"
student_set=() all_set=() teacher_set=()
for kv in ${STUDENT_SET:-}; do student_set+=(--set "$kv"); done
for kv in ${TEACHER_SET:-}; do teacher_set+=(--set "$kv"); done
for kv in ${SET:-}; do all_set+=(--set "$kv"); done

case $what in
summary)
    # A markdown table over the seeds: kept weights (the best validation, evaluated) and the last epoch, with the
    # multiply-adds and tiles/s of `cluster/frontier.sh speed` when it has run.
    python3 - "$work" <<'PY'
import csv, os, sys
sys.path.insert(0, "cluster")
from run_accuracy import mean_sd, over_seeds
work = sys.argv[1]
speed = {}
if os.path.exists(os.path.join(work, "speed.tsv")):
    speed = {int(r["px"]): r for r in csv.DictReader(open(os.path.join(work, "speed.tsv")), delimiter="\t")}
print("| run | px | seeds | kept weights, % (mean ± sd) | per seed | last epoch, % | M multiply-adds per tile | tiles/s |")
print("|---|---|---|---|---|---|---|---|")
for run, v in over_seeds(work).items():
    px = 224 if run == "teacher" else int(run.rsplit("-", 1)[1])
    sp = speed.get(px, {})
    print(f"| {run} | {px} | {','.join(x[0] for x in v)} | {mean_sd([x[2] for x in v])} | " + ", ".join(f"{100 * x[2]:.2f}" for x in v)
          + f" | {mean_sd([x[1] for x in v])} | {sp.get('macs_millions', '-')} | {sp.get('tiles_per_s', '-')} |")
PY
    exit 0 ;;
speed)
    # Multiply-adds per tile from `cost`, tiles/s as the median of 3 `predict` passes over the training shards.
    "$bin" cost --classes 3 --resolutions 224,112,56,28,14 | tee "$work/cost.md"
    printf "px\tmacs_millions\ttiles_per_s\n" > "$work/speed.tsv"
    for s in 224 "${sizes[@]}"; do
        run=$work/seed-0/distilled/student-$s
        [ "$s" = 224 ] && run=$work/seed-0/teacher
        rates=()
        for rep in 1 2 3; do
            rates+=("$("$bin" predict --run "$run" --shards "$shards/train" -o "$work/speed-predictions.csv" --workers 1 2>&1 |
                     sed -n 's/.* \([0-9.]*\) tiles\/s.*/\1/p')")
        done
        macs=$(sed -n "s/^| $s px | \([0-9.]*\) M .*/\1/p" "$work/cost.md")
        median=$(printf "%s\n" "${rates[@]}" | sort -g | sed -n 2p)
        log "$s px: ${rates[*]} tiles/s (median $median), $macs M multiply-adds per tile"
        printf "%s\t%s\t%s\n" "$s" "$macs" "$median" >> "$work/speed.tsv"
    done
    rm -f "$work/speed-predictions.csv"
    exit 0 ;;
esac

seed=$what
out=$work/seed-$seed
mkdir -p "$out"
if [ ! -d "$shards/train" ]; then
    log "packing $lung into $shards"
    "$bin" pack "$lung/train" -o "$shards/train" --magnification 10 > /dev/null
    "$bin" pack "$lung/val" -o "$shards/val" --magnification 10 > /dev/null
fi
data=(--set "data.train=$shards/train" --set "data.val=$shards/val" --set "run.seed=$seed" "${all_set[@]}")

log "seed $seed: teacher at 224 px, recipe, ${teacher_epochs:-its config} epochs"
[ -f "$out/teacher/best.safetensors" ] || "$bin" train --config configs/teacher-lung-224.yaml "${data[@]}" \
    ${teacher_epochs:+--set "train.epochs=$teacher_epochs"} --set "run.output=$out/teacher" "${teacher_set[@]}" 2>> "$out/log" | tail -1

# Student and from-scratch configs at each size: the shipped 28 px ones with another name and input factor.
configs=()
for s in "${sizes[@]}"; do
    sed -e "s/^  name: student-lung-28-distill/  name: student-$s/" -e "s/^  input_factor: 8/  input_factor: $((224 / s))/" \
        configs/student-lung-28-distill.yaml > "$out/student-$s.yaml"
    configs+=("$out/student-$s.yaml")
done
log "seed $seed: students at ${sizes[*]} px distilled in one pass, $student_epochs epochs"
[ -f "$out/distilled/student-${sizes[-1]}/best.safetensors" ] || "$bin" distill --config "${configs[@]}" --runs-dir "$out/distilled" \
    "${data[@]}" --set "train.epochs=$student_epochs" --set "distill.teacher_run=$out/teacher" "${student_set[@]}" 2>> "$out/log" | grep -v "^teacher forwards" || true
for s in "${sizes[@]}"; do
    log "seed $seed: from scratch at $s px, $student_epochs epochs"
    [ -f "$out/scratch-$s/best.safetensors" ] || "$bin" train --config configs/baseline-lung-28.yaml "${data[@]}" \
        --set "data.input_factor=$((224 / s))" --set "train.epochs=$student_epochs" --set "run.output=$out/scratch-$s" "${student_set[@]}" 2>> "$out/log" | tail -1
done

printf "run\tlast\tbest\tkept\n" > "$out/summary.tsv"
runs=(teacher)
for s in "${sizes[@]}"; do runs+=("distilled/student-$s"); done
for s in "${sizes[@]}"; do runs+=("scratch-$s"); done
for run in "${runs[@]}"; do
    [ -f "$out/$run/eval.json" ] || "$bin" evaluate --run "$out/$run" > /dev/null 2>> "$out/log"
    python3 cluster/run_accuracy.py "$out/$run" "$run" >> "$out/summary.tsv"
done
column -t "$out/summary.tsv"
