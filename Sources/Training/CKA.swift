// Linear centered kernel alignment (Kornblith et al. 2019, "Similarity of Neural Network Representations
// Revisited"): how alike two models' representations of the same tiles are, per stage, for HistoTransfer's
// frozen-vs-fine-tuned analysis and for a teacher at high resolution vs its low-resolution student.
import Foundation
import Layers
import TensorCore
import TileShards

/// Linear CKA between representations.
public enum CKA {
    /// Linear CKA of X (n, p) and Y (n, q), rows the same n examples, row-major:
    /// ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F) with column-centred X_c, Y_c (Kornblith et al. 2019,
    /// eq. for linear kernels). 1 for identical representations; invariant to orthogonal transforms and isotropic
    /// scaling of either; in [0, 1]. Accumulated in Double. Returns 0 when either representation is constant.
    public static func linear(_ x: [Double], _ y: [Double], n: Int) -> Double {
        precondition(n > 1 && x.count % n == 0 && y.count % n == 0, "CKA.linear: \(x.count) and \(y.count) values do not hold \(n) rows")
        let p = x.count / n, q = y.count / n
        func centred(_ m: [Double], _ d: Int) -> [Double] {
            var out = m
            for j in 0..<d {
                var mean = 0.0
                for i in 0..<n { mean += m[i * d + j] }
                mean /= Double(n)
                for i in 0..<n { out[i * d + j] -= mean }
            }
            return out
        }
        let xc = centred(x, p), yc = centred(y, q)
        // Cross products a^T b (d1 x d2), then the squared Frobenius norm.
        func crossNorm2(_ a: [Double], _ d1: Int, _ b: [Double], _ d2: Int) -> Double {
            var c = [Double](repeating: 0, count: d1 * d2)
            for i in 0..<n {
                for r in 0..<d1 {
                    let v = a[i * d1 + r]
                    if v == 0 { continue }
                    for s in 0..<d2 { c[r * d2 + s] += v * b[i * d2 + s] }
                }
            }
            return c.reduce(0) { $0 + $1 * $1 }
        }
        let xy = crossNorm2(xc, p, yc, q), xx = crossNorm2(xc, p, xc, p), yy = crossNorm2(yc, q, yc, q)
        guard xx > 0 && yy > 0 else { return 0 }
        return xy / (xx.squareRoot() * yy.squareRoot())
    }

    /// Each stage's globally average-pooled output, (tiles, C_s) as Double, for the tiles of `dataset` at `indices`,
    /// prepared with `settings` (each model at its own input factor and normalisation).
    public static func stageRepresentations(model: ResNet, dataset: ShardDataset, settings: InferenceSettings, indices: [Int]) throws -> [[Double]] {
        var stages: [[Double]] = []
        _ = try Inference.forEachBatch(model: model, dataset: dataset, settings: settings, range: nil, indices: indices) { b, _, _ in
            let maps = model.stageOutputs()
            if stages.isEmpty { stages = Array(repeating: [], count: maps.count) }
            for (s, m) in maps.enumerated() {
                let shape = m.nchw, plane = shape.h * shape.w
                for i in 0..<shape.n {
                    for c in 0..<shape.c {
                        let base = m.data + (i * shape.c + c) * plane
                        var sum = 0.0
                        for k in 0..<plane { sum += Double(base[k]) }
                        stages[s].append(sum / Double(plane))
                    }
                }
            }
            _ = b
        }
        return stages
    }

    /// The stage-by-stage CKA matrix (rows: stages of `a`, columns: stages of `b`) on the same tiles.
    public static func matrix(_ a: [[Double]], _ b: [[Double]], n: Int) -> [[Double]] {
        a.map { x in b.map { y in linear(x, y, n: n) } }
    }
}
