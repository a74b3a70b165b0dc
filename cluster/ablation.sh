#!/usr/bin/env bash
# Which of the recipe's options carry its gain (issue 18, item 1; docs/results.md): a model trained from scratch with
# labels at PX px, once with the whole recipe of configs/teacher-lung-224.yaml, once without each option in turn
# (leave one out), and once with none of them (the paper's settings, configs/baseline-lung-28.yaml at PX px). Every run
# is evaluated on the lung validation split. Run it once per seed, then `cluster/ablation.sh summary` for the table.
#
# Usage: cluster/ablation.sh SEED | summary
#   environment: WORK=runs/ablation, SHARDS=<dir with train/ and val/> (default runs/quickstart/shards),
#                PX=28 (input size: 224 / data.input_factor), EPOCHS=10, THREADS (train.threads, default: cores)
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:?usage: cluster/ablation.sh SEED | summary}
px=${PX:-28}
work=${WORK:-runs/ablation}/px-$px
shards=${SHARDS:-runs/quickstart/shards}
epochs=${EPOCHS:-10}
bin=$(swift build -c release --show-bin-path)/histodistill
log() { echo "$(date -u +%H:%M:%S) $*"; }

# The recipe's options, one --set list each (the values of configs/teacher-lung-224.yaml).
declare -A option=(
    [schedule]="schedule.name=cosine schedule.warmup_epochs=1 schedule.min_lr=0.00001"
    [ema]="train.ema_decay=0.998"
    [crop]="augment.crop_scale=0.7"
    [hed]="augment.hed_jitter=0.03"
    [blur]="augment.blur_probability=0.2 augment.blur_sigma=1.0"
    [smoothing]="train.label_smoothing=0.1"
)
names=(schedule ema crop hed blur smoothing)

if [ "$what" = summary ]; then
    python3 - "$work" <<'PY'
import csv, glob, os, statistics as st, sys
work = sys.argv[1]
rows = {}
for f in sorted(glob.glob(os.path.join(work, "seed-*", "summary.tsv"))):
    for r in csv.DictReader(open(f), delimiter="\t"):
        rows.setdefault(r["variant"], []).append((f.split(os.sep)[-2][5:], float(r["kept"]), float(r["last"])))
def fmt(xs):
    xs = [100 * x for x in xs]
    return f"{st.mean(xs):.2f} ± {st.stdev(xs):.2f}" if len(xs) > 1 else f"{xs[0]:.2f}"
full = st.mean(x[1] for x in rows.get("recipe", [("", 0, 0)]))
print("| variant | seeds | kept weights, % (mean ± sd) | per seed | last epoch, % | kept vs the whole recipe, points |")
print("|---|---|---|---|---|---|")
for name, v in rows.items():
    print(f"| {name} | {','.join(x[0] for x in v)} | {fmt([x[1] for x in v])} | " + ", ".join(f"{100 * x[1]:.2f}" for x in v)
          + f" | {fmt([x[2] for x in v])} | {100 * (st.mean(x[1] for x in v) - full):+.2f} |")
PY
    exit 0
fi

seed=$what
out=$work/seed-$seed
mkdir -p "$out"
common=(--set "data.train=$shards/train" --set "data.val=$shards/val" --set "data.input_factor=$((224 / px))"
        --set "run.seed=$seed" --set "train.epochs=$epochs")
[ -n "${THREADS:-}" ] && common+=(--set "train.threads=$THREADS")
sets() { for n in "$@"; do for kv in ${option[$n]}; do printf -- "--set\n%s\n" "$kv"; done; done; }

variants=(recipe)
for n in "${names[@]}"; do variants+=("without-$n"); done
variants+=(paper)
printf "variant\tlast\tbest\tkept\n" > "$out/summary.tsv"
for v in "${variants[@]}"; do
    case $v in
        recipe) keep=("${names[@]}") ;;
        paper) keep=() ;;
        without-*) keep=(); for n in "${names[@]}"; do [ "without-$n" = "$v" ] || keep+=("$n"); done ;;
    esac
    mapfile -t extra < <(sets "${keep[@]}")
    if [ ! -f "$out/$v/eval.json" ]; then
        log "seed $seed, $px px: $v (${keep[*]:-none of the options})"
        "$bin" train --config configs/baseline-lung-28.yaml "${common[@]}" "${extra[@]}" --set "run.output=$out/$v" 2>> "$out/log" | tail -1
        "$bin" evaluate --run "$out/$v" > /dev/null 2>> "$out/log"
    fi
    python3 cluster/run_accuracy.py "$out/$v" "$v" >> "$out/summary.tsv"
done
column -t "$out/summary.tsv"
