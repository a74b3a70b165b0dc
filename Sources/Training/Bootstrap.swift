// Confidence intervals by class-balanced bootstrap (as DiPalma et al. 2021 report them), and the curves a report
// draws: ROC and precision-recall per class (scikit-learn's definitions) and the reliability diagram with the
// expected calibration error (Guo et al. 2017).
import Foundation
import TensorCore

/// A two-sided percentile interval.
public struct Interval: Codable, Equatable, Sendable {
    public var lower: Double, upper: Double
}

/// 95% (or `level`) bootstrap intervals of a classification report's metrics.
public struct BootstrapIntervals: Codable, Equatable, Sendable {
    public var method = "class-balanced weighted resampling, percentile intervals"
    public var iterations: Int
    public var seed: UInt64
    public var level: Double
    public var accuracy: Interval
    public var balancedAccuracy: Interval
    public var macroAUC: Interval?
    /// Per class (nil where the metric was undefined in every resample).
    public var precision: [Interval?], recall: [Interval?], f1: [Interval?], auc: [Interval?]

    enum CodingKeys: String, CodingKey {
        case method, iterations, seed, level, accuracy, balancedAccuracy = "balanced_accuracy", macroAUC = "macro_auc"
        case precision, recall, f1, auc
    }
}

public enum Bootstrap {
    /// Class-balanced bootstrap: each of `iterations` resamples draws as many samples as there are labeled rows,
    /// with replacement, sample i with probability 1 / (classes present x rows of its class) (every class equally
    /// likely, as the paper's class-balanced weighted resampling), and recomputes the report; the interval is the
    /// (1 - level) / 2 and (1 + level) / 2 percentiles (linear interpolation, NumPy's default) of the values a metric
    /// took. Draws: SplitMix64(seed); u = next() >> 11 as a 53-bit fraction; the sample is the first whose
    /// cumulative weight exceeds u (reproduced in Tests/Fixtures/make_report_fixtures.py).
    public static func intervals(probabilities: [[Double]], labels: [Int], classes: Int, iterations: Int = 10_000,
                                 seed: UInt64 = 0, level: Double = 0.95) -> BootstrapIntervals {
        let rows = labels.indices.filter { labels[$0] >= 0 }
        var perClass = [Int](repeating: 0, count: classes)
        for i in rows { perClass[labels[i]] += 1 }
        let present = perClass.filter { $0 > 0 }.count
        var cumulative: [Double] = []
        var total = 0.0
        for i in rows {
            total += 1 / (Double(present) * Double(perClass[labels[i]]))
            cumulative.append(total)
        }
        var g = SplitMix64(seed: seed)
        var acc: [Double] = [], bal: [Double] = [], macro: [Double] = []
        var prec = [[Double]](repeating: [], count: classes), rec = prec, f1 = prec, auc = prec
        var p = [[Double]](repeating: [], count: rows.count), y = [Int](repeating: 0, count: rows.count)
        for _ in 0..<iterations {
            for k in 0..<rows.count {
                let u = Double(g.next() >> 11) * 0x1p-53 * total
                var lo = 0, hi = cumulative.count - 1
                while lo < hi { let mid = (lo + hi) / 2; if cumulative[mid] > u { hi = mid } else { lo = mid + 1 } }
                p[k] = probabilities[rows[lo]]; y[k] = labels[rows[lo]]
            }
            let r = ClassificationReport.compute(probabilities: p, labels: y, classes: classes)
            acc.append(r.accuracy); bal.append(r.balancedAccuracy)
            if let m = r.macroAUC { macro.append(m) }
            for c in 0..<classes where r.support[c] > 0 {
                rec[c].append(r.recall[c])
                let predicted = (0..<classes).reduce(0) { $0 + r.confusion[$1][c] }
                if predicted > 0 { prec[c].append(r.precision[c]); f1[c].append(r.f1[c]) }
                if let a = r.auc[c] { auc[c].append(a) }
            }
        }
        func interval(_ v: [Double]) -> Interval? {
            guard !v.isEmpty else { return nil }
            let s = v.sorted()
            return Interval(lower: percentile(s, (1 - level) / 2), upper: percentile(s, (1 + level) / 2))
        }
        return BootstrapIntervals(iterations: iterations, seed: seed, level: level, accuracy: interval(acc)!, balancedAccuracy: interval(bal)!,
                                  macroAUC: interval(macro), precision: prec.map(interval), recall: rec.map(interval),
                                  f1: f1.map(interval), auc: auc.map(interval))
    }

