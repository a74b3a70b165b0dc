// Whole-slide images through OpenSlide: properties, region reads composited over white, tissue detection on a
// thumbnail (Otsu on saturation), and tiling at a physical scale (tile size in pixels at a target µm/px).
import COpenSlide
import Foundation

/// One level of a slide's pyramid.
public struct SlideLevel: Codable, Equatable, Sendable {
    public var width: Int, height: Int
    /// Level-0 pixels per pixel of this level (1 for level 0).
    public var downsample: Double
}

/// What OpenSlide reports about a slide, as kept in shard metadata (`slide_properties`) and shown by `inspect`.
public struct SlideProperties: Codable, Equatable, Sendable {
    /// OpenSlide's vendor name (aperio, hamamatsu, generic-tiff, mirax, ...).
    public var vendor: String
    /// Level-0 microns per pixel (`openslide.mpp-x`/`-y`), nil when the file does not say.
    public var micronsPerPixelX: Double?, micronsPerPixelY: Double?
    /// Scanner objective power (`openslide.objective-power`), nil when the file does not say.
    public var objectivePower: Double?
    public var levels: [SlideLevel]

    enum CodingKeys: String, CodingKey {
        case vendor, levels, micronsPerPixelX = "mpp_x", micronsPerPixelY = "mpp_y", objectivePower = "objective_power"
    }
}

/// How one slide was tiled, kept per slide in shard metadata beside its properties.
public struct SlideTilingRecord: Codable, Equatable, Sendable {
    /// Absolute path of the slide file when it was packed (heatmaps draw on it when it is still there).
    public var path: String?
    public var properties: SlideProperties
    /// Level-0 µm/px used (the file's, or `--microns-per-pixel` for a slide without one).
    public var micronsPerPixel: Double
    /// µm/px of the packed tiles.
    public var tileMicronsPerPixel: Double
    /// Pyramid level the tiles were read from.
    public var readLevel: Int
    /// Level-0 pixels spanned by one tile (tile size x downsample); tile x/y in the index are level-0 pixels.
    public var level0TileExtent: Double
    /// Saturation threshold of the tissue mask (Otsu's, not below the floor), in [0, 1].
    public var tissueThreshold: Double
    /// Grid tiles in the slide, and tiles kept by the tissue filter.
    public var gridTiles: Int, keptTiles: Int

    enum CodingKeys: String, CodingKey {
        case path, properties, micronsPerPixel = "mpp", tileMicronsPerPixel = "tile_mpp", readLevel = "read_level"
        case level0TileExtent = "level0_tile_extent", tissueThreshold = "tissue_threshold", gridTiles = "grid_tiles", keptTiles = "kept_tiles"
    }
}

/// An open whole-slide image (any format OpenSlide reads: Aperio SVS, Hamamatsu NDPI, MIRAX, Leica SCN, Ventana
/// BIF, pyramidal TIFF, ...). Reads from several threads at once are safe (OpenSlide handles are thread-safe).
public final class WholeSlide: @unchecked Sendable {
    /// File extensions that are always slides; `.tif`/`.tiff` are slides when OpenSlide recognises them (tiled,
    /// pyramidal), else plain images.
    public static let extensions: Set<String> = ["svs", "ndpi", "mrxs", "scn", "svslide", "bif", "vms", "vmu"]

    /// True when `url` should be read as a whole-slide image: a slide extension, or a TIFF OpenSlide recognises.
    public static func isWholeSlide(_ url: URL) -> Bool {
        let ext = url.pathExtension.lowercased()
        if extensions.contains(ext) { return true }
        if ext == "tif" || ext == "tiff" { return openslide_detect_vendor(url.path) != nil }
        return false
    }

    public let url: URL
    public let properties: SlideProperties
    private let handle: OpaquePointer

