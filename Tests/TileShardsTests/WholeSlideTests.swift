// Whole-slide images through OpenSlide, checked against the reference regions in ../shared/data/wsi (read with
// OpenSlide and composited over white by the data's curators), and the image-folder layouts around them.
import Foundation
import Testing
@testable import TileShards

/// ../shared/data/wsi, or nil (with a message) when the real data is absent.
func sharedWSI() -> URL? {
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("shared/data/wsi")
    guard FileManager.default.fileExists(atPath: root.appendingPathComponent("CMU-1-Small-Region.svs").path) else {
        print("skipping: \(root.path) is absent (real whole-slide images live in ../shared/data/wsi)")
        return nil
    }
    return root
}

/// Mean and largest absolute difference of the channels of `a` and `b` over the rectangle (ax, ay) of `a` and
/// (bx, by) of `b`, `w` x `h` pixels.
func difference(_ a: RGBImage, _ ax: Int, _ ay: Int, _ b: RGBImage, _ bx: Int, _ by: Int, _ w: Int, _ h: Int) -> (mean: Double, max: Int) {
    var total = 0, largest = 0
    for y in 0..<h {
        for x in 0..<w {
            for c in 0..<3 {
                let d = abs(Int(a.pixels[((ay + y) * a.width + ax + x) * 3 + c]) - Int(b.pixels[((by + y) * b.width + bx + x) * 3 + c]))
                total += d
                largest = max(largest, d)
            }
        }
    }
    return (Double(total) / Double(max(1, w * h * 3)), largest)
}

/// The tile of `shards` whose level-0 origin is (x, y).
func packedTile(_ shards: URL, x: Int32, y: Int32) throws -> RGBImage? {
    for name in try FileManager.default.contentsOfDirectory(atPath: shards.path) where name.hasSuffix(".shard") {
        let r = try ShardReader(url: shards.appendingPathComponent(name))
        if let i = r.entries.firstIndex(where: { $0.x == x && $0.y == y }) {
            return RGBImage(width: Int(r.entries[i].width), height: Int(r.entries[i].height), pixels: try r.tile(i))
        }
    }
    return nil
}

@Suite("Whole-slide images")
struct WholeSlideTests {
    @Test("OpenSlide reads the reference regions of all four slides (SVS JPEG, SVS JPEG 2000, NDPI, pyramidal TIFF)")
    func referenceRegions() throws {
        guard let wsi = sharedWSI() else { return }
        let cases: [(String, String, Int, Int)] = [
            ("CMU-1-Small-Region.svs", "CMU-1-Small-Region_L0_x982_y1355_256.png", 982, 1355),
            ("CMU-1-Small-Region.generic-tiled-pyramid.tiff", "CMU-1-Small-Region.generic-tiled-pyramid_L0_x982_y1355_256.png", 982, 1355),
            ("CMU-1-Small-Region.svs", "CMU-1-Small-Region_L0_x2092_y2839_256_edge.png", 2092, 2839),
            ("tcga-cr-7395-01a-01-ts1.svs", "tcga-cr-7395-01a-01-ts1_L0_x2093_y1655_256.png", 2093, 1655),
            ("test3-DAPI-2-(387).ndpi", "test3-DAPI-2-(387)_L0_x1856_y2304_256.png", 1856, 2304),
        ]
        for (file, reference, x, y) in cases {
            #expect(WholeSlide.isWholeSlide(wsi.appendingPathComponent(file)))
            let slide = try WholeSlide(url: wsi.appendingPathComponent(file))
            let region = try slide.readRegion(x: x, y: y, level: 0, width: 256, height: 256)
            let expected = try ImageCodec.decode(wsi.appendingPathComponent("regions/\(reference)"))
            let d = difference(region, 0, 0, expected, 0, 0, 256, 256)
            #expect(d.mean < 1.0 && d.max <= 24, "\(reference): mean |diff| \(d.mean), max \(d.max)")
        }
        // The edge read is white where the slide is not (CMU-1 is 2220x2967: columns from 2220 - 2092 = 128 on).
        let edge = try WholeSlide(url: wsi.appendingPathComponent("CMU-1-Small-Region.svs")).readRegion(x: 2092, y: 2839, level: 0, width: 256, height: 256)
        #expect(edge.pixels[(10 * 256 + 200) * 3] == 255 && edge.pixels[(200 * 256 + 10) * 3 + 2] == 255)
        #expect(edge.pixels[(10 * 256 + 10) * 3 ..< (10 * 256 + 11) * 3] != [255, 255, 255], "inside the slide is not white")
    }

