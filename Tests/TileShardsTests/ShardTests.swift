// Shards: round trips, determinism, corruption and truncation always detected, bad images reported by path.
import Foundation
import Testing
import TensorCore
@testable import TileShards

/// A temporary directory removed at the end of the test.
final class TemporaryDirectory {
    let url: URL
    init() throws {
        url = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(at: url) }
}

/// A deterministic image with smooth structure and noise (so compression is neither trivial nor impossible).
func syntheticImage(width: Int, height: Int, seed: Int) -> RGBImage {
    var pixels = [UInt8](repeating: 0, count: width * height * 3)
    var state = UInt32(truncatingIfNeeded: seed &* 2654435761 &+ 1)
    for y in 0..<height {
        for x in 0..<width {
            state = state &* 1664525 &+ 1013904223
            let noise = Int(state >> 28)
            pixels[(y * width + x) * 3] = UInt8((x * 3 + seed * 17 + noise) & 255)
            pixels[(y * width + x) * 3 + 1] = UInt8((y * 5 + noise) & 255)
            pixels[(y * width + x) * 3 + 2] = UInt8(((x ^ y) + seed) & 255)
        }
    }
    return RGBImage(width: width, height: height, pixels: pixels)
}

/// Writes an ImageFolder of PNGs: classes "benign" (3 images) and "tumor" (4 images), one 20x12 image.
func makeImageFolder(_ root: URL) throws -> [String: RGBImage] {
    var images: [String: RGBImage] = [:]
    for (cls, n) in [("tumor", 4), ("benign", 3)] {
        let dir = root.appendingPathComponent(cls)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        for i in 0..<n {
            let img = i == 1 && cls == "tumor" ? syntheticImage(width: 20, height: 12, seed: 99) : syntheticImage(width: 16, height: 16, seed: i + cls.count)
            try ImageCodec.writePNG(img, to: dir.appendingPathComponent("t\(i).png"))
            images["\(cls)/t\(i).png"] = img
        }
    }
    return images
}

