#!/usr/bin/env python3
"""Generates report.json for the report's statistics, from the probabilities and labels of metrics.json:
class-balanced bootstrap intervals (the same SplitMix64 draws as Training/Bootstrap.swift, metrics by
scikit-learn), ROC and precision-recall curves and average precision per class (scikit-learn), and the reliability
diagram with the expected calibration error (15 equal-width bins of the top probability, computed with NumPy).

Run once with scikit-learn installed; the output is committed:
    python3 Tests/Fixtures/make_report_fixtures.py Tests/Fixtures/report.json
"""
import json, os, sys
import numpy as np
from sklearn.metrics import (accuracy_score, average_precision_score, balanced_accuracy_score,
                             precision_recall_curve, precision_recall_fscore_support, roc_auc_score, roc_curve)

M = (1 << 64) - 1
here = os.path.dirname(os.path.abspath(__file__))
fixture = json.load(open(os.path.join(here, 'metrics.json')))
probs = np.array(fixture['probabilities']); labels = np.array(fixture['labels']); k = fixture['classes']
n = len(labels)


class SplitMix64:
    def __init__(self, seed): self.state = seed
    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & M
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
        return z ^ (z >> 31)


def bootstrap(iterations, seed, level=0.95):
    per_class = np.bincount(labels, minlength=k)
    present = int((per_class > 0).sum())
    cumulative, total = [], 0.0
    for y in labels:
        total += 1 / (float(present) * float(per_class[y]))
        cumulative.append(total)
    cumulative = np.array(cumulative)
    g = SplitMix64(seed)
    acc, bal, macro = [], [], []
    prec, rec, f1, auc = ([[] for _ in range(k)] for _ in range(4))
    for _ in range(iterations):
        idx = []
        for _ in range(n):
            u = float(g.next() >> 11) * 2.0 ** -53 * total
            idx.append(int(np.searchsorted(cumulative, u, side='right')))
        p, y = probs[idx], labels[idx]
        pred = p.argmax(1)
        acc.append(accuracy_score(y, pred)); bal.append(balanced_accuracy_score(y, pred))
        pr, rc, f, s = precision_recall_fscore_support(y, pred, labels=list(range(k)), zero_division=0)
        aucs = []
        for c in range(k):
            if s[c] == 0:
                continue
            rec[c].append(rc[c])
            if (pred == c).any():
                prec[c].append(pr[c]); f1[c].append(f[c])
            if s[c] < len(y):
                a = roc_auc_score(y == c, p[:, c]); auc[c].append(a); aucs.append(a)
        if aucs:
            macro.append(float(np.mean(aucs)))
    q = [100 * (1 - level) / 2, 100 * (1 + level) / 2]
    iv = lambda v: None if not v else dict(zip(['lower', 'upper'], np.percentile(v, q).tolist()))
    return dict(iterations=iterations, seed=seed, level=level, accuracy=iv(acc), balanced_accuracy=iv(bal), macro_auc=iv(macro),
                precision=[iv(v) for v in prec], recall=[iv(v) for v in rec], f1=[iv(v) for v in f1], auc=[iv(v) for v in auc])


out = {'bootstrap': bootstrap(500, 7), 'roc': [], 'pr': []}
for c in range(k):
    fpr, tpr, thr = roc_curve(labels == c, probs[:, c], drop_intermediate=False)
    out['roc'].append(dict(fpr=fpr.tolist(), tpr=tpr.tolist(), thresholds=thr[1:].tolist()))
    pr, rc, thr = precision_recall_curve(labels == c, probs[:, c])
    out['pr'].append(dict(precision=pr.tolist(), recall=rc.tolist(), thresholds=thr.tolist(),
                          average_precision=average_precision_score(labels == c, probs[:, c])))
conf = probs.max(1); correct = (probs.argmax(1) == labels).astype(float)
bins = np.clip(np.ceil(conf * 15).astype(int) - 1, 0, 14)
rel, ece = [], 0.0
for b in range(15):
    m = bins == b
    if not m.any():
        rel.append(None); continue
    rel.append(dict(confidence=float(conf[m].mean()), accuracy=float(correct[m].mean()), count=int(m.sum())))
    ece += m.sum() / n * abs(correct[m].mean() - conf[m].mean())
out['reliability'] = rel; out['ece'] = float(ece)
dest = sys.argv[1] if len(sys.argv) > 1 else 'report.json'
json.dump(out, open(dest, 'w'), indent=None, separators=(',', ':'))
print('wrote', dest)