    @Test("slide properties: vendor, µm/px, objective power and levels as OpenSlide reports them")
    func properties() throws {
        guard let wsi = sharedWSI() else { return }
        let cmu = try WholeSlide(url: wsi.appendingPathComponent("CMU-1-Small-Region.svs")).properties
        #expect(cmu.vendor == "aperio" && cmu.micronsPerPixelX == 0.499 && cmu.objectivePower == 20)
        #expect(cmu.levels == [SlideLevel(width: 2220, height: 2967, downsample: 1)])
        let ndpi = try WholeSlide(url: wsi.appendingPathComponent("test3-DAPI-2-(387).ndpi")).properties
        #expect(ndpi.vendor == "hamamatsu" && ndpi.levels.count == 7 && ndpi.objectivePower == 40)
        #expect(abs((ndpi.micronsPerPixelX ?? 0) - 0.228) < 0.001)
        #expect(ndpi.levels[0].width == 3968 && ndpi.levels[0].height == 4864)
        let tcga = try WholeSlide(url: wsi.appendingPathComponent("tcga-cr-7395-01a-01-ts1.svs"))
        #expect(tcga.properties.micronsPerPixelX == nil && tcga.properties.levels.count == 2)
        #expect(tcga.level(forDownsample: 2) == 1, "the level at 2.0005 serves a request of 2")
        #expect(tcga.level(forDownsample: 1.9) == 0)
        // A plain TIFF is an image, not a slide; a file OpenSlide cannot read is an error naming it.
        let dir = try TemporaryDirectory()
        let plain = dir.url.appendingPathComponent("plain.tif")
        try Data("not a slide".utf8).write(to: plain)
        #expect(!WholeSlide.isWholeSlide(plain))
        let fake = dir.url.appendingPathComponent("broken.svs")
        try Data(repeating: 7, count: 100).write(to: fake)
        let e = #expect(throws: ShardError.self) { try WholeSlide(url: fake) }
        #expect(e?.message.contains("broken.svs") == true)
    }

