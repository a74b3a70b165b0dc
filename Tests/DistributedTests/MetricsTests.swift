// evaluate's metrics against scikit-learn (Tests/Fixtures/metrics.json, generated once by a committed script).
import Foundation
import Testing
@testable import Training
import TileShards

@Suite("Metrics")
struct MetricsTests {
    @Test("accuracy, balanced accuracy, per-class P/R/F1, one-vs-rest AUC and confusion equal scikit-learn's")
    func againstScikitLearn() throws {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/metrics.json")
        let fixture = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
        let probs = (fixture["probabilities"] as! [[Any]]).map { $0.map { ($0 as! NSNumber).doubleValue } }
        let labels = (fixture["labels"] as! [Any]).map { ($0 as! NSNumber).intValue }
        let r = ClassificationReport.compute(probabilities: probs, labels: labels, classes: 3)
        func doubles(_ k: String) -> [Double] { (fixture[k] as! [Any]).map { ($0 as! NSNumber).doubleValue } }
        func close(_ a: [Double], _ b: [Double]) -> Bool { zip(a, b).allSatisfy { abs($0 - $1) < 1e-12 } && a.count == b.count }
        #expect(abs(r.accuracy - (fixture["accuracy"] as! NSNumber).doubleValue) < 1e-12)
        #expect(abs(r.balancedAccuracy - (fixture["balanced_accuracy"] as! NSNumber).doubleValue) < 1e-12)
        #expect(close(r.precision, doubles("precision")))
        #expect(close(r.recall, doubles("recall")))
        #expect(close(r.f1, doubles("f1")))
        #expect(r.support == doubles("support").map { Int($0) })
        #expect(close(r.auc.map { $0! }, doubles("auc")), "\(r.auc) vs \(doubles("auc"))")
        #expect(abs(r.macroAUC! - (fixture["macro_auc_ovr"] as! NSNumber).doubleValue) < 1e-12)
        #expect(r.confusion == (fixture["confusion"] as! [[Any]]).map { $0.map { ($0 as! NSNumber).intValue } })
    }

    @Test("AUC is undefined for a class that is absent or alone; unlabeled rows are skipped")
    func edgeCases() {
        #expect(ClassificationReport.rocAUC(scores: [0.1, 0.9], positive: [true, true]) == nil)
        #expect(ClassificationReport.rocAUC(scores: [0.1, 0.9], positive: [false, true]) == 1)
        #expect(ClassificationReport.rocAUC(scores: [0.5, 0.5], positive: [false, true]) == 0.5)
        let r = ClassificationReport.compute(probabilities: [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], labels: [0, -1, 0], classes: 2)
        #expect(r.samples == 2 && r.accuracy == 1 && r.auc[0] == nil && r.macroAUC == nil)
    }
}

@Suite("Report statistics")
struct ReportStatisticsTests {
    static let metrics = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures/metrics.json")
    static let report = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures/report.json")