    /// Opens `url`. Throws naming the file when OpenSlide cannot read it.
    public init(url: URL) throws {
        self.url = url
        guard FileManager.default.isReadableFile(atPath: url.path) else {
            throw ShardError("\(url.path): no such readable file. Hint: check the path and permissions.")
        }
        let vendor = openslide_detect_vendor(url.path).map { String(cString: $0) }
        guard let h = openslide_open(url.path) else {
            throw ShardError("\(url.path): OpenSlide does not recognise this file as a whole-slide image. Hint: check the file is complete; formats OpenSlide reads are Aperio SVS, Hamamatsu NDPI/VMS, MIRAX, Leica SCN, Ventana BIF, Philips TIFF and tiled pyramidal TIFF.")
        }
        if let e = openslide_get_error(h) {
            let message = String(cString: e)
            openslide_close(h)
            throw ShardError("\(url.path): OpenSlide cannot read it: \(message). Hint: the file is damaged or truncated; copy it again.")
        }
        handle = h
        func property(_ name: String) -> String? { openslide_get_property_value(h, name).map { String(cString: $0) } }
        func positive(_ name: String) -> Double? { property(name).flatMap(Double.init).flatMap { $0.isFinite && $0 > 0 ? $0 : nil } }
        var levels: [SlideLevel] = []
        for l in 0..<Int(openslide_get_level_count(h)) {
            var w: Int64 = 0, hgt: Int64 = 0
            openslide_get_level_dimensions(h, Int32(l), &w, &hgt)
            levels.append(SlideLevel(width: Int(w), height: Int(hgt), downsample: openslide_get_level_downsample(h, Int32(l))))
        }
        properties = SlideProperties(vendor: property("openslide.vendor") ?? vendor ?? "unknown",
                                     micronsPerPixelX: positive("openslide.mpp-x"), micronsPerPixelY: positive("openslide.mpp-y"),
                                     objectivePower: positive("openslide.objective-power"), levels: levels)
        guard let first = levels.first, first.width > 0, first.height > 0 else {
            openslide_close(h)
            throw ShardError("\(url.path): the slide has no pixels (no pyramid level). Hint: the file is damaged; copy it again.")
        }
    }

    deinit { openslide_close(handle) }

    /// Level-0 size in pixels.
    public var dimensions: (width: Int, height: Int) { (properties.levels[0].width, properties.levels[0].height) }

    /// The `width` x `height` pixels of `level` whose top-left corner is at level-0 pixel (x, y), composited over
    /// white (OpenSlide returns premultiplied ARGB; out = C + 255 - A, as openslide-python's
    /// `read_region(...).convert("RGB")` after compositing on white). Outside the slide is white.
    public func readRegion(x: Int, y: Int, level: Int, width: Int, height: Int) throws -> RGBImage {
        precondition(width > 0 && height > 0 && level >= 0 && level < properties.levels.count,
                     "WholeSlide.readRegion: \(width)x\(height) at level \(level) of \(properties.levels.count)")
        var argb = [UInt32](repeating: 0, count: width * height)
        argb.withUnsafeMutableBufferPointer { openslide_read_region(handle, $0.baseAddress, Int64(x), Int64(y), Int32(level), Int64(width), Int64(height)) }
        if let e = openslide_get_error(handle) {
            throw ShardError("\(url.path): OpenSlide failed reading \(width)x\(height) at (\(x), \(y)) of level \(level): \(String(cString: e)). Hint: the file is damaged; copy it again.")
        }
        var rgb = [UInt8](repeating: 0, count: width * height * 3)
        rgb.withUnsafeMutableBufferPointer { out in
            for (i, p) in argb.enumerated() {
                let white = 255 - (p >> 24)
                out[3 * i] = UInt8(truncatingIfNeeded: min(255, ((p >> 16) & 255) + white))
                out[3 * i + 1] = UInt8(truncatingIfNeeded: min(255, ((p >> 8) & 255) + white))
                out[3 * i + 2] = UInt8(truncatingIfNeeded: min(255, (p & 255) + white))
            }
        }
        return RGBImage(width: width, height: height, pixels: rgb)
    }

    /// The finest level whose downsample is at most `downsample` (1e-3 relative slack, so a level at 2.0005 serves
    /// a request of 2): reading it and area-resampling never upsamples.
    public func level(forDownsample downsample: Double) -> Int {
        var best = 0
        for (i, l) in properties.levels.enumerated() where l.downsample <= downsample * (1 + 1e-3) && l.downsample >= properties.levels[best].downsample {
            best = i
        }
        return best
    }

