#!/usr/bin/env python3
"""Validation accuracies of runs, for the experiment scripts (frontier.sh, ablation.sh).

As a command: `run_accuracy.py RUN_DIR [LABEL]` prints 'last<TAB>best<TAB>kept' (with LABEL first when given): the
last and the best epoch-end validation (metrics.jsonl) and `histodistill evaluate` on the kept weights (eval.json).
As a module: `over_seeds(work)` reads every WORK/seed-*/summary.tsv those lines were collected into, and
`mean_sd(fractions)` formats accuracies as 'mean ± sd' in percent."""
import csv
import glob
import json
import os
import statistics
import sys


def accuracies(run):
    """(last, best, kept) validation accuracies of one run directory, as fractions."""
    val = [l for l in map(json.loads, open(os.path.join(run, "metrics.jsonl"))) if l.get("val_accuracy") is not None]
    kept = json.load(open(os.path.join(run, "eval.json")))["accuracy"]
    return val[-1]["val_accuracy"], max(l["val_accuracy"] for l in val), kept


def over_seeds(work):
    """{name: [(seed, last, kept)]} from WORK/seed-*/summary.tsv (first column: the run's name), in file order."""
    rows = {}
    for f in sorted(glob.glob(os.path.join(work, "seed-*", "summary.tsv"))):
        seed = os.path.basename(os.path.dirname(f))[len("seed-"):]
        for r in csv.reader(open(f), delimiter="\t"):
            if r[0] in ("run", "variant"):
                continue
            rows.setdefault(r[0], []).append((seed, float(r[1]), float(r[3])))
    return rows


def mean_sd(fractions):
    """'mean ± sd' in percent with two decimals (the value alone for one)."""
    xs = [100 * x for x in fractions]
    return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else f"{xs[0]:.2f}"


if __name__ == "__main__":
    print("\t".join(sys.argv[2:3] + [f"{x:.4f}" for x in accuracies(sys.argv[1])]))
