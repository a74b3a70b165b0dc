#!/usr/bin/env bash
# The main job end to end on one machine: set up, build, check the machine, pack a dataset into shards, train
# a teacher at 224 px, distill 56 px and 28 px students from it in one pass without labels, evaluate all three, apply the student to
# unlabeled tiles from its weights file alone; then slides in, slide-level answers and heatmaps out (GlaS images as
# slides through patch features and attention-MIL, and real whole-slide images through OpenSlide); and print the cost table. Training runs as RANKS MPI ranks (default 2, or 1 on a 1-core machine): on small machines several
# ranks with one thread each are faster than one process with several threads (docs/benchmarks.md).
#
# Usage: cluster/quickstart.sh [DATA_ROOT]
#   DATA_ROOT holds train/CLASS/* and val/CLASS/* images (default ../shared/data/lc25000-lung). Without it, a
#   small synthetic dataset is generated instead (NOT histology; it only shows the pipeline working).
# Environment: TEACHER_EPOCHS (default 2) and STUDENT_EPOCHS (default 2) keep the run short (about 3.5 minutes
# after the build on 2 AVX-512 cores with LC25000 lung; longer on CPUs without AVX-512, see README); FULL=1 uses the shipped configs' 10 epochs each (docs/results.md).
# WORK_DIR (default runs/quickstart) receives shards and runs; its runs are replaced on each call.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data/lc25000-lung}
work=${WORK_DIR:-runs/quickstart}
bash cluster/setup.sh
swift build -c release
bin=$(swift build -c release --show-bin-path)/histodistill
# OpenBLAS kernels: histodistill picks the best family this CPU and library allow (a user's OPENBLAS_CORETYPE is kept).
ranks=${RANKS:-$(( $(nproc) >= 2 ? 2 : 1 ))}
if [ "${FULL:-0}" = 1 ]; then epochs_t=(); epochs_s=(); else
    # A short teacher run: the shipped config's one-epoch warm-up and 500-step weight average are sized for 10
    # epochs; a tenth of an epoch of warm-up and a 50-step average fit 2 (the run warns when the average is too long).
    epochs_t=(--set "train.epochs=${TEACHER_EPOCHS:-2}" --set schedule.warmup_epochs=0.1 --set train.ema_decay=0.98)
    epochs_s=(--set "train.epochs=${STUDENT_EPOCHS:-2}"); fi

echo "== histodistill doctor"
"$bin" doctor

mkdir -p "$work"
if [ -d "$data/train" ] && [ -d "$data/val" ]; then
    echo "== data: $data"
    source=$data
    magnification=(--magnification 10)
else
    echo "== data: $data/train and $data/val not found. Generating a SMALL SYNTHETIC dataset instead (not histology:"
    echo "   it only shows the pipeline working; give a data root with train/ and val/ as the first argument for real results)"
    rm -rf "$work/synthetic"
    "$bin" synth "$work/synthetic" --train-per-class 200 --val-per-class 50
    source=$work/synthetic
    magnification=()
fi

echo "== pack train and val into $work/shards"
rm -rf "$work/shards"
"$bin" pack "$source/train" -o "$work/shards/train" "${magnification[@]}"
"$bin" pack "$source/val" -o "$work/shards/val" "${magnification[@]}"
"$bin" inspect "$work/shards/train"
"$bin" verify "$work/shards/train" "$work/shards/val"
echo "== normalisation statistics (1,000-tile sample)"
"$bin" stats "$work/shards/train" --max-tiles 1000
"$bin" bench-pipeline "$work/shards/train" --workers "$(nproc)" --steps 5

data_flags=(--set "data.train=$work/shards/train" --set "data.val=$work/shards/val")
student=$work/student-lung-56-distill student28=$work/student-lung-28-distill
rm -rf "$work/teacher" "$work/student" "$student" "$student28"
echo "== train the teacher at 224 px (configs/teacher-lung-224.yaml), $ranks rank(s)"
bash cluster/mpirun-local.sh "$ranks" "$bin" train --config configs/teacher-lung-224.yaml "${data_flags[@]}" "${epochs_t[@]}" --set "run.output=$work/teacher"
echo "== distill 56 px and 28 px students from it in one pass (one teacher forward per batch), without labels, $ranks rank(s)"
echo "   (configs/student-lung-56-distill.yaml and configs/student-lung-28-distill.yaml; each run goes to $work/<run.name>)"
bash cluster/mpirun-local.sh "$ranks" "$bin" distill --config configs/student-lung-56-distill.yaml configs/student-lung-28-distill.yaml \
    --runs-dir "$work" "${data_flags[@]}" "${epochs_s[@]}" --set "distill.teacher_run=$work/teacher"