    func inputs() throws -> ([[Double]], [Int]) {
        let fixture = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: Self.metrics)) as? [String: Any])
        return ((fixture["probabilities"] as! [[Any]]).map { $0.map { ($0 as! NSNumber).doubleValue } },
                (fixture["labels"] as! [Any]).map { ($0 as! NSNumber).intValue })
    }
    func reference() throws -> [String: Any] { try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: Self.report)) as? [String: Any]) }
    func doubles(_ v: Any?) -> [Double] { (v as! [Any]).map { ($0 as! NSNumber).doubleValue } }
    func interval(_ v: Any?) -> Interval? {
        guard let d = v as? [String: Any] else { return nil }
        return Interval(lower: (d["lower"] as! NSNumber).doubleValue, upper: (d["upper"] as! NSNumber).doubleValue)
    }
    func close(_ a: Interval?, _ b: Interval?) -> Bool {
        guard let a, let b else { return a == nil && b == nil }
        return abs(a.lower - b.lower) < 1e-9 && abs(a.upper - b.upper) < 1e-9
    }

    @Test("class-balanced bootstrap intervals equal the Python reference (same draws, scikit-learn's metrics), and are reproducible")
    func bootstrapIntervals() throws {
        let (p, y) = try inputs()
        let ref = try #require(try reference()["bootstrap"] as? [String: Any])
        let b = Bootstrap.intervals(probabilities: p, labels: y, classes: 3, iterations: 500, seed: 7)
        #expect(close(b.accuracy, interval(ref["accuracy"])), "\(b.accuracy) vs \(ref["accuracy"]!)")
        #expect(close(b.balancedAccuracy, interval(ref["balanced_accuracy"])))
        #expect(close(b.macroAUC, interval(ref["macro_auc"])))
        for (name, mine) in [("precision", b.precision), ("recall", b.recall), ("f1", b.f1), ("auc", b.auc)] {
            let theirs = (ref[name] as! [Any]).map(interval)
            #expect(zip(mine, theirs).allSatisfy { close($0, $1) }, "\(name): \(mine) vs \(theirs)")
        }
        let point = ClassificationReport.compute(probabilities: p, labels: y, classes: 3)
        #expect(b.accuracy.lower < point.accuracy + 0.05 && b.accuracy.upper > point.accuracy - 0.05 && b.accuracy.lower < b.accuracy.upper)
        #expect(Bootstrap.intervals(probabilities: p, labels: y, classes: 3, iterations: 500, seed: 7) == b)
        #expect(Bootstrap.intervals(probabilities: p, labels: y, classes: 3, iterations: 500, seed: 8) != b)
    }

    @Test("ROC and precision-recall curves and average precision equal scikit-learn's; reliability bins and ECE equal NumPy's")
    func curves() throws {
        let (p, y) = try inputs()
        let ref = try reference()
        func close(_ a: [Double], _ b: [Double]) -> Bool { a.count == b.count && zip(a, b).allSatisfy { abs($0 - $1) < 1e-12 } }
        for c in 0..<3 {
            let scores = p.map { $0[c] }, positive = y.map { $0 == c }
            let roc = Curves.roc(scores: scores, positive: positive)
            let r = (ref["roc"] as! [[String: Any]])[c]
            #expect(close(roc.fpr, doubles(r["fpr"])) && close(roc.tpr, doubles(r["tpr"])) && close(Array(roc.thresholds.dropFirst()), doubles(r["thresholds"])), "class \(c) ROC")
            let pr = Curves.precisionRecall(scores: scores, positive: positive)
            let q = (ref["pr"] as! [[String: Any]])[c]
            #expect(close(pr.precision, doubles(q["precision"])) && close(pr.recall, doubles(q["recall"])) && close(pr.thresholds, doubles(q["thresholds"])),
                    "class \(c) PR: \(pr.precision.count) vs \(doubles(q["precision"]).count)")
            #expect(abs(pr.averagePrecision - (q["average_precision"] as! NSNumber).doubleValue) < 1e-12)
        }
        let rel = Curves.reliability(probabilities: p, labels: y)
        let bins = ref["reliability"] as! [Any]
        #expect(rel.bins.count == 15)
        for (mine, theirs) in zip(rel.bins, bins) {
            if let t = theirs as? [String: Any], let m = mine {
                #expect(abs(m.confidence - (t["confidence"] as! NSNumber).doubleValue) < 1e-12 && abs(m.accuracy - (t["accuracy"] as! NSNumber).doubleValue) < 1e-12
                        && m.count == (t["count"] as! NSNumber).intValue)
            } else {
                #expect(mine == nil && theirs is NSNull)
            }
        }
        #expect(abs(rel.ece - (ref["ece"] as! NSNumber).doubleValue) < 1e-12)
    }
}

@Suite("CSV outputs")
struct CSVOutputTests {
    @Test("predictions.csv and slides.csv keep class and slide names with commas and quotes as one field each")
    func commasSurvive() throws {
        var p = Predictions()
        p.ids = [7]; p.slides = ["case 1, block \"A\""]; p.labels = [1]; p.probabilities = [[0.25, 0.75]]
        let classes = ["benign", "tumor, grade 2"]
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-csv-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let tiles = dir.appendingPathComponent("predictions.csv")
        try p.csv(classes: classes).write(to: tiles, atomically: true, encoding: .utf8)
        #expect(try CSVTable.read(tiles).map(\.fields) == [["tile_id", "slide", "label", "predicted", "p_benign", "p_tumor, grade 2"],
                                                           ["7", "case 1, block \"A\"", "tumor, grade 2", "tumor, grade 2", "0.250000", "0.750000"]])
        let slides = dir.appendingPathComponent("slides.csv")
        let s = SlidePrediction(slide: "case 1, block \"A\"", label: 0, probabilities: [0.9, 0.1], attention: [1], x: [0], y: [0])
        try SlidePrediction.slidesCSV([s], classes: classes).write(to: slides, atomically: true, encoding: .utf8)
        #expect(try CSVTable.read(slides).map(\.fields)[1] == ["case 1, block \"A\"", "benign", "benign", "0.900000", "0.100000"])
    }
}