    @Test("pack at level 0: tiles equal OpenSlide's regions, the tile half outside the slide is white outside, metadata kept")
    func packNative() throws {
        guard let wsi = sharedWSI() else { return }
        let dir = try TemporaryDirectory()
        let skin = dir.url.appendingPathComponent("in/skin")
        try FileManager.default.createDirectory(at: skin, withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(at: skin.appendingPathComponent("CMU-1-Small-Region.svs"),
                                                   withDestinationURL: wsi.appendingPathComponent("CMU-1-Small-Region.svs"))
        let plan = try PackPlan.imageFolder(dir.url.appendingPathComponent("in"))
        #expect(plan.items.map(\.slide) == ["CMU-1-Small-Region"] && plan.items[0].isSlide)
        var options = PackOptions(output: dir.url.appendingPathComponent("out"))
        options.grid = GridSpec(tileSize: 256, minTissueFraction: 0)
        let report = try Packer.pack(plan, options: options)
        #expect(report.tiles == 9 * 12, "2220x2967 at 256 px: 9 x 12 tiles, edge tiles included")
        #expect(report.micronsPerPixel == 0.499)
        let reference = try ImageCodec.decode(wsi.appendingPathComponent("regions/CMU-1-Small-Region_L0_x982_y1355_256.png"))
        // Tile (1024, 1280) overlaps the reference at (982, 1355): columns 1024..<1238, rows 1355..<1536.
        let tile = try #require(try packedTile(options.output, x: 1024, y: 1280))
        let d = difference(tile, 0, 75, reference, 42, 0, 214, 181)
        #expect(d.mean < 1.0, "mean |diff| \(d.mean)")
        // Tile (2048, 2816) is half outside: white beyond column 172 and row 151, the slide's pixels before.
        let edge = try #require(try packedTile(options.output, x: 2048, y: 2816))
        let edgeReference = try ImageCodec.decode(wsi.appendingPathComponent("regions/CMU-1-Small-Region_L0_x2092_y2839_256_edge.png"))
        #expect(difference(edge, 44, 23, edgeReference, 0, 0, 212, 233).mean < 1.0)
        #expect(edge.pixels[((255) * 256 + 255) * 3 ..< ((255) * 256 + 256) * 3] == [255, 255, 255])
        #expect(edge.pixels[(100 * 256 + 200) * 3] == 255 && edge.pixels[(200 * 256 + 100) * 3 + 1] == 255)
        // Slide properties, tiling and per-tile tissue are in the metadata.
        let r = try ShardReader(url: report.shards[0])
        let record = try #require(r.metadata.slideProperties?["CMU-1-Small-Region"])
        #expect(record.properties.vendor == "aperio" && record.readLevel == 0 && record.level0TileExtent == 256 && record.gridTiles == 108)
        let tissue = try #require(r.metadata.tileTissue)
        #expect(tissue.count == r.count && tissue.allSatisfy { ($0 ?? -1) >= 0 && ($0 ?? 2) <= 1 })
        let edgeIndex = try #require(r.entries.firstIndex { $0.x == 2048 && $0.y == 2816 })
        #expect((tissue[edgeIndex] ?? 1) < 0.25, "the corner tile is mostly glass and outside")
        #expect(tissue.compactMap { $0 }.max()! > 0.9, "some tiles are all tissue")
    }

    @Test("a whole slide that keeps no grid tile is named in the report's empty slides; the other slide's tiles are packed")
    func emptySlide() throws {
        guard let wsi = sharedWSI() else { return }
        let dir = try TemporaryDirectory()
        let cls = dir.url.appendingPathComponent("in/a")
        try FileManager.default.createDirectory(at: cls, withIntermediateDirectories: true)
        for file in ["CMU-1-Small-Region.svs", "test3-DAPI-2-(387).ndpi"] {
            try FileManager.default.createSymbolicLink(at: cls.appendingPathComponent(file), withDestinationURL: wsi.appendingPathComponent(file))
        }
        // A saturation floor of 0.6: no 256 px tile of the H&E slide keeps 25% tissue (0 of its 108); the fluorescence
        // slide is saturated throughout (all 304 kept).
        var options = PackOptions(output: dir.url.appendingPathComponent("out"))
        options.grid = GridSpec(tileSize: 256, saturationThreshold: 0.6)
        let report = try Packer.pack(try PackPlan.imageFolder(cls.deletingLastPathComponent()), options: options)
        #expect(report.emptySlides == ["a/CMU-1-Small-Region.svs"], "\(report.emptySlides)")
        #expect(report.notes.contains { $0.contains("1 image(s) or slide(s) kept no tile") && $0.contains("saturation 0.6") && $0.contains("a/CMU-1-Small-Region.svs") },
                "\(report.notes)")
        let dataset = try ShardDataset(directory: options.output)
        let slides = Set((0..<dataset.count).map(dataset.slide))
        #expect(slides == ["test3-DAPI-2-(387)"] && report.tiles == 304, "\(slides) \(report.tiles)")
    }

