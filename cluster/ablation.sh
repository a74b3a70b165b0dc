#!/usr/bin/env bash
# Which of the recipe's options carry its gain (issue 18, item 1; docs/results.md): a model trained from scratch with
# labels at PX px, once with the whole recipe of configs/teacher-lung-224.yaml, once without each option in turn
# (leave one out; the values are read from that config), and once with none of them (the paper's settings, configs/baseline-lung-28.yaml at PX px). Every run
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
bin=${HISTODISTILL:-$(swift build -c release --show-bin-path)/histodistill}   # HISTODISTILL: another binary (a copy, while you rebuild)
log() { echo "$(date -u +%H:%M:%S) $*"; }

# The recipe's options: the keys each one sets; their values are read from the teacher config, the recipe as shipped.
recipe=configs/teacher-lung-224.yaml
declare -A option=(
    [schedule]="schedule.name schedule.warmup_epochs schedule.min_lr"
    [ema]="train.ema_decay"
    [crop]="augment.crop_scale"
    [hed]="augment.hed_jitter"
    [blur]="augment.blur_probability augment.blur_sigma"
    [smoothing]="train.label_smoothing"
)
value() { # section.key -> its value in $recipe (a two-level YAML mapping, one key per line)
    awk -v s="${1%%.*}" -v k="${1#*.}:" '/^[A-Za-z_]+:/ { sec = substr($1, 1, length($1) - 1) } sec == s && $1 == k { print $2; exit }' "$recipe"
}
names=(schedule ema crop hed blur smoothing)

if [ "$what" = summary ]; then
    python3 - "$work" <<'PY'
import statistics, sys
sys.path.insert(0, "cluster")
from run_accuracy import mean_sd, over_seeds
rows = over_seeds(sys.argv[1])
full = statistics.mean(x[2] for x in rows["recipe"]) if "recipe" in rows else 0
print("| variant | seeds | kept weights, % (mean ± sd) | per seed | last epoch, % | kept vs the whole recipe, points |")
print("|---|---|---|---|---|---|")
for name, v in rows.items():
    print(f"| {name} | {','.join(x[0] for x in v)} | {mean_sd([x[2] for x in v])} | " + ", ".join(f"{100 * x[2]:.2f}" for x in v)
          + f" | {mean_sd([x[1] for x in v])} | {100 * (statistics.mean(x[2] for x in v) - full):+.2f} |")
PY
    exit 0
fi

seed=$what
out=$work/seed-$seed
mkdir -p "$out"
common=(--set "data.train=$shards/train" --set "data.val=$shards/val" --set "data.input_factor=$((224 / px))"
        --set "run.seed=$seed" --set "train.epochs=$epochs")
[ -n "${THREADS:-}" ] && common+=(--set "train.threads=$THREADS")
sets() { for n in "$@"; do for k in ${option[$n]}; do v=$(value "$k"); printf -- "--set\n%s=%s\n" "$k" "${v:?$k not found in $recipe}"; done; done; }

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
