// `histodistill report`: one self-contained HTML file per set of runs (inline SVG charts, embedded PNG heatmaps,
// no network): training curves, confusion matrix, ROC and precision-recall curves, reliability diagram with ECE, the
// metric table with class-balanced bootstrap 95% intervals, and for several runs a side-by-side table with accuracy
// against multiply-adds per tile.
import ArgumentParser
import Foundation
import Layers
import TileShards
import Training

/// What a report shows of one run directory.
struct RunSummary {
    var url: URL
    var name: String
    var metadata: RunMetadata?
    var config: RunConfig?
    var steps: [StepMetrics]
    /// "tile" (predictions.csv of `evaluate`) or "slide" (a MIL run's slides.csv or val-slides.csv).
    var level: String
    var predictionsFile: URL?
    var classes: [String]
    var probabilities: [[Double]]
    var labels: [Int]
    var report: ClassificationReport?
    var intervals: BootstrapIntervals?
    /// The reliability diagram and expected calibration error of the predictions (nil without labeled ones).
    var reliability: (bins: [Curves.Bin?], ece: Double)?
    /// Multiply-adds per tile of the model at its input size (nil for MIL heads).
    var macs: Int?
    var heatmaps: [URL]

    /// Reads `url`: run.json, config.yaml, metrics.jsonl, and the newest labeled predictions it holds.
    static func load(_ url: URL, iterations: Int, seed: UInt64) throws -> RunSummary {
        let run = RunDirectory(url)
        let fm = FileManager.default
        guard fm.fileExists(atPath: run.config.path) || fm.fileExists(atPath: url.appendingPathComponent("run.json").path) else {
            throw CLIError("\(url.path) is not a run directory (no config.yaml or run.json)", hint: "give directories written by train, distill, mil train or finetune")
        }
        // The report reads from the run's own files: none of them may be its output (a report is HTML).
        for name in (try? fm.contentsOfDirectory(atPath: url.path)) ?? [] where !name.hasSuffix(".html") { InputFiles.note(url.appendingPathComponent(name)) }
        let metadata = try? run.loadMetadata()
        let config = try? run.loadConfig()
        var steps: [StepMetrics] = []
        if let text = try? String(contentsOf: run.metricsJSONL, encoding: .utf8) {
            steps = text.split(separator: "\n").compactMap { try? JSONDecoder().decode(StepMetrics.self, from: Data($0.utf8)) }
        }
        var summary = RunSummary(url: url, name: url.lastPathComponent, metadata: metadata, config: config, steps: steps, level: "tile",
                                 predictionsFile: nil, classes: metadata?.classes ?? [], probabilities: [], labels: [], report: nil,
                                 intervals: nil, reliability: nil, macs: nil, heatmaps: [])
        if let m = metadata, let size = m.inputSize {
            summary.macs = ResNet(m.model, seed: 0).macs(resolution: size)
        }
        let candidates = [("predictions.csv", "tile"), ("slides.csv", "slide"), ("val-slides.csv", "slide")]
        if let (file, level) = candidates.first(where: { fm.fileExists(atPath: url.appendingPathComponent($0.0).path) }) {
            summary.level = level
            summary.predictionsFile = url.appendingPathComponent(file)
            let records: [(number: Int, fields: [String])]
            do { records = try CSVTable.read(url.appendingPathComponent(file)) } catch let e as ShardError { throw CLIError(e.message) }
            if let header = records.first?.fields, let labelColumn = header.firstIndex(of: "label") {
                let columns = header.indices.filter { header[$0].hasPrefix("p_") }
                summary.classes = columns.map { String(header[$0].dropFirst(2)) }
                for (_, f) in records.dropFirst() where f.count == header.count {
                    guard let y = summary.classes.firstIndex(of: f[labelColumn]) else { continue }
                    summary.probabilities.append(columns.map { Double(f[$0]) ?? 0 })
                    summary.labels.append(y)
                }
            }
            if !summary.labels.isEmpty {
                let k = summary.classes.count
                summary.report = ClassificationReport.compute(probabilities: summary.probabilities, labels: summary.labels, classes: k)
                summary.reliability = Curves.reliability(probabilities: summary.probabilities, labels: summary.labels)
                if iterations > 0 {
                    summary.intervals = Bootstrap.intervals(probabilities: summary.probabilities, labels: summary.labels, classes: k,
                                                            iterations: iterations, seed: seed)
                }
            }
        }
        let maps = url.appendingPathComponent("heatmaps")
        summary.heatmaps = ((try? fm.contentsOfDirectory(atPath: maps.path)) ?? []).filter { $0.hasSuffix(".png") }.sorted().prefix(8)
            .map { maps.appendingPathComponent($0) }
        return summary
    }
}