@Suite("Tile shards")
struct ShardTests {
    @Test("CRC-32 matches zlib's check value")
    func crc() {
        #expect(CRC32.checksum(Array("123456789".utf8)) == 0xCBF4_3926)
        // zlib's word-at-a-time paths equal the bit-by-bit definition at every length, offset and split.
        func reference(_ bytes: ArraySlice<UInt8>) -> UInt32 {
            var c: UInt32 = 0xFFFF_FFFF
            for b in bytes {
                c ^= UInt32(b)
                for _ in 0..<8 { c = (c & 1) != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
            }
            return ~c
        }
        var g = SplitMix64(seed: 11)
        let data = (0..<5000).map { _ in UInt8(truncatingIfNeeded: g.next()) }
        for offset in 0..<9 {
            for length in [0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 200, 1023, 4099] {
                let slice = data[offset..<(offset + length)]
                let fast = slice.withUnsafeBytes { CRC32.checksum($0.baseAddress!, count: $0.count) }
                #expect(fast == reference(slice), "offset \(offset) length \(length)")
                let split = length / 3
                let chained = slice.withUnsafeBytes { b in
                    CRC32.checksum(b.baseAddress! + split, count: length - split, crc: CRC32.checksum(b.baseAddress!, count: split))
                }
                #expect(chained == fast)
            }
        }
    }

    @Test("planar-delta filter: decode undoes encode on every size, rows not a multiple of four and one-pixel rows included, and matches the row-by-row definition")
    func planarDelta() {
        var g = SplitMix64(seed: 12)
        for (width, height) in [(1, 1), (1, 7), (5, 1), (13, 6), (224, 224), (17, 9)] {
            let rgb = (0..<(width * height * 3)).map { _ in UInt8(truncatingIfNeeded: g.next()) }
            var filtered = [UInt8](repeating: 0, count: rgb.count), back = [UInt8](repeating: 7, count: rgb.count)
            rgb.withUnsafeBufferPointer { Filters.encode($0.baseAddress!, width: width, height: height, into: &filtered) }
            filtered.withUnsafeBufferPointer { Filters.decode($0.baseAddress!, width: width, height: height, into: &back) }
            #expect(back == rgb, "\(width)x\(height)")
            // The definition: plane c, row y holds v(x) - v(x - 1) mod 256, the first byte as is.
            let plane = width * height
            for c in 0..<3 { for y in 0..<height { for x in 0..<width {
                let v = rgb[(y * width + x) * 3 + c], before = x == 0 ? 0 : rgb[(y * width + x - 1) * 3 + c]
                #expect(filtered[c * plane + y * width + x] == v &- before)
            } } }
        }
    }

    @Test("pack then read: pixels, labels, sources and metadata round-trip", arguments: PixelFilter.allCases)
    func roundTrip(_ filter: PixelFilter) throws {
        let dir = try TemporaryDirectory()
        let images = try makeImageFolder(dir.url.appendingPathComponent("in"))
        var options = PackOptions(output: dir.url.appendingPathComponent("out"))
        options.filter = filter
        options.targetShardBytes = 1500   // several shards
        options.micronsPerPixel = 0.5
        let plan = try PackPlan.imageFolder(dir.url.appendingPathComponent("in"))
        #expect(plan.classes == ["benign", "tumor"])
        let report = try Packer.pack(plan, options: options)
        #expect(report.tiles == 7 && report.shards.count > 1)
        var seen = 0
        for url in report.shards {
            let r = try ShardReader(url: url)
            #expect(r.metadata.classes == ["benign", "tumor"])
            #expect(r.metadata.filter == filter)
            #expect(r.metadata.micronsPerPixel == 0.5)
            #expect(r.metadata.shardCount == report.shards.count)
            for (i, e) in r.entries.enumerated() {
                let source = r.metadata.sources[Int(e.source)]
                let original = try #require(images[source])
                #expect(try r.tile(i) == original.pixels, "\(source) pixels")
                #expect(Int(e.width) == original.width && Int(e.height) == original.height)
                #expect(r.metadata.classes[Int(e.label)] == String(source.split(separator: "/")[0]))
                #expect(e.id == UInt64(seen), "ids follow the packing order")
                seen += 1
            }
            try r.verify()
        }
        #expect(seen == 7)
    }

    @Test("the same input packs to byte-identical shards")
    func deterministic() throws {
        let dir = try TemporaryDirectory()
        _ = try makeImageFolder(dir.url.appendingPathComponent("in"))
        let plan = try PackPlan.imageFolder(dir.url.appendingPathComponent("in"))
        var bytes: [[Data]] = []
        for (k, threads) in [1, 3].enumerated() {
            var options = PackOptions(output: dir.url.appendingPathComponent("out\(k)"))
            options.threads = threads
            options.targetShardBytes = 1500
            let report = try Packer.pack(plan, options: options)
            bytes.append(try report.shards.map { try Data(contentsOf: $0) })
        }
        #expect(bytes[0] == bytes[1])
    }

    @Test("every single-byte corruption and every truncation is detected, never a crash")
    func corruption() throws {
        let dir = try TemporaryDirectory()
        _ = try makeImageFolder(dir.url.appendingPathComponent("in"))
        let report = try Packer.pack(try PackPlan.imageFolder(dir.url.appendingPathComponent("in")),
                                     options: PackOptions(output: dir.url.appendingPathComponent("out")))
        let original = try Data(contentsOf: report.shards[0])
        let damaged = dir.url.appendingPathComponent("damaged.shard")
        var g = SystemRandomNumberGenerator()
        // Every byte of the file, flipped by a random non-zero mask.
        for offset in 0..<original.count {
            var d = original
            d[offset] ^= UInt8.random(in: 1...255, using: &g)
            try d.write(to: damaged)
            #expect(throws: ShardError.self, "flip at byte \(offset) of \(original.count) went unnoticed") {
                let r = try ShardReader(url: damaged)
                try r.verify()
            }
        }
        for length in [0, 5, 16, 100, original.count / 2, original.count - 64, original.count - 1] {
            try original.prefix(length).write(to: damaged)
            let error = #expect(throws: ShardError.self, "truncation to \(length) bytes went unnoticed") {
                try ShardReader(url: damaged).verify()
            }
            #expect(error?.message.contains(damaged.path) == true)
        }
    }

    @Test("a corrupt tile names the file and the tile")
    func corruptTileMessage() throws {
        let dir = try TemporaryDirectory()
        _ = try makeImageFolder(dir.url.appendingPathComponent("in"))
        let report = try Packer.pack(try PackPlan.imageFolder(dir.url.appendingPathComponent("in")),
                                     options: PackOptions(output: dir.url.appendingPathComponent("out")))
        let url = report.shards[0]
        let r = try ShardReader(url: url)
        var d = try Data(contentsOf: url)
        d[Int(r.entries[2].offset) + 5] ^= 0x40
        try d.write(to: url)
        let error = #expect(throws: ShardError.self) { try ShardReader(url: url).verify() }
        #expect(error?.message.contains("tile 2") == true && error?.message.contains(url.path) == true, "\(String(describing: error))")
    }

    @Test("unreadable images stop the pack naming the path, or are skipped and listed with skipBad")
    func badImages() throws {
        let dir = try TemporaryDirectory()
        let input = dir.url.appendingPathComponent("in")
        _ = try makeImageFolder(input)
        let bad = input.appendingPathComponent("tumor/broken.jpg")
        try Data([0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3]).write(to: bad)
        let plan = try PackPlan.imageFolder(input)
        let error = #expect(throws: ShardError.self) { try Packer.pack(plan, options: PackOptions(output: dir.url.appendingPathComponent("a"))) }
        #expect(error?.message.contains("broken.jpg") == true && error?.message.contains("--skip-bad") == true)
        var options = PackOptions(output: dir.url.appendingPathComponent("b"))
        options.skipBad = true
        let report = try Packer.pack(plan, options: options)
        #expect(report.tiles == 7 && report.skipped.count == 1 && report.skipped[0].contains("broken.jpg"))
    }

    @Test("missing or empty input folders give a clear error")
    func badFolders() throws {
        let dir = try TemporaryDirectory()
        #expect(throws: ShardError.self) { try PackPlan.imageFolder(dir.url.appendingPathComponent("nope")) }
        let e = #expect(throws: ShardError.self) { try PackPlan.imageFolder(dir.url) }
        #expect(e?.message.contains("no class sub-folders") == true)
    }

    @Test("real LC25000 JPEG tiles decode to 224x224 RGB (skipped when ../shared/data is absent)")
    func realJPEG() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("shared/data/lc25000-lung/val/lung_n")
        guard let name = try? FileManager.default.contentsOfDirectory(atPath: root.path).sorted().first else {
            print("skipping: \(root.path) is absent (real data lives in ../shared/data)")
            return
        }
        let image = try ImageCodec.decode(root.appendingPathComponent(name))
        #expect(image.width == 224 && image.height == 224)
        let mean = Double(image.pixels.reduce(0) { $0 + Int($1) }) / Double(image.pixels.count)
        #expect(mean > 60 && mean < 250, "an H&E tile is neither black nor white (mean \(mean))")
    }
}