echo "== evaluate on the validation shards"
"$bin" evaluate --run "$work/teacher"
"$bin" evaluate --run "$student"
"$bin" evaluate --run "$student28"
echo "== apply the student to new, unlabeled tiles with its weights file alone (it describes its classes, normalisation and input size)"
rm -rf "$work/shards/new"
"$bin" pack "$source/val" -o "$work/shards/new" --unlabeled "${magnification[@]}"
"$bin" predict --weights "$student/best.safetensors" --shards "$work/shards/new" -o "$student/new-tiles.csv"
head -3 "$student/new-tiles.csv"
glas=${GLAS_ROOT:-../shared/data/glas/train}
wsi=${WSI_ROOT:-../shared/data/wsi}
if [ -d "$glas" ]; then
    echo "== slides in, slide-level answers and heatmaps out (HistoTransfer): GlaS colon biopsies, each image a slide (benign/malignant)"
    echo "   128 px tiles -> the teacher cut after stage 3 as a frozen patch-feature extractor -> attention-MIL, fold 0 of 5 held out"
    rm -rf "$work/shards/glas" "$work/features" "$work/mil"
    "$bin" pack "$glas" -o "$work/shards/glas" --tile-size 128
    "$bin" extract --run "$work/teacher" --truncate-after 3 --shards "$work/shards/glas" -o "$work/features/glas"
    "$bin" mil train --config configs/mil-glas.yaml --set "data.train=$work/features/glas" --set "run.output=$work/mil"
    "$bin" mil predict --run "$work/mil" --features "$work/features/glas" -o "$work/mil/glas-slides.csv" \
        --heatmaps "$work/mil/heatmaps" --shards "$work/shards/glas" --downscale 2
    echo "   held-out fold (slide, label, predicted, probabilities):"
    head -4 "$work/mil/val-slides.csv"
    if [ -f "$wsi/CMU-1-Small-Region.svs" ]; then
        echo "== whole-slide images through OpenSlide: an Aperio SVS and a pyramidal TIFF (no µm/px in the file: given in the"
        echo "   manifest), tiled at GlaS's 0.62 µm/px with tissue detection, then the GlaS head's answer and heatmap per slide"
        echo "   (a skin slide under a colon model: this shows the pipeline, not a diagnosis)"
        mkdir -p "$work/slides"
        printf 'path,label,slide,mpp\n%s,skin,CMU-1-svs,\n%s,skin,CMU-1-tiff,0.499\n' \
            "$(realpath "$wsi/CMU-1-Small-Region.svs")" "$(realpath "$wsi/CMU-1-Small-Region.generic-tiled-pyramid.tiff")" > "$work/slides/manifest.csv"
        rm -rf "$work/shards/wsi" "$work/features/wsi"
        "$bin" pack "$work/slides/manifest.csv" -o "$work/shards/wsi" --tile-size 128 --tile-mpp 0.62
        "$bin" extract --run "$work/teacher" --truncate-after 3 --shards "$work/shards/wsi" -o "$work/features/wsi"
        "$bin" mil predict --run "$work/mil" --features "$work/features/wsi" -o "$work/mil/wsi-slides.csv" \
            --heatmaps "$work/mil/wsi-heatmaps" --shards "$work/shards/wsi" --downscale 2
        cat "$work/mil/wsi-slides.csv"
    fi
else
    echo "== $glas not found: the slide-level part (extract, mil, heatmaps) is skipped"
fi
echo "== one HTML report of the runs (curves, confusion, ROC, PR, calibration, 95% bootstrap intervals; open it in a browser)"
report_runs=("$work/teacher" "$student" "$student28")
if [ -f "$work/mil/val-slides.csv" ]; then report_runs+=("$work/mil"); fi
"$bin" report "${report_runs[@]}" -o "$work/report.html"
echo "== model cost: the paper's teacher at 224 px and students at 112, 56, 28, 14 px"
"$bin" cost
echo "== done: runs in $work/teacher, $student and $student28 (metrics.csv, eval.json, predictions.csv, best.safetensors);"
echo "   slide-level answers in $work/mil (val-slides.csv, glas-slides.csv, wsi-slides.csv) and heatmaps in $work/mil/heatmaps, $work/mil/wsi-heatmaps;"
echo "   the report: $work/report.html"
