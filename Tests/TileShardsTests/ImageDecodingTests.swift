// Every decoding path gives the pixels the file holds, checked against Pillow (Tests/Fixtures/images.json, made by
// Tests/Fixtures/make_image_fixtures.py from the small files in Tests/Fixtures/images).
import Foundation
import Testing
@testable import TileShards

/// One case of images.json.
struct ImageFixture: Decodable {
    var width: Int?, height: Int?
    var pixels: [UInt8]?
    var tolerance: Int?
    var alpha: Bool?
    var orientation: Int?
    var error: String?

    var image: RGBImage { RGBImage(width: width!, height: height!, pixels: pixels!) }

    static let folder = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures")
    static func all() throws -> [String: ImageFixture] {
        try JSONDecoder().decode([String: ImageFixture].self, from: Data(contentsOf: folder.appendingPathComponent("images.json")))
    }
}

/// The largest channel difference between two images of the same size.
func largestDifference(_ a: RGBImage, _ b: RGBImage) -> Int {
    zip(a.pixels, b.pixels).map { abs(Int($0) - Int($1)) }.max() ?? 0
}

@Suite("Image decoding against Pillow")
struct ImageDecodingTests {
    @Test("16-bit RGB and grey PNG, PNG with gAMA chunks, RGBA/grey+alpha/palette PNG and RGBA TIFF, CMYK and plain JPEG: Pillow's pixels")
    func pixelsAsPillow() throws {
        let cases = try ImageFixture.all()
        var checked = 0
        for (name, fixture) in cases.sorted(by: { $0.key < $1.key }) where !name.contains(":") && fixture.pixels != nil && name != "v8" {
            let decoded = try ImageCodec.decodeFile(ImageFixture.folder.appendingPathComponent("images/\(name)"))
            let expected = fixture.image
            #expect(decoded.image.width == expected.width && decoded.image.height == expected.height, "\(name)")
            guard decoded.image.width == expected.width && decoded.image.height == expected.height else { continue }
            let d = largestDifference(decoded.image, expected)
            #expect(d <= fixture.tolerance ?? 0, "\(name): largest difference from Pillow \(d)")
            #expect(decoded.hadAlpha == (fixture.alpha ?? false), "\(name): alpha reported")
            #expect(decoded.orientation == (fixture.orientation ?? 1), "\(name): orientation tag")
            checked += 1
        }
        #expect(checked == 11)
    }

    @Test("a JPEG cut to 60% of its bytes is an error naming the file, not grey rows")
    func truncatedJPEG() throws {
        let url = ImageFixture.folder.appendingPathComponent("images/truncated.jpg")
        let e = #expect(throws: ShardError.self) { try ImageCodec.decode(url) }
        #expect(e?.message.contains("truncated.jpg") == true && e?.message.contains("truncated or damaged") == true, "\(e?.message ?? "")")
    }

    @Test("EXIF orientation: read in stored order by default; applied, every tag 2-8 as Pillow's exif_transpose")
    func orientation() throws {
        let cases = try ImageFixture.all()
        let stored = try ImageCodec.decodeFile(ImageFixture.folder.appendingPathComponent("images/orientation6.jpg"))
        #expect(stored.orientation == 6 && stored.image.width == 40 && stored.image.height == 48)
        let applied = ImageCodec.oriented(stored.image, stored.orientation)
        let expected = try #require(cases["orientation6.jpg:applied"]).image
        #expect(applied.width == 48 && applied.height == 40 && largestDifference(applied, expected) <= 2)
        let v8 = try #require(cases["v8"]).image
        for o in [2, 3, 4, 5, 7, 8] {
            #expect(ImageCodec.oriented(v8, o) == cases["orientation\(o):applied-to-v8"]!.image, "orientation \(o)")
        }
        #expect(ImageCodec.oriented(v8, 1) == v8)
    }

    @Test("pack: a truncated JPEG stops the pack naming it, or is skipped and counted; images with alpha are counted; --apply-orientation turns images")
    func packFaults() throws {
        let dir = try TemporaryDirectory()
        let cls = dir.url.appendingPathComponent("in/a")
        try FileManager.default.createDirectory(at: cls, withIntermediateDirectories: true)
        for name in ["plain.jpg", "truncated.jpg", "rgba.png", "orientation6.jpg"] {
            try FileManager.default.copyItem(at: ImageFixture.folder.appendingPathComponent("images/\(name)"), to: cls.appendingPathComponent(name))
        }
        let plan = try PackPlan.imageFolder(dir.url.appendingPathComponent("in"))
        let e = #expect(throws: ShardError.self) { try Packer.pack(plan, options: PackOptions(output: dir.url.appendingPathComponent("out"))) }
        #expect(e?.message.contains("truncated.jpg") == true && e?.message.contains("--skip-bad") == true)
        var options = PackOptions(output: dir.url.appendingPathComponent("skip"))
        options.skipBad = true
        let report = try Packer.pack(plan, options: options)
        #expect(report.tiles == 3 && report.skipped.count == 1 && report.alphaImages == 1 && report.orientedImages == 1)
        let r = try ShardReader(url: report.shards[0])
        let stored = try #require(r.entries.first { r.metadata.sources[Int($0.source)].hasSuffix("orientation6.jpg") })
        #expect(stored.width == 40 && stored.height == 48)
        options = PackOptions(output: dir.url.appendingPathComponent("turned"))
        options.skipBad = true
        options.applyOrientation = true
        let turned = try ShardReader(url: try Packer.pack(plan, options: options).shards[0])
        let t = try #require(turned.entries.first { turned.metadata.sources[Int($0.source)].hasSuffix("orientation6.jpg") })
        #expect(t.width == 48 && t.height == 40)
    }
}
