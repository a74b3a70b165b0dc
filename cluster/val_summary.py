#!/usr/bin/env python3
"""Validation accuracy of runs that differ only by seed: per run the best (the kept weights), the last and the mean of
the last 10 epoch-end validations, from metrics.jsonl; then their mean ± sd over the runs given.

Usage: python3 cluster/val_summary.py RUN_DIR [RUN_DIR ...]
"""
import json
import os
import statistics
import sys


def accuracies(run):
    path = os.path.join(run, "metrics.jsonl")
    if not os.path.exists(path):
        sys.exit(f"val_summary: {path}: no such file (is {run} a run directory that has trained?)")
    with open(path) as f:
        values = [json.loads(line).get("val_accuracy") for line in f if line.strip()]
    values = [100 * v for v in values if v is not None]
    if not values:
        sys.exit(f"val_summary: {path} has no validation yet")
    return max(values), values[-1], statistics.mean(values[-10:]), len(values)


def mean_sd(xs):
    return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else f"{xs[0]:.2f}"


def main(runs):
    if not runs:
        sys.exit(__doc__.strip())
    rows = [(run, *accuracies(run)) for run in runs]
    print("| run | validations | best (kept), % | last, % | mean of last 10, % |")
    print("|---|---|---|---|---|")
    for run, best, last, last10, n in rows:
        print(f"| {run} | {n} | {best:.2f} | {last:.2f} | {last10:.2f} |")
    print(f"| mean ± sd over {len(rows)} | | {mean_sd([r[1] for r in rows])} | {mean_sd([r[2] for r in rows])} | {mean_sd([r[3] for r in rows])} |")


if __name__ == "__main__":
    main(sys.argv[1:])