    @Test("pack at half resolution: read from level 1 where the pyramid has it, area-averaged from level 0 where not; tissue filter keeps fewer tiles")
    func packDownsampled() throws {
        guard let wsi = sharedWSI() else { return }
        let dir = try TemporaryDirectory()
        let reference = try ImageCodec.decode(wsi.appendingPathComponent("regions/CMU-1-Small-Region_L0_x982_y1355_256.png"))
        // The reference averaged 2x2 from its row 1: 128x127 at level-0 origin (982, 1356), on the even grid of tiles.
        var half = [UInt8](repeating: 0, count: 128 * 127 * 3)
        for y in 0..<127 { for x in 0..<128 { for c in 0..<3 {
            var s = 0
            for (dy, dx) in [(1, 0), (1, 1), (2, 0), (2, 1)] { s += Int(reference.pixels[((2 * y + dy) * 256 + 2 * x + dx) * 3 + c]) }
            half[(y * 128 + x) * 3 + c] = UInt8((Double(s) / 4).rounded())
        } } }
        let halfReference = RGBImage(width: 128, height: 127, pixels: half)
        // From level 0 the average is exact; the TIFF's level 1 was made by libvips (its own filter, JPEG again), so it
        // is only near the average (a pixel of misalignment gives more than 20).
        for (file, level, tolerance) in [("CMU-1-Small-Region.svs", 0, 0.5), ("CMU-1-Small-Region.generic-tiled-pyramid.tiff", 1, 12.0)] {
            let cls = dir.url.appendingPathComponent("in-\(level)/skin")
            try FileManager.default.createDirectory(at: cls, withIntermediateDirectories: true)
            try FileManager.default.createSymbolicLink(at: cls.appendingPathComponent(file), withDestinationURL: wsi.appendingPathComponent(file))
            var options = PackOptions(output: dir.url.appendingPathComponent("out-\(level)"))
            options.grid = GridSpec(tileSize: 256, minTissueFraction: 0)
            options.slideScale = .micronsPerPixel(0.998)
            options.micronsPerPixel = 0.499   // the generic TIFF records none
            let report = try Packer.pack(try PackPlan.imageFolder(cls.deletingLastPathComponent()), options: options)
            let record = try #require(report.slides.values.first)
            #expect(record.readLevel == level && record.level0TileExtent == 512 && record.tileMicronsPerPixel == 0.998, "\(file)")
            #expect(report.tiles == 5 * 6 && report.micronsPerPixel == 0.998)
            // Tile (512, 1024) covers level 0 512..<1024 x 1024..<1536; the averaged reference starts at its (235, 166).
            let tile = try #require(try packedTile(options.output, x: 512, y: 1024))
            let d = difference(tile, 235, 166, halfReference, 0, 0, 21, 90)
            if level == 1 {
                // Level 1 of the TIFF is read as is: exactly OpenSlide's level-1 pixels.
                let direct = try WholeSlide(url: wsi.appendingPathComponent(file)).readRegion(x: 512, y: 1024, level: 1, width: 256, height: 256)
                #expect(tile == direct)
            }
            #expect(d.mean < tolerance, "\(file): mean |diff| \(d.mean) against the 2x2-averaged reference")
        }
        // With the default tissue filter, background tiles are not read.
        let cls = dir.url.appendingPathComponent("in-0")
        var options = PackOptions(output: dir.url.appendingPathComponent("filtered"))
        options.grid = GridSpec(tileSize: 256)
        options.slideScale = .micronsPerPixel(0.998)
        let filtered = try Packer.pack(try PackPlan.imageFolder(cls), options: options)
        #expect(filtered.tiles > 0 && filtered.tiles < 30)
        let meta = try ShardReader(url: filtered.shards[0]).metadata
        #expect(meta.tileTissue!.allSatisfy { ($0 ?? 0) >= 0.25 })
    }

