// `histodistill report`: a self-contained, well-formed HTML page with the run's curves and bootstrap intervals;
// `evaluate` writes the intervals into eval.json; metrics.jsonl lines carry their wall-clock time in one key order.
import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import Testing
@testable import HistoDistillCLI
@testable import Training

/// Collects element names while checking that a document is well-formed XML.
final class ElementCounter: NSObject, XMLParserDelegate {
    var counts: [String: Int] = [:]
    func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?, attributes: [String: String] = [:]) {
        counts[name, default: 0] += 1
    }
}

@Suite("Reports", .serialized)
struct ReportTests {
    @Test("TensorBoard event files: CRC-32C's check value; the writer's bytes equal the file TensorBoard's own writer made (read back by TensorBoard when it was made); records parse back")
    func tensorBoardEvents() throws {
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
        let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures/tensorboard")
        let expected = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: fixtures.appendingPathComponent("expected.json"))) as? [String: Any])
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-tb-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let writer = try TensorBoardWriter(directory: dir, wallTime: 1_764_460_800.0, name: "events.out.tfevents.test")
        for record in expected["records"] as! [[Any]] {
            let values = (record[2] as! [[Any]]).map { ($0[0] as! String, ($0[1] as! NSNumber).floatValue) }
            try writer.add(step: (record[1] as! NSNumber).intValue, scalars: values, wallTime: (record[0] as! NSNumber).doubleValue)
        }
        let mine = try Data(contentsOf: writer.url), theirs = try Data(contentsOf: fixtures.appendingPathComponent("events.out.tfevents.fixture"))
        #expect(mine == theirs, "\(mine.count) bytes vs TensorBoard's \(theirs.count)")
        let scalars = try TensorBoardWriter.scalars(in: writer.url)
        #expect(scalars.filter { $0.tag == "train/loss" }.map(\.step) == [1, 2, 3] && scalars.filter { $0.tag == "train/loss" }.map(\.value) == [1.25, 0.875, 0.625])
        // A damaged record is an error, not garbage.
        var damaged = theirs
        damaged[damaged.count - 6] ^= 0xFF
        #expect(throws: TrainingError.self) { try TFRecord.records(damaged) }
    }

    @Test("training curves break where a step has no value (it trained nothing), a lone point is a dot; a constant learning rate gets an axis around its value")
    func chartGaps() {
        let nan = Double.nan
        let svg = SVG.chart([("loss", [(1, 1.0), (2, 0.8), (3, nan), (4, nan), (5, 0.6), (6, 0.5), (7, nan), (8, 0.4)])], x: "step", y: "loss")
        #expect(svg.components(separatedBy: "<polyline").count - 1 == 2 && svg.components(separatedBy: "<circle").count - 1 == 1, "\(svg)")
        let flat = SVG.chart([("learning rate", [(1, 1e-3), (2, 1e-3), (3, 1e-3)])], x: "step", y: "learning rate")
        #expect(!flat.contains(">-0.5<") && !flat.contains(">0.5<"), "the axis spans 1e-3 ± 5e-4, not ±0.5")
    }

    @Test("progress in a log file (not a terminal): timestamped lines at HISTODISTILL_PROGRESS_SECONDS, the first and last always, never one per item")
    func progressInterval() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-progress-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        _ = try classShards(dir, name: "warm", classes: ["a", "b"], count: 20)   // 40 images in dir/in-warm
        let bin = try histodistillBinary()
        func packLines(_ seconds: String, _ out: String) throws -> [Substring] {
            let r = try run([bin, "pack", dir.appendingPathComponent("in-warm").path, "-o", dir.appendingPathComponent(out).path, "--threads", "1"],
                            environment: ["HISTODISTILL_PROGRESS_SECONDS": seconds])
            #expect(r.status == 0, "\(r.stderr)")
            return r.stderr.split(separator: "\n").filter { $0.contains(" packing ") }
        }
        // 40 images in batches of 16: updates after 16, 32 and 40.
        let every = try packLines("0", "a")
        #expect(every.count == 3 && every.allSatisfy { $0.first?.isNumber == true && $0.contains("T") && $0.contains("Z packing ") }, "\(every)")
        #expect(every.last?.contains("40/40 images (100%)") == true)
        let rare = try packLines("3600", "b")
        #expect(rare.count == 2 && rare[0].contains("16/40") && rare[1].contains("40/40"), "the first and the final line only: \(rare)")
        let bad = try run([bin, "pack", dir.appendingPathComponent("in-warm").path, "-o", dir.appendingPathComponent("c").path],
                          environment: ["HISTODISTILL_PROGRESS_SECONDS": "soon"])
        #expect(bad.status == 0 && bad.stderr.contains("HISTODISTILL_PROGRESS_SECONDS='soon' is not a number"), "\(bad.stderr)")
    }

    @Test("report of two runs: one self-contained well-formed HTML file (no scripts, no http references) with curves, confusion, ROC, PR, reliability and 95% intervals; eval.json holds the intervals")
    func htmlReport() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-report-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let shards = try classShards(dir, name: "shards", classes: ["a", "b", "c"])
        let bin = try histodistillBinary()
        for name in ["small", "wider"] {
            try """
            run: {output: \(dir.appendingPathComponent(name).path)}
            data: {train: \(shards.path), val: \(shards.path)}
            model: {planes: [\(name == "small" ? 32 : 64), 32], blocks: [1, 1]}
            train: {epochs: 2, batch_size: 6}
            """.write(to: dir.appendingPathComponent("\(name).yaml"), atomically: true, encoding: .utf8)
            let t = try run([bin, "train", "--config", dir.appendingPathComponent("\(name).yaml").path])
            #expect(t.status == 0, "\(t.stderr)")
            let e = try run([bin, "evaluate", "--run", dir.appendingPathComponent(name).path, "--bootstrap", "300"])
            #expect(e.status == 0 && e.stdout.contains("95% class-balanced bootstrap intervals (300 resamples)"), "\(e.stdout) \(e.stderr)")
        }
        let eval = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: dir.appendingPathComponent("small/eval.json"))) as? [String: Any])
        let b = try #require(eval["bootstrap"] as? [String: Any])
        #expect((b["iterations"] as? Int) == 300 && (b["accuracy"] as? [String: Any])?["lower"] != nil && (b["recall"] as? [Any])?.count == 3)
        // metrics.jsonl: wall-clock time on every line, keys in one order.
        let lines = try String(contentsOf: dir.appendingPathComponent("small/metrics.jsonl"), encoding: .utf8).split(separator: "\n")
        #expect(lines.count == 6 && lines.allSatisfy { $0.hasPrefix("{\"allreduce_ms\":") && $0.contains("\"time\":") })
        let steps = try lines.map { try JSONDecoder().decode(StepMetrics.self, from: Data($0.utf8)) }
        let times = try steps.map { try #require($0.time) }
        #expect(times == times.sorted() && abs(times[0] - Date().timeIntervalSince1970) < 600)
        // TensorBoard: the run's event file holds the same losses, and its validations.
        let events = try FileManager.default.contentsOfDirectory(atPath: dir.appendingPathComponent("small").path).filter { $0.hasPrefix("events.out.tfevents.") }
        #expect(events.count == 1)
        let scalars = try TensorBoardWriter.scalars(in: dir.appendingPathComponent("small/\(events[0])"))
        #expect(scalars.filter { $0.tag == "train/loss" }.map(\.value) == steps.map(\.loss))
        #expect(scalars.filter { $0.tag == "val/accuracy" }.count == steps.filter { $0.valAccuracy != nil }.count)

        let html = dir.appendingPathComponent("report.html")
        let r = try run([bin, "report", dir.appendingPathComponent("small").path, dir.appendingPathComponent("wider").path, "-o", html.path, "--bootstrap", "200"])
        #expect(r.status == 0, "\(r.stderr)")
        let text = try String(contentsOf: html, encoding: .utf8)
        #expect(!text.contains("http") && !text.contains("<script") && !text.contains("src=\"/") && !text.contains("href="), "self-contained")
        let counter = ElementCounter()
        let parser = XMLParser(data: Data(text.replacingOccurrences(of: "<!DOCTYPE html>", with: "").utf8))
        parser.delegate = counter
        #expect(parser.parse(), "well-formed: \(parser.parserError.map { "\($0)" } ?? "")")
        #expect((counter.counts["svg"] ?? 0) >= 2 * 7 + 1, "per run 4 training charts, confusion, ROC, PR, reliability; one comparison chart: \(counter.counts["svg"] ?? 0)")
        #expect(text.contains("Runs side by side") && text.contains("Accuracy against multiply-adds") && text.contains("ECE"))
        // The table's accuracy is the evaluated one, with its interval.
        let accuracy = try #require(eval["accuracy"] as? Double)
        #expect(text.contains(String(format: "%.2f", 100 * accuracy)))
        #expect(text.contains("200 resamples"))
        // A run without predictions is named with the command that makes them.
        try FileManager.default.removeItem(at: dir.appendingPathComponent("wider/predictions.csv"))
        let n = try run([bin, "report", dir.appendingPathComponent("wider").path, "-o", html.path, "--bootstrap", "0"])
        #expect(n.status == 0 && n.stdout.contains("histodistill evaluate --run"), "\(n.stdout)")
        // The intervals' settings come from a run that has them, not from the first run named.
        let order = try run([bin, "report", dir.appendingPathComponent("wider").path, dir.appendingPathComponent("small").path, "-o", html.path, "--bootstrap", "200"])
        let ordered = try String(contentsOf: html, encoding: .utf8)
        #expect(order.status == 0 && ordered.contains("200 resamples"), "\(order.stderr)")
        let missing = try run([bin, "report", dir.appendingPathComponent("nothing").path, "-o", html.path])
        #expect(missing.status != 0 && missing.stderr.contains("not a run directory"), "\(missing.stderr)")
    }
}