/// Small SVG charts with axes, ticks and legends (no scripts, no external references).
enum SVG {
    static let palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"]

    static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }

    static func number(_ v: Double) -> String {
        if v == 0 { return "0" }
        let a = abs(v)
        if a >= 1e4 || a < 1e-3 { return String(format: "%.1e", v) }
        return String(format: a >= 100 ? "%.0f" : "%.3g", v)
    }

    /// "Nice" tick values covering lo...hi.
    static func ticks(_ lo: Double, _ hi: Double, count: Int = 5) -> [Double] {
        guard hi > lo else { return [lo] }
        let raw = (hi - lo) / Double(count), mag = pow(10, floor(log10(raw)))
        let step = [1.0, 2, 5, 10].map { $0 * mag }.first { $0 >= raw } ?? raw
        var t = ceil(lo / step) * step, out: [Double] = []
        while t <= hi + step * 1e-9 { out.append(t); t += step }
        return out
    }

    /// A chart of `series` (name, points) as lines (or dots), with labelled axes; `logX` puts x on a log scale.
    static func chart(_ series: [(name: String, points: [(Double, Double)])], x xLabel: String, y yLabel: String, width: Int = 460,
                      height: Int = 260, dots: Bool = false, logX: Bool = false, yRange: ClosedRange<Double>? = nil,
                      xRange: ClosedRange<Double>? = nil, diagonal: Bool = false) -> String {
        let all = series.flatMap(\.points).filter { $0.0.isFinite && $0.1.isFinite && (!logX || $0.0 > 0) }
        guard !all.isEmpty else { return "<p class=\"note\">no data for \(escape(yLabel))</p>" }
        let fx: (Double) -> Double = logX ? { log10($0) } : { $0 }
        var x0 = xRange?.lowerBound ?? all.map { fx($0.0) }.min()!, x1 = xRange?.upperBound ?? all.map { fx($0.0) }.max()!
        var y0 = yRange?.lowerBound ?? all.map(\.1).min()!, y1 = yRange?.upperBound ?? all.map(\.1).max()!
        // A flat range is padded by half its value (0.5 around 0): a constant learning rate of 1e-3 stays readable.
        if x1 <= x0 { let d = x0 == 0 ? 0.5 : abs(x0) / 2; x0 -= d; x1 += d }
        if logX && xRange == nil { x0 -= 0.25; x1 += 0.25 }   // room for the dots at the ends
        if y1 <= y0 { let d = y0 == 0 ? 0.5 : abs(y0) / 2; y0 -= d; y1 += d }
        if yRange == nil { let pad = (y1 - y0) * 0.05; y0 -= pad; y1 += pad }
        let left = 58.0, right = 12.0, top = 10.0, bottom = 42.0
        let w = Double(width) - left - right, h = Double(height) - top - bottom
        func px(_ v: Double) -> Double { left + (fx(v) - x0) / (x1 - x0) * w }
        func py(_ v: Double) -> Double { top + (1 - (v - y0) / (y1 - y0)) * h }
        let columns = max(1, width / 220), legendRows = (series.count + columns - 1) / columns
        var s = "<svg width=\"\(width)\" height=\"\(height + 18 * legendRows)\" viewBox=\"0 0 \(width) \(height + 18 * legendRows)\" role=\"img\">"
        s += "<rect x=\"\(left)\" y=\"\(top)\" width=\"\(w)\" height=\"\(h)\" fill=\"#fff\" stroke=\"#999\"/>"
        let xt = logX ? stride(from: ceil(x0), through: floor(x1), by: 1).map { pow(10, $0) } : ticks(x0, x1)
        for t in xt {
            let x = logX ? left + (log10(t) - x0) / (x1 - x0) * w : px(t)
            s += "<line x1=\"\(x)\" y1=\"\(top)\" x2=\"\(x)\" y2=\"\(top + h)\" stroke=\"#eee\"/><text x=\"\(x)\" y=\"\(top + h + 14)\" text-anchor=\"middle\" class=\"tick\">\(number(t))</text>"
        }
        for t in ticks(y0, y1) {
            s += "<line x1=\"\(left)\" y1=\"\(py(t))\" x2=\"\(left + w)\" y2=\"\(py(t))\" stroke=\"#eee\"/><text x=\"\(left - 4)\" y=\"\(py(t) + 4)\" text-anchor=\"end\" class=\"tick\">\(number(t))</text>"
        }
        if diagonal { s += "<line x1=\"\(px(0))\" y1=\"\(py(0))\" x2=\"\(px(1))\" y2=\"\(py(1))\" stroke=\"#aaa\" stroke-dasharray=\"4 3\"/>" }
        s += "<text x=\"\(left + w / 2)\" y=\"\(top + h + 32)\" text-anchor=\"middle\" class=\"axis\">\(escape(xLabel))</text>"
        s += "<text x=\"14\" y=\"\(top + h / 2)\" text-anchor=\"middle\" class=\"axis\" transform=\"rotate(-90 14 \(top + h / 2))\">\(escape(yLabel))</text>"
        for (i, serie) in series.enumerated() {
            let colour = palette[i % palette.count]
            let pts = serie.points.filter { $0.0.isFinite && $0.1.isFinite && (!logX || $0.0 > 0) }
            if dots {
                for p in pts { s += "<circle cx=\"\(px(p.0))\" cy=\"\(py(p.1))\" r=\"4\" fill=\"\(colour)\"/>" }
                if logX, let p = pts.first {   // a labelled point per run
                    s += "<text x=\"\(px(p.0) + 7)\" y=\"\(py(p.1) - 6)\" class=\"legend\">\(escape(serie.name))</text>"
                }
            } else {
                // A point that is not a number (a step without a value) breaks the line; a lone point is a dot.
                var runs: [[(Double, Double)]] = [[]]
                for p in serie.points {
                    if p.0.isFinite && p.1.isFinite && (!logX || p.0 > 0) { runs[runs.count - 1].append(p) } else if !runs[runs.count - 1].isEmpty { runs.append([]) }
                }
                for run in runs where run.count == 1 { s += "<circle cx=\"\(px(run[0].0))\" cy=\"\(py(run[0].1))\" r=\"2\" fill=\"\(colour)\"/>" }
                for run in runs where run.count > 1 {
                    let path = run.map { String(format: "%.1f,%.1f", px($0.0), py($0.1)) }.joined(separator: " ")
                    s += "<polyline points=\"\(path)\" fill=\"none\" stroke=\"\(colour)\" stroke-width=\"1.6\"/>"
                }
            }
            let lx = 10 + Double(i % columns) * Double(width - 20) / Double(columns), ly = Double(height) + 14 + Double(i / columns) * 18
            s += "<rect x=\"\(lx)\" y=\"\(ly - 9)\" width=\"10\" height=\"10\" fill=\"\(colour)\"/><text x=\"\(lx + 14)\" y=\"\(ly)\" class=\"legend\">\(escape(serie.name))</text>"
        }
        return s + "</svg>"
    }

    /// A confusion matrix: counts, cells coloured by the row's share (viridis).
    static func confusion(_ m: [[Int]], classes: [String]) -> String {
        let cell = 56, left = 110, top = 90
        let n = classes.count
        var s = "<svg width=\"\(left + cell * n + 10)\" height=\"\(top + cell * n + 10)\" role=\"img\">"
        s += "<text x=\"\(left + cell * n / 2)\" y=\"14\" text-anchor=\"middle\" class=\"axis\">predicted</text>"
        for (j, c) in classes.enumerated() {
            s += "<text x=\"\(left + j * cell + cell / 2)\" y=\"\(top - 6)\" text-anchor=\"start\" transform=\"rotate(-45 \(left + j * cell + cell / 2) \(top - 6))\" class=\"tick\">\(escape(c))</text>"
            s += "<text x=\"\(left - 6)\" y=\"\(top + j * cell + cell / 2 + 4)\" text-anchor=\"end\" class=\"tick\">\(escape(c))</text>"
        }
        for i in 0..<n {
            let total = max(1, m[i].reduce(0, +))
            for j in 0..<n {
                let share = Double(m[i][j]) / Double(total)
                let (r, g, b) = Heatmap.colour(share)
                s += "<rect x=\"\(left + j * cell)\" y=\"\(top + i * cell)\" width=\"\(cell)\" height=\"\(cell)\" fill=\"rgb(\(r),\(g),\(b))\" stroke=\"#fff\"/>"
                s += "<text x=\"\(left + j * cell + cell / 2)\" y=\"\(top + i * cell + cell / 2 + 4)\" text-anchor=\"middle\" class=\"tick\" style=\"fill:\(share > 0.6 ? "#000" : "#fff")\">\(m[i][j])</text>"
            }
        }
        return s + "</svg>"
    }
}

