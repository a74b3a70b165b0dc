#!/usr/bin/env python3
"""Print a run's validation accuracies as 'last<TAB>best<TAB>kept': the last and the best epoch-end validation
(metrics.jsonl) and `histodistill evaluate` on the kept weights (eval.json). Usage: run_accuracy.py RUN_DIR [LABEL]
(with LABEL, the line starts with it)."""
import json
import sys

run = sys.argv[1]
val = [l for l in map(json.loads, open(run + "/metrics.jsonl")) if l.get("val_accuracy") is not None]
kept = json.load(open(run + "/eval.json"))["accuracy"]
fields = [f"{val[-1]['val_accuracy']:.4f}", f"{max(l['val_accuracy'] for l in val):.4f}", f"{kept:.4f}"]
print("\t".join(sys.argv[2:3] + fields))