    /// The `q` quantile of sorted values, linearly interpolated (numpy.percentile's default).
    public static func percentile(_ sorted: [Double], _ q: Double) -> Double {
        let x = q * Double(sorted.count - 1)
        let i = Int(x.rounded(.down)), f = x - Double(i)
        return i + 1 < sorted.count ? sorted[i] + (sorted[i + 1] - sorted[i]) * f : sorted[i]
    }
}

/// Curves of one class against the rest, and calibration.
public enum Curves {
    /// Distinct scores in descending order with the true- and false-positive counts at or above each
    /// (scikit-learn's `_binary_clf_curve`).
    static func counts(scores: [Double], positive: [Bool]) -> (tps: [Double], fps: [Double], thresholds: [Double]) {
        let order = scores.indices.sorted { scores[$0] > scores[$1] }
        var tps: [Double] = [], fps: [Double] = [], thresholds: [Double] = []
        var tp = 0.0, fp = 0.0
        for (k, i) in order.enumerated() {
            if positive[i] { tp += 1 } else { fp += 1 }
            if k + 1 == order.count || scores[order[k + 1]] != scores[i] {
                tps.append(tp); fps.append(fp); thresholds.append(scores[i])
            }
        }
        return (tps, fps, thresholds)
    }

    /// ROC curve as `sklearn.metrics.roc_curve(y, scores, drop_intermediate=False)`: (0, 0) first (threshold
    /// +infinity), then one point per distinct score, descending.
    public static func roc(scores: [Double], positive: [Bool]) -> (fpr: [Double], tpr: [Double], thresholds: [Double]) {
        let (tps, fps, thresholds) = counts(scores: scores, positive: positive)
        let p = max(tps.last ?? 0, 1e-300), n = max(fps.last ?? 0, 1e-300)
        return ([0] + fps.map { $0 / n }, [0] + tps.map { $0 / p }, [.infinity] + thresholds)
    }

    /// Precision-recall curve as `sklearn.metrics.precision_recall_curve` (ascending thresholds; the last point is
    /// precision 1, recall 0) and the average precision Σ (R_n - R_n-1) P_n (`average_precision_score`).
    public static func precisionRecall(scores: [Double], positive: [Bool]) -> (precision: [Double], recall: [Double], thresholds: [Double], averagePrecision: Double) {
        let (tps, fps, thresholds) = counts(scores: scores, positive: positive)
        let total = tps.last ?? 0
        let precision = zip(tps, fps).map { $0 + $1 > 0 ? $0 / ($0 + $1) : 0 }
        let recall = tps.map { total > 0 ? $0 / total : 0 }
        var ap = 0.0, previous = 0.0
        for (p, r) in zip(precision, recall) { ap += (r - previous) * p; previous = r }
        return (precision.reversed() + [1], recall.reversed() + [0], thresholds.reversed(), ap)
    }

    /// One bin of a reliability diagram.
    public struct Bin: Codable, Equatable, Sendable {
        /// Mean confidence (top probability), fraction correct, and samples in the bin.
        public var confidence: Double, accuracy: Double, count: Int
    }

    /// The reliability diagram over `bins` equal-width bins of the top-class probability, (lo, hi] each (the first
    /// includes 0), and the expected calibration error Σ (n_b / N) |accuracy_b - confidence_b| (Guo et al. 2017).
    public static func reliability(probabilities: [[Double]], labels: [Int], bins: Int = 15) -> (bins: [Bin?], ece: Double) {
        var conf = [Double](repeating: 0, count: bins), correct = conf, count = [Int](repeating: 0, count: bins)
        var n = 0
        for (p, y) in zip(probabilities, labels) where y >= 0 {
            var best = 0
            for j in p.indices where p[j] > p[best] { best = j }
            let b = min(bins - 1, max(0, Int((p[best] * Double(bins)).rounded(.up)) - 1))
            conf[b] += p[best]; correct[b] += best == y ? 1 : 0; count[b] += 1; n += 1
        }
        var ece = 0.0
        let out = (0..<bins).map { b -> Bin? in
            guard count[b] > 0 else { return nil }
            let bin = Bin(confidence: conf[b] / Double(count[b]), accuracy: correct[b] / Double(count[b]), count: count[b])
            ece += Double(count[b]) / Double(max(n, 1)) * abs(bin.accuracy - bin.confidence)
            return bin
        }
        return (out, ece)
    }
}