/// The HTML page.
enum ReportPage {
    static let style = """
    body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1200px}
    h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}h3{font-size:15px;margin:16px 0 6px}
    table{border-collapse:collapse;font-size:13px;margin:6px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f4f4f4}
    td.l,th.l{text-align:left}.grid{display:flex;flex-wrap:wrap;gap:18px}.note{color:#666;font-size:13px}
    .tick{font-size:10px;fill:#444}.axis{font-size:11px;fill:#222}.legend{font-size:11px;fill:#222}img.map{max-width:280px;border:1px solid #ccc}
    """

    static func pct(_ v: Double) -> String { String(format: "%.2f", 100 * v) }
    static func ci(_ i: Interval?) -> String { i.map { "\(pct($0.lower))–\(pct($0.upper))" } ?? "–" }

    static func render(_ runs: [RunSummary], generated: String) -> String {
        var h = "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/><title>histodistill report</title><style>\(style)</style></head><body>"
        h += "<h1>histodistill report: \(runs.map { SVG.escape($0.name) }.joined(separator: ", "))</h1>"
        // The intervals' settings from the first run that has intervals (a run without predictions has none).
        let intervals = runs.lazy.compactMap(\.intervals).first
        h += "<p class=\"note\">\(SVG.escape(generated)). " + (intervals.map { "Intervals: 95% class-balanced bootstrap (percentile), \($0.iterations) resamples, seed \($0.seed)." } ?? "No intervals (no run has labeled predictions).") + "</p>"
        if runs.count > 1 { h += comparison(runs) }
        for (i, r) in runs.enumerated() { h += section(r, index: i) }
        return h + "</body></html>\n"
    }

