#!/usr/bin/env python3
"""How the errors of several models on the same tiles overlap (docs/results.md, issue 18).

Usage: shared_errors.py RUN_DIR [RUN_DIR ...]   (each with the predictions.csv of `histodistill evaluate` on one
shard set; the runs must have been evaluated on the same tiles)

Prints each run's accuracy, the accuracy of the ensemble (mean probabilities), how many tiles k of the N runs get
wrong for every k, the best accuracy any one of the runs could reach if every tile some run gets right were right
(the union), and the true -> predicted classes of the tiles every run gets wrong."""
import collections
import csv
import os
import sys


def read(run):
    rows = list(csv.DictReader(open(os.path.join(run, "predictions.csv"))))
    classes = [k[2:] for k in rows[0] if k.startswith("p_")]
    return classes, {r["tile_id"]: (r["label"], r["predicted"], [float(r["p_" + c]) for c in classes]) for r in rows}


def main(runs):
    data = [read(r) for r in runs]
    classes = data[0][0]
    tiles = sorted(data[0][1])
    if any(sorted(d[1]) != tiles or d[0] != classes for d in data):
        sys.exit("the runs were not evaluated on the same tiles with the same classes: evaluate them on one shard set first")
    n = len(tiles)
    wrong = collections.Counter()
    for run, (_, p) in zip(runs, data):
        errors = [t for t in tiles if p[t][1] != p[t][0]]
        wrong.update(errors)
        print(f"{run}: accuracy {1 - len(errors) / n:.4f} ({len(errors)} of {n} wrong)")
    ensemble = sum(1 for t in tiles
                   if classes[max(range(len(classes)), key=lambda c: sum(d[1][t][2][c] for d in data))] == data[0][1][t][0])
    print(f"ensemble of the {len(runs)} (mean probabilities): accuracy {ensemble / n:.4f}")
    hist = collections.Counter(wrong.values())
    print("tiles wrong in k of the runs: " + ", ".join(f"k={k}: {hist[k]}" for k in range(1, len(runs) + 1)))
    every = [t for t in tiles if wrong[t] == len(runs)]
    print(f"right in at least one run: {1 - len(every) / n:.4f} ({len(every)} tiles wrong in every run)")
    pairs = collections.Counter(f"{data[0][1][t][0]} -> {data[0][1][t][1]}" for t in every)
    print("wrong in every run (true -> first run's prediction): " + ", ".join(f"{k} {v}" for k, v in pairs.most_common()))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