@Suite("Pack inputs")
struct PackInputTests {
    @Test("CSV manifest: labels, unlabeled rows, slides, relative paths; a bad line is named")
    func manifest() throws {
        let dir = try TemporaryDirectory()
        let images = try makeImageFolder(dir.url)
        let csv = dir.url.appendingPathComponent("m.csv")
        try """
        path,label,slide
        tumor/t0.png,tumor,S1
        benign/t1.png,benign,S2
        tumor/t2.png,,S1
        benign/t0.png,benign
        """.write(to: csv, atomically: true, encoding: .utf8)
        let plan = try PackPlan.manifest(csv)
        #expect(plan.classes == ["benign", "tumor"])
        #expect(plan.items.map(\.label) == [1, 0, -1, 0])
        #expect(plan.items.map(\.slide) == ["S1", "S2", "S1", "t0"])
        let report = try Packer.pack(plan, options: PackOptions(output: dir.url.appendingPathComponent("out")))
        let r = try ShardReader(url: report.shards[0])
        #expect(r.count == 4 && r.entries[2].label == -1)
        #expect(try r.tile(0) == images["tumor/t0.png"]!.pixels)

        try ",tumor,S1\n".write(to: csv, atomically: true, encoding: .utf8)
        let e = #expect(throws: ShardError.self) { try PackPlan.manifest(csv) }
        #expect(e?.message.contains("record 1 has no path") == true)
    }