    static func comparison(_ runs: [RunSummary]) -> String {
        var h = "<h2>Runs side by side</h2><table><tr><th class=\"l\">run</th><th class=\"l\">objective</th><th>input px</th><th>multiply-adds / tile</th><th>level</th><th>n</th><th>accuracy %</th><th>95% CI</th><th>balanced acc. %</th><th>95% CI</th><th>macro AUC</th><th>ECE</th></tr>"
        for r in runs {
            let rep = r.report
            h += "<tr><td class=\"l\">\(SVG.escape(r.name))</td><td class=\"l\">\(SVG.escape(r.metadata?.objective ?? (r.level == "slide" ? "mil" : "–")))</td>"
            h += "<td>\(r.metadata?.inputSize.map(String.init) ?? "–")</td><td>\(r.macs.map { SVG.number(Double($0)) } ?? "–")</td><td>\(r.level)</td>"
            h += "<td>\(rep?.samples ?? 0)</td><td>\(rep.map { pct($0.accuracy) } ?? "–")</td><td>\(ci(r.intervals?.accuracy))</td>"
            h += "<td>\(rep.map { pct($0.balancedAccuracy) } ?? "–")</td><td>\(ci(r.intervals?.balancedAccuracy))</td>"
            h += "<td>\(rep?.macroAUC.map { String(format: "%.4f", $0) } ?? "–")</td>"
            h += "<td>\(r.reliability.map { String(format: "%.4f", $0.ece) } ?? "–")</td></tr>"
        }
        h += "</table>"
        let points = runs.compactMap { r -> (String, [(Double, Double)])? in
            guard let m = r.macs, let a = r.report?.accuracy else { return nil }
            return (r.name, [(Double(m), 100 * a)])
        }
        if points.count > 1 {
            h += "<h3>Accuracy against multiply-adds per tile (log scale)</h3>"
            h += SVG.chart(points.map { (name: $0.0, points: $0.1) }, x: "multiply-adds per tile", y: "accuracy %", width: 560, height: 300, dots: true, logX: true)
        }
        return h
    }