    @Test("a slide without µm/px stops the pack naming the file, and packs with --microns-per-pixel; a finer scale than scanned is refused")
    func scaleErrors() throws {
        guard let wsi = sharedWSI() else { return }
        let dir = try TemporaryDirectory()
        let cls = dir.url.appendingPathComponent("in/tumour")
        try FileManager.default.createDirectory(at: cls, withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(at: cls.appendingPathComponent("tcga.svs"), withDestinationURL: wsi.appendingPathComponent("tcga-cr-7395-01a-01-ts1.svs"))
        var options = PackOptions(output: dir.url.appendingPathComponent("out"))
        options.grid = GridSpec(tileSize: 256)
        options.slideScale = .micronsPerPixel(0.5)
        let plan = try PackPlan.imageFolder(dir.url.appendingPathComponent("in"))
        let e = #expect(throws: ShardError.self) { try Packer.pack(plan, options: options) }
        #expect(e?.message.contains("tcga.svs") == true && e?.message.contains("--microns-per-pixel") == true)
        #expect(!FileManager.default.fileExists(atPath: options.output.path), "nothing written before the check")
        options.micronsPerPixel = 0.25
        let report = try Packer.pack(plan, options: options)
        #expect(report.slides["tcga"]?.readLevel == 1 && report.tiles > 0)
        options.slideScale = .micronsPerPixel(0.1)
        let finer = #expect(throws: ShardError.self) { try Packer.pack(plan, options: PackOptions(output: dir.url.appendingPathComponent("o2")).with(options)) }
        #expect(finer?.message.contains("coarser than") == true)
        // Slides need a grid.
        let noGrid = #expect(throws: ShardError.self) { try Packer.pack(plan, options: PackOptions(output: dir.url.appendingPathComponent("o3"))) }
        #expect(noGrid?.message.contains("--tile-size") == true)
    }

    @Test("Otsu's threshold splits a bimodal saturation histogram between its modes")
    func otsu() {
        let values: [Float] = (0..<1000).map { (i: Int) -> Float in
            let glass: Float = 0.03 + Float(i % 7) * 0.002, tissue: Float = 0.45 + Float(i % 11) * 0.004
            return i % 2 == 0 ? glass : tissue
        }
        let t = TissueMask.otsu(values)
        #expect(values.allSatisfy { ($0 < 0.1) == ($0 < t) }, "threshold \(t) separates glass (< 0.05) from tissue (> 0.45)")
        #expect(TissueMask.saturation(RGBImage(width: 2, height: 1, pixels: [200, 200, 200, 200, 100, 100])) == [0, 0.5])
    }

    @Test("area resampling averages exactly: 2x2 blocks to their mean, a 1.5x reduction by fractional overlaps")
    func areaResample() {
        let image = RGBImage(width: 4, height: 2, pixels: [0, 0, 0, 100, 100, 100, 10, 10, 10, 30, 30, 30,
                                                           200, 200, 200, 100, 100, 100, 50, 50, 50, 70, 70, 70])
        let half = AreaResample.resize(image, sourceWidth: 4, sourceHeight: 2, width: 2, height: 1)
        #expect(half.pixels == [100, 100, 100, 40, 40, 40])
        let row = RGBImage(width: 3, height: 1, pixels: [0, 0, 0, 90, 90, 90, 180, 180, 180])
        // Output 0 covers [0, 1.5): (0 * 1 + 90 * 0.5) / 1.5 = 30; output 1 covers [1.5, 3): (90 * 0.5 + 180) / 1.5 = 150.
        #expect(AreaResample.resize(row, sourceWidth: 3, sourceHeight: 1, width: 2, height: 1).pixels == [30, 30, 30, 150, 150, 150])
    }
}

extension PackOptions {
    /// These options with `other`'s grid, scale and µm/px.
    func with(_ other: PackOptions) -> PackOptions {
        var o = self
        o.grid = other.grid; o.slideScale = other.slideScale; o.micronsPerPixel = other.micronsPerPixel
        return o
    }
}