    @Test("CSV manifest as spreadsheets write it: BOM, CRLF, comment lines before a header, columns by name in any order, quoted commas; an unknown header is named, not packed as data")
    func manifestFormats() throws {
        let dir = try TemporaryDirectory()
        _ = try makeImageFolder(dir.url)
        let csv = dir.url.appendingPathComponent("m.csv")
        let text = "\u{FEFF}# exported from the LIMS\r\n# second comment\r\nslide_id,File,Class,notes\r\nS1,tumor/t0.png,\"tumor, grade 2\",\"free text, with commas\"\r\nS2,benign/t1.png,benign,\r\n"
        try Data(text.utf8).write(to: csv)
        let plan = try PackPlan.manifest(csv)
        #expect(plan.classes == ["benign", "tumor, grade 2"])
        #expect(plan.items.map(\.relativePath) == ["tumor/t0.png", "benign/t1.png"] && plan.items.map(\.slide) == ["S1", "S2"])
        #expect(plan.items.map(\.label) == [1, 0])
        // The class name with a comma survives into predictions-style CSV output, read back field for field.
        let out = dir.url.appendingPathComponent("p.csv")
        try CSVTable.text(header: ["slide", "label"], rows: plan.items.map { [$0.slide, plan.classes[Int($0.label)]] }).write(to: out, atomically: true, encoding: .utf8)
        #expect(try CSVTable.read(out).map(\.fields) == [["slide", "label"], ["S1", "tumor, grade 2"], ["S2", "benign"]])
        // A header of unknown names is refused, naming it; a slide with two labels is refused.
        try "image_name,diagnosis_code\ntumor/t0.png,tumor\n".write(to: csv, atomically: true, encoding: .utf8)
        let e = #expect(throws: ShardError.self) { try PackPlan.manifest(csv) }
        #expect(e?.message.contains("looks like a header") == true && e?.message.contains("path,label,slide") == true)
        try "path,label,slide\ntumor/t0.png,tumor,S1\nbenign/t1.png,benign,S1\n".write(to: csv, atomically: true, encoding: .utf8)
        let two = #expect(throws: ShardError.self) { try PackPlan.manifest(csv) }
        #expect(two?.message.contains("slide 'S1' has label 'tumor' in record 2 and 'benign' in record 3") == true)
    }

    @Test("ImageFolder layouts: ROOT/CLASS/SLIDE/.../tile packs every tile under its slide; flat slide ids are unique per class; other files are listed, not dropped silently")
    func folderLayouts() throws {
        let dir = try TemporaryDirectory()
        let fm = FileManager.default
        // Nested: 2 classes, 2 slides each, 2 tiles per slide, one slide with a sub-folder level.
        for (c, cls) in ["aca", "n"].enumerated() {
            for s in 0..<2 {
                let slide = dir.url.appendingPathComponent("nested/\(cls)/\(cls)-slide\(s)" + (s == 1 ? "/region-a" : ""))
                try fm.createDirectory(at: slide, withIntermediateDirectories: true)
                for t in 0..<2 { try ImageCodec.writePNG(syntheticImage(width: 8, height: 8, seed: c * 10 + s * 2 + t), to: slide.appendingPathComponent("t\(t).png")) }
            }
        }
        try Data("notes".utf8).write(to: dir.url.appendingPathComponent("nested/aca/aca-slide0/readme.txt"))
        let nested = try PackPlan.imageFolder(dir.url.appendingPathComponent("nested"))
        #expect(nested.items.count == 8, "all 8 tiles, not only those directly in the class folders")
        #expect(nested.items.map(\.slide) == ["aca-slide0", "aca-slide0", "aca-slide1", "aca-slide1", "n-slide0", "n-slide0", "n-slide1", "n-slide1"])
        #expect(nested.items[2].relativePath == "aca/aca-slide1/region-a/t0.png")
        #expect(nested.notPacked.map(\.path) == ["aca/aca-slide0/readme.txt"])
        // Flat: the same file name in two classes is two slides.
        for cls in ["aca", "n"] {
            try fm.createDirectory(at: dir.url.appendingPathComponent("flat/\(cls)"), withIntermediateDirectories: true)
            try ImageCodec.writePNG(syntheticImage(width: 8, height: 8, seed: 1), to: dir.url.appendingPathComponent("flat/\(cls)/t0.png"))
        }
        #expect(try PackPlan.imageFolder(dir.url.appendingPathComponent("flat")).items.map(\.slide) == ["aca/t0", "n/t0"])
        // One slide folder name under two classes is refused, naming both.
        try fm.createDirectory(at: dir.url.appendingPathComponent("nested/n/aca-slide0"), withIntermediateDirectories: true)
        try ImageCodec.writePNG(syntheticImage(width: 8, height: 8, seed: 3), to: dir.url.appendingPathComponent("nested/n/aca-slide0/t9.png"))
        let e = #expect(throws: ShardError.self) { try PackPlan.imageFolder(dir.url.appendingPathComponent("nested")) }
        #expect(e?.message.contains("'aca-slide0' is in class 'aca' and in class 'n'") == true)
    }