    static func section(_ r: RunSummary, index: Int) -> String {
        var h = "<h2 id=\"run\(index)\">\(SVG.escape(r.name))</h2>"
        // Summary of what the run is.
        h += "<table>"
        func row(_ k: String, _ v: String) { h += "<tr><th class=\"l\">\(SVG.escape(k))</th><td class=\"l\">\(SVG.escape(v))</td></tr>" }
        row("directory", r.url.path)
        if let m = r.metadata {
            row("model", m.model.description)
            row("objective", m.objective + (m.teacherRun.map { " (teacher \($0))" } ?? ""))
            row("classes", m.classes.joined(separator: ", "))
            row("input", "\(m.inputSize.map { "\($0) px" } ?? "?") (tiles \(m.tileSize.map { "\($0) px" } ?? "?") / \(m.inputFactor))" + (m.inputMicronsPerPixel.map { String(format: ", %.3g µm/px", $0) } ?? ""))
            row("program", m.program)
        }
        if let c = r.config {
            row("training", "\(c.epochs) epochs, batch \(c.batchSize), \(c.optimizer.rawValue) lr \(c.lr), schedule \(c.schedule.rawValue), seed \(c.seed)")
            if c.isDistillation {
                row("distillation", "kd \(c.objective.kdWeight) (T \(c.objective.temperature)), pixel \(c.objective.pixelWeight) (\(c.objective.pixelResize), \(c.objective.pixelNorm)), ce \(c.objective.crossEntropyWeight)")
            }
        }
        if let m = r.macs { row("multiply-adds per tile", SVG.number(Double(m))) }
        if let f = r.predictionsFile { row("predictions", f.lastPathComponent + " (\(r.labels.count) labeled \(r.level)s)") }
        h += "</table>"
        // Training curves.
        if !r.steps.isEmpty {
            h += "<h3>Training</h3><div class=\"grid\">"
            // Steps that trained nothing have no loss: NaN points break the curves there.
            var losses: [(name: String, points: [(Double, Double)])] = []
            for (name, key) in [("loss", \StepMetrics.loss), ("kd", \StepMetrics.kdLoss), ("pixel", \StepMetrics.pixelLoss), ("ce", \StepMetrics.ceLoss)] {
                let pts = r.steps.map { s in (Double(s.step), s[keyPath: key].map(Double.init) ?? .nan) }
                if name == "loss" || pts.contains(where: { $0.1.isFinite }) { losses.append((name, pts)) }
            }
            h += SVG.chart(losses, x: "step", y: "loss (per term, unweighted)")
            let val = r.steps.compactMap { s in s.valAccuracy.map { (Double(s.step), 100 * $0) } }
            if !val.isEmpty { h += SVG.chart([("validation accuracy", val)], x: "step", y: "validation accuracy %", dots: val.count < 3) }
            h += SVG.chart([("learning rate", r.steps.map { (Double($0.step), $0.lr) })], x: "step", y: "learning rate")
            h += SVG.chart([("images/s", r.steps.map { (Double($0.step), $0.imagesPerSecond ?? .nan) })], x: "step", y: "images per second")
            h += "</div>"
        }
        guard let rep = r.report, let rel = r.reliability else {
            return h + "<p class=\"note\">No labeled predictions in this run directory: run <code>histodistill evaluate --run \(SVG.escape(r.url.path))</code> (or <code>mil evaluate</code>) first.</p>"
        }
        // Metrics with intervals.
        let iv = r.intervals
        h += "<h3>\(r.level == "slide" ? "Slide" : "Tile")-level metrics (\(rep.samples) \(r.level)s)</h3>"
        h += "<table><tr><th class=\"l\">metric</th><th>value %</th><th>95% CI</th></tr>"
        h += "<tr><td class=\"l\">accuracy</td><td>\(pct(rep.accuracy))</td><td>\(ci(iv?.accuracy))</td></tr>"
        h += "<tr><td class=\"l\">balanced accuracy</td><td>\(pct(rep.balancedAccuracy))</td><td>\(ci(iv?.balancedAccuracy))</td></tr>"
        if let a = rep.macroAUC { h += "<tr><td class=\"l\">macro AUC (one vs rest)</td><td>\(pct(a))</td><td>\(ci(iv?.macroAUC))</td></tr>" }
        h += "</table><table><tr><th class=\"l\">class</th><th>n</th><th>precision %</th><th>95% CI</th><th>recall %</th><th>95% CI</th><th>F1 %</th><th>95% CI</th><th>AUC %</th><th>95% CI</th></tr>"
        for (c, name) in r.classes.enumerated() {
            h += "<tr><td class=\"l\">\(SVG.escape(name))</td><td>\(rep.support[c])</td><td>\(pct(rep.precision[c]))</td><td>\(ci(iv?.precision[c]))</td>"
            h += "<td>\(pct(rep.recall[c]))</td><td>\(ci(iv?.recall[c]))</td><td>\(pct(rep.f1[c]))</td><td>\(ci(iv?.f1[c]))</td>"
            h += "<td>\(rep.auc[c].map(pct) ?? "–")</td><td>\(ci(iv?.auc[c]))</td></tr>"
        }
        h += "</table>"
        // Pictures: confusion, ROC, PR, reliability.
        h += "<div class=\"grid\"><div><h3>Confusion matrix (rows true)</h3>\(SVG.confusion(rep.confusion, classes: r.classes))</div>"
        var roc: [(name: String, points: [(Double, Double)])] = [], pr: [(name: String, points: [(Double, Double)])] = []
        for (c, name) in r.classes.enumerated() {
            let scores = r.probabilities.map { $0[c] }, positive = r.labels.map { $0 == c }
            guard positive.contains(true) && positive.contains(false) else { continue }
            let curve = Curves.roc(scores: scores, positive: positive)
            roc.append(("\(name) (AUC \(String(format: "%.3f", rep.auc[c] ?? 0)))", Array(zip(curve.fpr, curve.tpr))))
            let p = Curves.precisionRecall(scores: scores, positive: positive)
            pr.append(("\(name) (AP \(String(format: "%.3f", p.averagePrecision)))", Array(zip(p.recall, p.precision))))
        }
        h += "<div><h3>ROC, one class vs rest (macro AUC \(rep.macroAUC.map { String(format: "%.3f", $0) } ?? "–"))</h3>"
        h += SVG.chart(roc, x: "false positive rate", y: "true positive rate", width: 360, height: 300, yRange: 0...1, xRange: 0...1, diagonal: true) + "</div>"
        h += "<div><h3>Precision-recall</h3>" + SVG.chart(pr, x: "recall", y: "precision", width: 360, height: 300, yRange: 0...1, xRange: 0...1) + "</div>"
        let bins = rel.bins.compactMap { $0 }
        h += "<div><h3>Reliability (ECE \(String(format: "%.4f", rel.ece)), 15 bins)</h3>"
        h += SVG.chart([("accuracy per confidence bin", bins.map { ($0.confidence, $0.accuracy) })], x: "confidence (top probability)", y: "accuracy",
                       width: 360, height: 300, dots: true, yRange: 0...1, xRange: 0...1, diagonal: true) + "</div></div>"
        if !r.heatmaps.isEmpty {
            h += "<h3>Attention heatmaps (first \(r.heatmaps.count))</h3><div class=\"grid\">"
            for url in r.heatmaps {
                guard let data = try? Data(contentsOf: url) else { continue }
                h += "<figure><img class=\"map\" alt=\"\(SVG.escape(url.lastPathComponent))\" src=\"data:image/png;base64,\(data.base64EncodedString())\"/><figcaption class=\"note\">\(SVG.escape(url.deletingPathExtension().lastPathComponent))</figcaption></figure>"
            }
            h += "</div>"
        }
        return h
    }
}

