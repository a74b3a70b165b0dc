// Classification metrics from class probabilities: accuracy, balanced accuracy, per-class precision, recall
// and F1, one-vs-rest ROC AUC per class and macro, confusion matrix (scikit-learn's definitions).

/// Metrics over labeled samples.
public struct ClassificationReport: Codable, Equatable, Sendable {
    public var samples: Int
    public var accuracy: Double
    /// Mean recall over classes that occur.
    public var balancedAccuracy: Double
    public var precision: [Double]
    public var recall: [Double]
    public var f1: [Double]
    public var support: [Int]
    /// One-vs-rest ROC AUC per class (nil where a class is absent or the only one present).
    public var auc: [Double?]
    /// Mean of the defined per-class AUCs.
    public var macroAUC: Double?
    /// confusion[true][predicted].
    public var confusion: [[Int]]

    enum CodingKeys: String, CodingKey {
        case samples, accuracy, balancedAccuracy = "balanced_accuracy", precision, recall, f1, support, auc
        case macroAUC = "macro_auc", confusion
    }

    /// Computes the report; rows of `probabilities` sum to 1, `labels` in 0..<classes (negative labels are skipped).
    public static func compute(probabilities: [[Double]], labels: [Int], classes: Int) -> ClassificationReport {
        precondition(probabilities.count == labels.count, "ClassificationReport: \(probabilities.count) rows but \(labels.count) labels")
        let rows = zip(probabilities, labels).filter { $0.1 >= 0 }
        var confusion = Array(repeating: Array(repeating: 0, count: classes), count: classes)
        for (p, y) in rows {
            var best = 0
            for j in 1..<classes where p[j] > p[best] { best = j }   // first maximum, like numpy's argmax
            confusion[y][best] += 1
        }
        let n = rows.count
        let correct = (0..<classes).reduce(0) { $0 + confusion[$1][$1] }
        var precision: [Double] = [], recall: [Double] = [], f1: [Double] = [], support: [Int] = []
        for c in 0..<classes {
            let tp = Double(confusion[c][c])
            let predicted = Double((0..<classes).reduce(0) { $0 + confusion[$1][c] })
            let actual = Double(confusion[c].reduce(0, +))
            let p = predicted > 0 ? tp / predicted : 0, r = actual > 0 ? tp / actual : 0
            precision.append(p); recall.append(r); f1.append(p + r > 0 ? 2 * p * r / (p + r) : 0)
            support.append(Int(actual))
        }
        let present = (0..<classes).filter { support[$0] > 0 }
        let balanced = present.isEmpty ? 0 : present.map { recall[$0] }.reduce(0, +) / Double(present.count)
        var auc: [Double?] = []
        for c in 0..<classes {
            let scores = rows.map { $0.0[c] }, positive = rows.map { $0.1 == c }
            auc.append(rocAUC(scores: scores, positive: positive))
        }
        let defined = auc.compactMap { $0 }
        return ClassificationReport(samples: n, accuracy: n > 0 ? Double(correct) / Double(n) : 0, balancedAccuracy: balanced,
                                    precision: precision, recall: recall, f1: f1, support: support, auc: auc,
                                    macroAUC: defined.isEmpty ? nil : defined.reduce(0, +) / Double(defined.count), confusion: confusion)
    }

    /// ROC AUC as the Mann-Whitney statistic with tied scores counted one half (equal to the trapezoidal ROC area).
    public static func rocAUC(scores: [Double], positive: [Bool]) -> Double? {
        let pos = positive.filter { $0 }.count, neg = positive.count - pos
        guard pos > 0 && neg > 0 else { return nil }
        let order = scores.indices.sorted { scores[$0] < scores[$1] }
        var rankSum = 0.0
        var i = 0
        while i < order.count {
            var j = i
            while j + 1 < order.count && scores[order[j + 1]] == scores[order[i]] { j += 1 }
            let averageRank = Double(i + j) / 2 + 1
            for k in i...j where positive[order[k]] { rankSum += averageRank }
            i = j + 1
        }
        return (rankSum - Double(pos) * Double(pos + 1) / 2) / (Double(pos) * Double(neg))
    }
}
