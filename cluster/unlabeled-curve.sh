#!/usr/bin/env bash
# The unlabeled-data curve (issue 18, item 3; docs/results.md): a teacher trained on a small labelled part of the
# lung training split, students distilled from it at 28 and 14 px (both in one pass) with unlabeled pools of 0,
# 25, 50 and 100% of the rest of the split, and with the colon split as out-of-domain unlabeled tiles; against
# students trained from scratch on the labelled part only. Every student gets the same number of steps, so the
# pools differ only in how many different tiles they hold. Accuracies on the lung validation split.
#
# Usage: cluster/unlabeled-curve.sh [SEED]   (environment: LABELLED=0.1, STEPS=400, SCHEDULE=cosine, TEACHER_EPOCHS=30,
#        WORK=runs/curve)
set -euo pipefail
cd "$(dirname "$0")/.."
seed=${1:-0}
labelled=${LABELLED:-0.1} steps=${STEPS:-400} teacher_epochs=${TEACHER_EPOCHS:-30}
work=${WORK:-runs/curve}/seed-$seed
lung=${LUNG:-../shared/data/lc25000-lung} colon=${COLON:-../shared/data/lc25000-colon}
bin=${HISTODISTILL:-$(swift build -c release --show-bin-path)/histodistill}   # HISTODISTILL: another binary (a copy, while you rebuild)
mkdir -p "$work"
log() { echo "$(date -u +%H:%M:%S) $*"; }

# Manifests: a class-stratified LABELLED share of the training files, and the rest shuffled (pools are prefixes).
python3 - "$lung/train" "$work" "$labelled" "$seed" <<'PY'
import csv, os, random, sys
root, out, share, seed = os.path.abspath(sys.argv[1]), sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
labelled, rest = [], []
for cls in sorted(os.listdir(root)):
    files = sorted(os.path.join(root, cls, f) for f in os.listdir(os.path.join(root, cls)))
    rng.shuffle(files)
    k = round(len(files) * share)
    labelled += [(f, cls) for f in files[:k]]; rest += [(f, cls) for f in files[k:]]
rng.shuffle(rest)
def write(name, rows):
    with open(os.path.join(out, name), "w", newline="") as f:
        w = csv.writer(f); w.writerow(["path", "label"]); w.writerows(rows)
write("labelled.csv", labelled)
for pct in (25, 50, 100):
    write(f"pool-{pct}.csv", rest[:round(len(rest) * pct / 100)])
print(f"{len(labelled)} labelled tiles, {len(rest)} in the full pool")
PY
for name in labelled pool-25 pool-50 pool-100; do
    [ -d "$work/shards/$name" ] || "$bin" pack "$work/$name.csv" -o "$work/shards/$name" --magnification 10 $([ "$name" = labelled ] || echo --unlabeled) > /dev/null
done
[ -d "$work/shards/val" ] || "$bin" pack "$lung/val" -o "$work/shards/val" --magnification 10 > /dev/null
[ -d "$work/shards/colon" ] || "$bin" pack "$colon/train" -o "$work/shards/colon" --magnification 10 --unlabeled > /dev/null
data=(--set "data.train=$work/shards/labelled" --set "data.val=$work/shards/val" --set "run.seed=$seed")

log "teacher on the labelled part ($teacher_epochs epochs)"
# The shipped recipe (its warm-up is one epoch) with the weight average sized for the labelled part's steps per epoch.
per_epoch=$(( $(wc -l < "$work/labelled.csv") - 1 )); per_epoch=$(( per_epoch / 32 > 0 ? per_epoch / 32 : 1 ))
[ -f "$work/teacher/best.safetensors" ] || "$bin" train --config configs/teacher-lung-224.yaml "${data[@]}" \
    --set "train.epochs=$teacher_epochs" --set "run.output=$work/teacher" \
    --set "train.ema_decay=$(python3 -c "print(round(1 - 5 / ($teacher_epochs * $per_epoch), 4))")" 2>> "$work/log" | tail -1

# Student configs at 28 and 14 px (the shipped 28 px config; the 14 px one differs in its name and input factor).
sed 's/^  name: student-lung-28-distill/  name: student-28/' configs/student-lung-28-distill.yaml > "$work/student-28.yaml"
sed -e 's/^  name: student-lung-28-distill/  name: student-14/' -e 's/^  input_factor: 8/  input_factor: 16/' \
    configs/student-lung-28-distill.yaml > "$work/student-14.yaml"
# A fixed number of steps for every student, with a decay counted in those steps so that it is the same on every
# pool (an epoch-based decay would decay faster on small pools): SCHEDULE=cosine (default; a warm-up of 1/16 of the
# steps, then down to 1e-5) or SCHEDULE=constant (the first run's constant 1e-3).
case ${SCHEDULE:-cosine} in
    cosine) schedule=(--set schedule.name=cosine --set "schedule.warmup_steps=$(( steps / 16 ))" --set schedule.min_lr=0.00001) ;;
    constant) schedule=(--set schedule.gamma=1.0) ;;
    *) echo "SCHEDULE must be cosine or constant, got ${SCHEDULE}" >&2; exit 2 ;;
esac
fixed=(--set "train.max_steps=$steps" --set train.epochs=1000 "${schedule[@]}")
for pool in 0 25 50 100 colon; do
    unlabeled=()
    case $pool in 0) ;; colon) unlabeled=(--set "data.unlabeled=[$work/shards/colon]") ;; *) unlabeled=(--set "data.unlabeled=[$work/shards/pool-$pool]") ;; esac
    out=$work/distilled-$pool
    log "students at 28 and 14 px, unlabeled pool: $pool"
    [ -f "$out/student-14/best.safetensors" ] || "$bin" distill --config "$work/student-28.yaml" "$work/student-14.yaml" --runs-dir "$out" \
        "${data[@]}" "${unlabeled[@]}" "${fixed[@]}" --set "distill.teacher_run=$work/teacher" 2>> "$work/log" | grep -v "^teacher forwards" || true
done
log "from scratch on the labelled part, with labels"
for f in 8 16; do
    out=$work/scratch-$((224 / f))
    [ -f "$out/best.safetensors" ] || "$bin" train --config configs/baseline-lung-28.yaml "${data[@]}" --set "data.input_factor=$f" \
        "${fixed[@]}" --set "run.output=$out" 2>> "$work/log" | tail -1
done
# The table: val accuracy at the last step of every run (not the best of its validations), from metrics.jsonl.
printf "run\tsteps\tval_accuracy_last\tval_accuracy_best\n" > "$work/summary.tsv"
for run in "$work/teacher" "$work"/distilled-*/student-* "$work"/scratch-*; do
    python3 - "$run" "${run#$work/}" >> "$work/summary.tsv" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl")]
val = [l for l in lines if l.get("val_accuracy") is not None]
print(f"{sys.argv[2]}\t{lines[-1]['step']}\t{val[-1]['val_accuracy']:.4f}\t{max(l['val_accuracy'] for l in val):.4f}")
PY
done
column -t "$work/summary.tsv"
