// Heatmaps as images: a value grid drawn with the viridis colour map (the CKA matrix, MIL attention over a
// slide's tile grid), optionally blended over a picture of the slide.
import Foundation
import TileShards

/// Colour-mapped value grids.
public enum Heatmap {
    /// matplotlib's viridis at 9 evenly spaced stops (0 dark purple ... 1 yellow), interpolated linearly.
    static let viridis: [(Double, Double, Double)] = [
        (68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141), (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37),
    ]

    /// The viridis colour of `t` in [0, 1] (clamped).
    public static func colour(_ t: Double) -> (UInt8, UInt8, UInt8) {
        let x = min(max(t.isFinite ? t : 0, 0), 1) * Double(viridis.count - 1)
        let i = min(Int(x), viridis.count - 2), f = x - Double(i)
        let a = viridis[i], b = viridis[i + 1]
        func mix(_ u: Double, _ v: Double) -> UInt8 { UInt8((u + (v - u) * f).rounded()) }
        return (mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
    }

    /// `values` (rows x columns; nil cells drawn grey) as an image of `cell` x `cell` pixel squares, values mapped
    /// from `range` to viridis.
    public static func image(_ values: [[Double?]], cell: Int, range: ClosedRange<Double>) -> RGBImage {
        let rows = values.count, cols = values.map(\.count).max() ?? 0
        var px = [UInt8](repeating: 128, count: max(1, rows * cell) * max(1, cols * cell) * 3)
        let width = max(1, cols * cell)
        for r in 0..<rows {
            for c in 0..<values[r].count {
                guard let v = values[r][c] else { continue }
                let (R, G, B) = colour((v - range.lowerBound) / max(range.upperBound - range.lowerBound, 1e-12))
                for y in (r * cell)..<((r + 1) * cell) {
                    for x in (c * cell)..<((c + 1) * cell) {
                        let k = (y * width + x) * 3
                        px[k] = R; px[k + 1] = G; px[k + 2] = B
                    }
                }
            }
        }
        return RGBImage(width: width, height: max(1, rows * cell), pixels: px)
    }

    /// Attention over a slide's tiles blended on the slide: each tile's square (`tile` pixels at (x, y) of the
    /// slide, drawn at 1/`downscale`) gets the viridis colour of its attention relative to the slide's largest,
    /// blended half over `background` (the slide's own pixels at that scale), or over grey without one.
    public static func attention(x: [Int32], y: [Int32], attention: [Double], tile: Int, downscale: Int, background: RGBImage?) -> RGBImage {
        let width = background?.width ?? ((Int(x.max() ?? 0) + tile) / downscale)
        let height = background?.height ?? ((Int(y.max() ?? 0) + tile) / downscale)
        var px = background?.pixels ?? [UInt8](repeating: 200, count: width * height * 3)
        let top = max(attention.max() ?? 1, 1e-12)
        for i in attention.indices {
            let (R, G, B) = colour(attention[i] / top)
            let x0 = Int(x[i]) / downscale, y0 = Int(y[i]) / downscale, size = max(1, tile / downscale)
            for yy in max(0, y0)..<min(height, y0 + size) {
                for xx in max(0, x0)..<min(width, x0 + size) {
                    let k = (yy * width + xx) * 3
                    px[k] = UInt8((Int(px[k]) + Int(R)) / 2); px[k + 1] = UInt8((Int(px[k + 1]) + Int(G)) / 2); px[k + 2] = UInt8((Int(px[k + 2]) + Int(B)) / 2)
                }
            }
        }
        return RGBImage(width: width, height: height, pixels: px)
    }
}
