// evaluate's metrics against scikit-learn (Tests/Fixtures/metrics.json, generated once by a committed script).
import Foundation
import Testing
@testable import Training

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