    /// The level-0 area (x, y, extent x extent) as a `size` x `size` image: read from the finest level not finer
    /// than needed and area-averaged (exact copy when that level already has the right scale).
    public func readScaled(x: Int, y: Int, extent: Double, size: Int) throws -> RGBImage {
        let level = level(forDownsample: extent / Double(size))
        let d = properties.levels[level].downsample
        let span = extent / d
        if abs(span - Double(size)) < 0.5 {   // the level has the scale to within half a pixel per tile: read as is
            return try readRegion(x: x, y: y, level: level, width: size, height: size)
        }
        let n = Int(span.rounded(.up))
        let region = try readRegion(x: x, y: y, level: level, width: n, height: n)
        return AreaResample.resize(region, sourceWidth: span, sourceHeight: span, width: size, height: size)
    }
}

/// Area-averaging resampling (every output pixel is the mean of the source area it covers, with fractional edge
/// weights), as OpenCV's INTER_AREA and Pillow's BOX filter do for downscaling.
public enum AreaResample {
    /// Resizes the top-left `sourceWidth` x `sourceHeight` (fractional) pixels of `image` to `width` x `height`.
    public static func resize(_ image: RGBImage, sourceWidth: Double, sourceHeight: Double, width: Int, height: Int) -> RGBImage {
        let wx = weights(source: sourceWidth, limit: image.width, count: width)
        let wy = weights(source: sourceHeight, limit: image.height, count: height)
        // Horizontal pass into Float rows, then vertical.
        var rows = [Float](repeating: 0, count: image.height * width * 3)
        image.pixels.withUnsafeBufferPointer { src in
            for r in 0..<image.height {
                for (o, taps) in wx.enumerated() {
                    var a: (Float, Float, Float) = (0, 0, 0)
                    for (i, w) in taps {
                        let k = (r * image.width + i) * 3
                        a.0 += w * Float(src[k]); a.1 += w * Float(src[k + 1]); a.2 += w * Float(src[k + 2])
                    }
                    let k = (r * width + o) * 3
                    rows[k] = a.0; rows[k + 1] = a.1; rows[k + 2] = a.2
                }
            }
        }
        var out = [UInt8](repeating: 0, count: width * height * 3)
        for (o, taps) in wy.enumerated() {
            for c in 0..<(width * 3) {
                var a: Float = 0
                for (i, w) in taps { a += w * rows[i * width * 3 + c] }
                out[o * width * 3 + c] = UInt8(min(255, max(0, a.rounded())))
            }
        }
        return RGBImage(width: width, height: height, pixels: out)
    }

    /// For each of `count` outputs, the source pixels it covers and their normalized overlap weights.
    static func weights(source: Double, limit: Int, count: Int) -> [[(Int, Float)]] {
        let scale = source / Double(count)
        return (0..<count).map { o in
            let a = Double(o) * scale, b = min(Double(o + 1) * scale, Double(limit))
            var taps: [(Int, Float)] = []
            var i = Int(a.rounded(.down))
            while Double(i) < b && i < limit {
                let w = min(b, Double(i + 1)) - max(a, Double(i))
                if w > 1e-9 { taps.append((i, Float(w))) }
                i += 1
            }
            let total = taps.reduce(Float(0)) { $0 + $1.1 }
            return taps.isEmpty ? [(min(max(0, i - 1), limit - 1), 1)] : taps.map { ($0.0, $0.1 / total) }
        }
    }
}

/// Tissue detection: HSV saturation (max - min) / max per pixel of a low-resolution picture, thresholded by Otsu's
/// method (the threshold that maximises the between-class variance of the saturation histogram), never below a
/// floor so that a slide that is all glass or all tissue is not split in two. Background glass is nearly grey
/// (low saturation), stained tissue is not; pixels outside the slide are white (saturation 0).
public enum TissueMask {
    /// The saturation of every pixel, in [0, 1].
    public static func saturation(_ image: RGBImage) -> [Float] {
        var s = [Float](repeating: 0, count: image.width * image.height)
        image.pixels.withUnsafeBufferPointer { p in
            for i in 0..<s.count {
                let r = p[3 * i], g = p[3 * i + 1], b = p[3 * i + 2]
                let mx = max(r, max(g, b)), mn = min(r, min(g, b))
                s[i] = mx == 0 ? 0 : Float(mx - mn) / Float(mx)
            }
        }
        return s
    }

