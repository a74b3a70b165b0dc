// `histodistill synth`: a small generated stand-in for an H&E tile dataset (ImageFolder train/ and val/), for
// trying the tool and for the quickstart when no real data is at hand. It is NOT histology: classes differ in
// the density, size and shape of dark "nuclei" on a pink background, which a CNN learns in a few epochs.
import ArgumentParser
import Foundation
import TensorCore
import TileShards

struct Synth: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generate a small synthetic tile dataset (ImageFolder train/ and val/, 3 classes) for trying histodistill without data.")

    @Argument(help: "Output directory, new or empty (gets train/CLASS/*.png and val/CLASS/*.png).")
    var output: String

    @Option(help: "Tile edge in pixels.")
    var size = 224

    @Option(help: "Training tiles per class.")
    var trainPerClass = 120

    @Option(help: "Validation tiles per class.")
    var valPerClass = 40

    @Option(help: "Seed of the generator.")
    var seed: UInt64 = 0

    func validate() throws {
        if !(16...4096).contains(size) { throw ValidationError("--size must be 16 to 4096 pixels, got \(size)") }
        for (flag, value) in [("--train-per-class", trainPerClass), ("--val-per-class", valPerClass)] where !(1...100_000).contains(value) {
            throw ValidationError("\(flag) must be 1 to 100000, got \(value)")
        }
    }

    func run() throws {
        let root = URL(fileURLWithPath: output)
        // Never write generated tiles among a user's files (a real ImageFolder would gain three fake classes).
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: root.path, isDirectory: &isDirectory) {
            guard isDirectory.boolValue else {
                throw CLIError("\(root.path) is a file, not a directory", hint: "give synth a new directory to create")
            }
            let present = (try? FileManager.default.contentsOfDirectory(atPath: root.path)) ?? []
            guard present.isEmpty else {
                throw CLIError("\(root.path) is not empty (\(present.count) entr\(present.count == 1 ? "y" : "ies"), e.g. \(present.sorted()[0]))",
                               hint: "give synth a new or empty directory; it does not write among existing files")
            }
        }
        let classes = ["sparse_round", "dense_large", "elongated"]
        var written = 0
        for (split, perClass) in [("train", trainPerClass), ("val", valPerClass)] {
            for (c, name) in classes.enumerated() {
                let folder = root.appendingPathComponent("\(split)/\(name)")
                do { try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true) } catch {
                    throw CLIError("\(folder.path): cannot be created (\(fileErrorReason(error)))", hint: "choose a writable output directory")
                }
                for i in 0..<perClass {
                    var g = SplitMix64.stream(seed, split == "train" ? 1 : 2, UInt64(c), UInt64(i))
                    try ImageCodec.writePNG(SyntheticTile.make(size: size, kind: c, using: &g), to: folder.appendingPathComponent(String(format: "%05d.png", i)))
                    written += 1
                }
            }
        }
        print("wrote \(written) synthetic \(size)x\(size) tiles of \(classes.count) classes (\(classes.joined(separator: ", "))) to \(root.path)/train and \(root.path)/val")
    }
}

/// Draws one tile: an eosin-pink background with texture, then purple haematoxylin blobs whose number, size
/// and elongation depend on the class.
enum SyntheticTile {
    static func make(size: Int, kind: Int, using g: inout SplitMix64) -> RGBImage {
        func u() -> Float { Float(g.next() >> 40) / Float(1 << 24) }
        var px = [Float](repeating: 0, count: size * size * 3)
        let base: [Float] = [0.90 + 0.05 * u(), 0.65 + 0.1 * u(), 0.80 + 0.05 * u()]
        for i in 0..<(size * size) {
            let n = (u() - 0.5) * 0.06
            for ch in 0..<3 { px[i * 3 + ch] = base[ch] + n }
        }
        let scale = Float(size) / 224
        let (count, radius, stretch): (Int, Float, Float)
        switch kind {
        case 0: (count, radius, stretch) = (18, 5, 1.1)
        case 1: (count, radius, stretch) = (55, 9, 1.2)
        default: (count, radius, stretch) = (30, 6, 2.8)
        }
        let blobs = Int(Float(count) * (0.8 + 0.4 * u()) * scale * scale) + 1
        for _ in 0..<blobs {
            let cx = u() * Float(size), cy = u() * Float(size)
            let r = radius * scale * (0.7 + 0.6 * u())
            let angle = u() * .pi
            let (ca, sa) = (cosf(angle), sinf(angle))
            let a = r * stretch, b = r
            let darkness = 0.6 + 0.3 * u()
            let reach = Int(a.rounded(.up)) + 1
            for y in max(0, Int(cy) - reach)..<min(size, Int(cy) + reach) {
                for x in max(0, Int(cx) - reach)..<min(size, Int(cx) + reach) {
                    let dx = Float(x) - cx, dy = Float(y) - cy
                    let p = (dx * ca + dy * sa) / a, q = (-dx * sa + dy * ca) / b
                    let d = p * p + q * q
                    guard d < 1 else { continue }
                    let w = darkness * (1 - d * d)
                    let i = (y * size + x) * 3
                    let nucleus: [Float] = [0.35, 0.2, 0.55]
                    for ch in 0..<3 { px[i + ch] = px[i + ch] * (1 - w) + nucleus[ch] * w }
                }
            }
        }
        let bytes = px.map { UInt8(max(0, min(255, ($0 * 255).rounded()))) }
        return RGBImage(width: size, height: size, pixels: bytes)
    }
}