    @Test("an image that keeps no tissue tile is named in the pack's notes with a hint, not dropped silently")
    func emptySlide() throws {
        let dir = try TemporaryDirectory()
        var tissue = [UInt8](repeating: 0, count: 32 * 32 * 3)
        for i in stride(from: 0, to: tissue.count, by: 3) { tissue[i] = 200; tissue[i + 1] = 90; tissue[i + 2] = 160 }
        for (cls, name, px) in [("malignant", "slide1", tissue), ("benign", "glass", [UInt8](repeating: 250, count: 32 * 32 * 3)),
                                ("benign", "slide2", tissue)] {
            try FileManager.default.createDirectory(at: dir.url.appendingPathComponent("in/\(cls)"), withIntermediateDirectories: true)
            try ImageCodec.writePNG(RGBImage(width: 32, height: 32, pixels: px), to: dir.url.appendingPathComponent("in/\(cls)/\(name).png"))
        }
        var options = PackOptions(output: dir.url.appendingPathComponent("out"))
        options.grid = GridSpec(tileSize: 16, minTissueFraction: 0.25)
        let report = try Packer.pack(try PackPlan.imageFolder(dir.url.appendingPathComponent("in")), options: options)
        #expect(report.tiles == 8, "the two tissue images' 4 tiles each")
        #expect(report.emptySlides == ["benign/glass.png"])
        let note = try #require(report.notes.first { $0.contains("kept no tile") })
        #expect(note.contains("1 image(s)") && note.contains("benign/glass.png") && note.contains("25%") && note.contains("--min-tissue"))
        // Without the tissue filter the glass image keeps its tiles and nothing is said.
        options.grid = GridSpec(tileSize: 16, minTissueFraction: 0)
        options.output = dir.url.appendingPathComponent("all")
        let all = try Packer.pack(try PackPlan.imageFolder(dir.url.appendingPathComponent("in")), options: options)
        #expect(all.tiles == 12 && all.emptySlides.isEmpty && !all.notes.contains { $0.contains("kept no tile") })
    }

    @Test("grid tiling keeps tissue tiles with their coordinates and drops background")
    func grid() throws {
        let dir = try TemporaryDirectory()
        // 64x48 image: left half coloured "tissue", right half white glass.
        var px = [UInt8](repeating: 255, count: 64 * 48 * 3)
        for y in 0..<48 { for x in 0..<32 { let i = (y * 64 + x) * 3; px[i] = 200; px[i + 1] = 90; px[i + 2] = 160 } }
        let slide = RGBImage(width: 64, height: 48, pixels: px)
        try FileManager.default.createDirectory(at: dir.url.appendingPathComponent("in/malignant"), withIntermediateDirectories: true)
        try ImageCodec.writePNG(slide, to: dir.url.appendingPathComponent("in/malignant/slide7.png"))
        var options = PackOptions(output: dir.url.appendingPathComponent("out"))
        options.grid = GridSpec(tileSize: 16, stride: 16, minTissueFraction: 0.5)
        let report = try Packer.pack(try PackPlan.imageFolder(dir.url.appendingPathComponent("in")), options: options)
        let r = try ShardReader(url: report.shards[0])
        #expect(r.count == 2 * 3, "the 2x3 tissue tiles of the left half")
        #expect(Set(r.entries.map { $0.x }) == [0, 16])
        #expect(Set(r.entries.map { $0.y }) == [0, 16, 32])
        #expect(r.metadata.slides == ["malignant/slide7"] && r.metadata.tileSize == 16)
        #expect(r.metadata.tileTissue == Array(repeating: Float(1), count: 6), "every kept tile is all tissue, and says so")
        // Packed without the filter, the fractions are kept and filter a dataset later (data.min_tissue, extract --min-tissue).
        var all = PackOptions(output: dir.url.appendingPathComponent("all"))
        all.grid = GridSpec(tileSize: 16, stride: 16, minTissueFraction: 0)
        _ = try Packer.pack(try PackPlan.imageFolder(dir.url.appendingPathComponent("in")), options: all)
        #expect(try ShardDataset(directory: all.output).count == 12)
        let filtered = try ShardDataset(directory: all.output, minTissue: 0.5)
        #expect(filtered.count == 6 && (0..<6).allSatisfy { filtered.entry($0).x < 32 })
        #expect(throws: ShardError.self) { try ShardDataset(directory: all.output, minTissue: 1.01) }
        let e = r.entries.firstIndex { $0.x == 16 && $0.y == 32 }!
        let tile = try r.tile(e)
        #expect(tile[0] == 200 && tile[1] == 90 && tile[2] == 160)
        // With the filter off every grid position is kept.
        options.grid = GridSpec(tileSize: 16, stride: 16, minTissueFraction: 0)
        options.output = dir.url.appendingPathComponent("all")
        #expect(try Packer.pack(try PackPlan.imageFolder(dir.url.appendingPathComponent("in")), options: options).tiles == 4 * 3)
    }
}