    /// Otsu's threshold of `values` in [0, 1] over 256 bins (the bin edge, in [0, 1]).
    public static func otsu(_ values: [Float]) -> Float {
        var hist = [Double](repeating: 0, count: 256)
        for v in values { hist[min(255, max(0, Int(v * 255)))] += 1 }
        let total = Double(values.count)
        guard total > 0 else { return 0 }
        let sumAll = hist.enumerated().reduce(0.0) { $0 + Double($1.offset) * $1.element }
        var weightB = 0.0, sumB = 0.0, best = -1.0, threshold = 0
        for t in 0..<256 {
            weightB += hist[t]
            if weightB == 0 { continue }
            let weightF = total - weightB
            if weightF == 0 { break }
            sumB += Double(t) * hist[t]
            let mB = sumB / weightB, mF = (sumAll - sumB) / weightF
            let between = weightB * weightF * (mB - mF) * (mB - mF)
            if between > best { best = between; threshold = t }
        }
        return Float(threshold + 1) / 255
    }
}

/// Where and how to cut a slide: a grid of `tileSize` px tiles at `tileMicronsPerPixel` over level 0.
public struct SlideGrid: Sendable {
    public let slide: WholeSlide
    public let record: SlideTilingRecord
    /// Level-0 origins of every grid tile and its tissue fraction, row by row.
    public let tiles: [(x: Int, y: Int, tissue: Float)]
}

/// The scale at which slides are tiled.
public enum SlideScale: Sendable, Equatable {
    /// Level 0 as scanned.
    case native
    /// Tiles at this many microns per pixel.
    case micronsPerPixel(Double)
    /// Tiles at this objective magnification: downsample = objective power / magnification when the slide gives its
    /// objective power, else µm/px = 10 / magnification (the usual 20x = 0.5 µm/px convention).
    case magnification(Double)
}

extension WholeSlide {
    /// Plans the grid: level-0 µm/px (the file's, else `fallbackMicronsPerPixel`), the downsample to `scale`, the
    /// tissue mask on a thumbnail (8 thumbnail pixels per tile side, at most 8192 on a side), and the tissue
    /// fraction of every grid tile (the share of its footprint that is tissue; outside the slide is not).
    public func grid(tileSize: Int, stride: Int, scale: SlideScale, fallbackMicronsPerPixel: Double?,
                     saturationFloor: Float) throws -> SlideGrid {
        let props = properties
        let (mpp0, d) = try self.scale(scale, fallbackMicronsPerPixel: fallbackMicronsPerPixel)
        let extent = Double(tileSize) * d, step = Double(stride) * d
        let (w0, h0) = dimensions
        // Thumbnail: 8 px per tile side, at most 8192 px on the longer side, never finer than level 0.
        let perPixel = max(1, max(extent / 8, Double(max(w0, h0)) / 8192))
        let tw = max(1, Int((Double(w0) / perPixel).rounded(.up))), th = max(1, Int((Double(h0) / perPixel).rounded(.up)))
        let thumb = try thumbnail(width: tw, height: th, perPixel: perPixel)
        let sat = TissueMask.saturation(thumb)
        let threshold = max(TissueMask.otsu(sat), saturationFloor)
        let mask = sat.map { $0 > threshold }
        var tiles: [(Int, Int, Float)] = []
        var gy = 0.0
        while gy < Double(h0) {
            var gx = 0.0
            while gx < Double(w0) {
                let x = Int(gx.rounded()), y = Int(gy.rounded())
                tiles.append((x, y, Self.fraction(mask, tw, th, x0: Double(x) / perPixel, y0: Double(y) / perPixel, size: extent / perPixel)))
                gx += step
            }
            gy += step
        }
        let record = SlideTilingRecord(path: url.resolvingSymlinksInPath().path, properties: props, micronsPerPixel: mpp0, tileMicronsPerPixel: mpp0 * d,
                                       readLevel: level(forDownsample: d), level0TileExtent: extent, tissueThreshold: Double(threshold),
                                       gridTiles: tiles.count, keptTiles: 0)
        return SlideGrid(slide: self, record: record, tiles: tiles.map { (x: $0.0, y: $0.1, tissue: $0.2) })
    }