struct Report: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write one self-contained HTML report of runs: curves, confusion, ROC, precision-recall, calibration, bootstrap intervals; several runs side by side.",
        discussion: "Each run directory needs labeled predictions for its metrics: predictions.csv from `histodistill evaluate`, or slides.csv / val-slides.csv of a MIL run.")

    @Argument(help: "Run directories (train, distill, mil train, finetune).")
    var runs: [String]

    @Option(name: .shortAndLong, help: "The HTML file to write.")
    var output: String = "report.html"

    @Option(help: "Bootstrap resamples for the 95% intervals (0: none).")
    var bootstrap = 10_000

    @Option(help: "Seed of the bootstrap draws.")
    var seed: UInt64 = 0

    func validate() throws {
        if !(0...1_000_000).contains(bootstrap) { throw ValidationError("--bootstrap must be 0 to 1000000 resamples (10000 is usual), got \(bootstrap)") }
    }

    func run() throws {
        let out = URL(fileURLWithPath: output)
        try checkWritable(out)
        let summaries = try runs.map { try RunSummary.load(URL(fileURLWithPath: $0), iterations: bootstrap, seed: seed) }
        let html = ReportPage.render(summaries, generated: "histodistill \(histodistillVersion), \(ISO8601DateFormatter().string(from: Date()))")
        try writeOutput(Data(html.utf8), to: out)
        for s in summaries where s.report == nil { print("note: \(s.url.path) has no labeled predictions; run `histodistill evaluate --run \(s.url.path)` first for its metrics") }
        print("wrote \(out.path) (\(html.utf8.count / 1024) KB, \(summaries.count) run(s))")
    }
}
