#!/usr/bin/env python3
"""Generates metrics.json: class probabilities and labels with scikit-learn's metrics, for `evaluate`'s tests.

Run once with scikit-learn installed; the output is committed:
    python3 Tests/Fixtures/make_metrics_fixtures.py Tests/Fixtures/metrics.json
"""
import json, sys
import numpy as np
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix,
                             precision_recall_fscore_support, roc_auc_score)

rng = np.random.default_rng(11)
n, k = 80, 3
logits = rng.normal(size=(n, k)) * 1.5
labels = rng.integers(0, k, size=n)
logits[np.arange(n), labels] += 1.0          # informative but imperfect
logits = np.round(logits, 1)                 # ties in scores
probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
pred = probs.argmax(1)
p, r, f, s = precision_recall_fscore_support(labels, pred, labels=list(range(k)), zero_division=0)
auc = [roc_auc_score(labels == c, probs[:, c]) for c in range(k)]
out = {
    "probabilities": probs.tolist(), "labels": labels.tolist(), "classes": k,
    "accuracy": accuracy_score(labels, pred), "balanced_accuracy": balanced_accuracy_score(labels, pred),
    "precision": p.tolist(), "recall": r.tolist(), "f1": f.tolist(), "support": s.tolist(),
    "auc": auc, "macro_auc": float(np.mean(auc)),
    "macro_auc_ovr": roc_auc_score(labels, probs, multi_class="ovr", average="macro"),
    "confusion": confusion_matrix(labels, pred, labels=list(range(k))).tolist(),
}
dest = sys.argv[1] if len(sys.argv) > 1 else "metrics.json"
json.dump(out, open(dest, "w"))
print(f"wrote {dest}")