    /// The level-0 µm/px (the file's, else `fallbackMicronsPerPixel`) and the downsample from level 0 to `scale`
    /// (at least 1). Throws naming the file when the slide records no µm/px and none is given, or when `scale` is
    /// finer than the scan.
    public func scale(_ scale: SlideScale, fallbackMicronsPerPixel: Double?) throws -> (micronsPerPixel: Double, downsample: Double) {
        let props = properties
        guard let mpp0 = props.micronsPerPixelX ?? fallbackMicronsPerPixel else {
            throw ShardError("\(url.path): the slide does not record its microns per pixel (OpenSlide reports no openslide.mpp-x; vendor \(props.vendor)). Hint: pass --microns-per-pixel with its level-0 resolution (about 0.25 at 40x, 0.5 at 20x).")
        }
        let downsample: Double
        switch scale {
        case .native: downsample = 1
        case .micronsPerPixel(let t): downsample = t / mpp0
        case .magnification(let m): downsample = props.objectivePower.map { $0 / m } ?? (10 / m) / mpp0
        }
        guard downsample >= 1 - 1e-3 else {
            throw ShardError(String(format: "%@: the slide is scanned at %.4g µm/px, coarser than the %.4g µm/px asked for (tiles would be upsampled %.2fx). Hint: ask for a coarser --tile-mpp or a lower --tile-magnification.", url.path, mpp0, mpp0 * downsample, 1 / downsample))
        }
        return (mpp0, max(1, downsample))
    }

    /// A `width` x `height` picture of the whole slide at `perPixel` level-0 pixels per pixel, read in strips from
    /// the finest level not finer than needed and area-averaged (outside the slide: white).
    public func thumbnail(width: Int, height: Int, perPixel: Double) throws -> RGBImage {
        let level = level(forDownsample: perPixel)
        let d = properties.levels[level].downsample
        let ratio = perPixel / d   // level pixels per thumbnail pixel
        var pixels = [UInt8](repeating: 255, count: width * height * 3)
        let strip = max(1, Int(4096 / max(ratio, 1)))   // thumbnail rows per read: at most ~4096 level rows
        var row = 0
        while row < height {
            let rows = min(strip, height - row)
            let y0 = Int((Double(row) * perPixel).rounded(.down))
            let sw = Double(width) * ratio, sh = Double(rows) * ratio
            let region = try readRegion(x: 0, y: y0, level: level, width: Int(sw.rounded(.up)), height: Int(sh.rounded(.up)))
            let small = AreaResample.resize(region, sourceWidth: sw, sourceHeight: sh, width: width, height: rows)
            pixels.replaceSubrange((row * width * 3)..<((row + rows) * width * 3), with: small.pixels)
            row += rows
        }
        return RGBImage(width: width, height: height, pixels: pixels)
    }

    /// The share of the square (x0, y0, size) of a `w` x `h` mask that is true (area outside the mask counts false).
    static func fraction(_ mask: [Bool], _ w: Int, _ h: Int, x0: Double, y0: Double, size: Double) -> Float {
        let xa = Int(x0.rounded(.down)), ya = Int(y0.rounded(.down))
        let xb = Int((x0 + size).rounded(.up)), yb = Int((y0 + size).rounded(.up))
        var tissue = 0.0
        for y in max(0, ya)..<min(h, max(ya, yb)) {
            let fy = min(y0 + size, Double(y + 1)) - max(y0, Double(y))
            for x in max(0, xa)..<min(w, max(xa, xb)) where mask[y * w + x] {
                tissue += fy * (min(x0 + size, Double(x + 1)) - max(x0, Double(x)))
            }
        }
        return Float(min(1, tissue / (size * size)))
    }
}
