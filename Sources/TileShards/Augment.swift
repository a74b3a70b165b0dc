// Paired augmentation for distillation: the same flips, 90-degree rotation and colour jitter (torchvision
// ColorJitter semantics) on the high-resolution tile, then the low-resolution tile by area downsampling of the
// augmented one, then per-channel normalisation. Images are float CHW in [0, 1] until normalised.
import CKernels
import Foundation
import TensorCore

/// Random augmentations and their ranges (torchvision ColorJitter: factors drawn from [max(0, 1 - x), 1 + x],
/// hue shift from [-hue, hue]; the four adjustments applied in a random order).
public struct AugmentOptions: Codable, Hashable, Sendable {
    public var horizontalFlip: Bool
    public var verticalFlip: Bool
    public var rotate90: Bool
    public var brightness: Float
    public var contrast: Float
    public var saturation: Float
    public var hue: Float
    /// HED stain jitter θ: each stain s' = α s + β, α ~ U(1 - θ, 1 + θ), β ~ U(-θ, θ) per channel (0: off).
    public var hedJitter: Float = 0
    /// Random resized crop: the smallest share of the tile's area a crop keeps (torchvision RandomResizedCrop
    /// scale = (this, 1), ratio = (3/4, 4/3)), resized back to the tile's size; 1: off.
    public var cropScale: Float = 1
    /// Gaussian blur: the probability a tile is blurred (0: off) and the largest σ in pixels (σ ~ U(0.1, this),
    /// torchvision GaussianBlur's sigma range).
    public var blurProbability: Float = 0
    public var blurSigma: Float = 1
    /// Mixup (Zhang et al. 2018) for distillation: each tile is blended with a partner tile drawn uniformly from
    /// the whole training set, x = λ a + (1 - λ) b with λ ~ Beta(α, α), before every other augmentation, so teacher
    /// and student see the same blend (the "function matching" of Beyer et al. 2022). 0: off.
    public var mixupAlpha: Float = 0

    public init(horizontalFlip: Bool = true, verticalFlip: Bool = true, rotate90: Bool = true, brightness: Float = 0,
                contrast: Float = 0, saturation: Float = 0, hue: Float = 0, hedJitter: Float = 0, cropScale: Float = 1,
                blurProbability: Float = 0, blurSigma: Float = 1, mixupAlpha: Float = 0) {
        self.horizontalFlip = horizontalFlip; self.verticalFlip = verticalFlip; self.rotate90 = rotate90
        self.brightness = brightness; self.contrast = contrast; self.saturation = saturation; self.hue = hue
        self.hedJitter = hedJitter; self.cropScale = cropScale; self.blurProbability = blurProbability; self.blurSigma = blurSigma
        self.mixupAlpha = mixupAlpha
    }

    /// The blur kernel's size for `blurSigma`: 2 ceil(3 σ) + 1 (odd), at most `2 edge - 1` so that reflect
    /// padding fits a tile of `edge` pixels.
    public func blurKernelSize(edge: Int) -> Int {
        min(2 * Int((3 * blurSigma).rounded(.up)) + 1, max(1, 2 * edge - 1))
    }

    /// No augmentation (evaluation).
    public static let none = AugmentOptions(horizontalFlip: false, verticalFlip: false, rotate90: false)
}

/// One tile's mixup draw: its partner (an index into the training set, uniform over all `tiles`) and the weight
/// λ ~ Beta(α, α) of the tile itself. The stream depends only on (seed, epoch, position in the epoch), like
/// `AugmentDraw`, so any rank makes the same blend and runs without mixup draw the same other augmentations.
public struct MixupDraw: Equatable, Sendable {
    public var partner: Int
    public var lambda: Float

    /// Nil when `alpha` is 0 (mixup off).
    public init?(alpha: Float, seed: UInt64, epoch: Int, position: Int, tiles: Int) {
        guard alpha > 0, tiles > 0 else { return nil }
        var g = SplitMix64.stream(seed, 0x313C, UInt64(epoch), UInt64(position))
        partner = Int(g.next() % UInt64(tiles))
        lambda = Float(g.beta(Double(alpha), Double(alpha)))
    }

    /// Blends 8-bit RGB `b` into `a` in place: round(λ a + (1 - λ) b).
    public func blend(_ a: UnsafeMutablePointer<UInt8>, with b: UnsafePointer<UInt8>, count: Int) {
        let l = lambda, m = 1 - lambda
        for i in 0..<count { a[i] = UInt8(min(255, max(0, (l * Float(a[i]) + m * Float(b[i])).rounded()))) }
    }
}

/// torchvision's colour adjustments on a float CHW image in [0, 1] (in place).
public enum ColorOps {
    @inline(__always) static func clamp01(_ v: Float) -> Float { min(max(v, 0), 1) }

    /// floor(x) for |x| < 2^22 without a libm call or a checked conversion, so loops using it vectorise:
    /// adding and removing 1.5 * 2^23 rounds to the nearest integer, then one step down where that overshot.
    @inline(__always) static func floorSmall(_ x: Float) -> Float {
        let magic: Float = 12_582_912
        let r = (x + magic) - magic
        return r > x ? r - 1 : r
    }

    /// adjust_brightness: img * f, clamped.
    public static func brightness(_ x: UnsafeMutablePointer<Float>, plane: Int, factor f: Float) {
        for i in 0..<(3 * plane) { x[i] = clamp01(x[i] * f) }
    }

    /// rgb_to_grayscale: 0.2989 R + 0.587 G + 0.114 B.
    @inline(__always) static func gray(_ x: UnsafePointer<Float>, _ i: Int, _ plane: Int) -> Float {
        0.2989 * x[i] + 0.587 * x[plane + i] + 0.114 * x[2 * plane + i]
    }

    /// adjust_contrast: blend with the mean of the grayscale image.
    public static func contrast(_ x: UnsafeMutablePointer<Float>, plane: Int, factor f: Float) {
        var s: Double = 0
        for i in 0..<plane { s += Double(gray(x, i, plane)) }
        let mean = Float(s / Double(plane))
        for i in 0..<(3 * plane) { x[i] = clamp01(f * x[i] + (1 - f) * mean) }
    }

    /// adjust_saturation: blend with the per-pixel grayscale.
    public static func saturation(_ x: UnsafeMutablePointer<Float>, plane: Int, factor f: Float) {
        for i in 0..<plane {
            let g = gray(x, i, plane)
            for c in 0..<3 { x[c * plane + i] = clamp01(f * x[c * plane + i] + (1 - f) * g) }
        }
    }

    /// adjust_hue: RGB -> HSV, h = (h + shift) mod 1, HSV -> RGB (torchvision's tensor formulas; fmod replaced
    /// by a subtraction of the floor, which is the same for the value ranges that occur here).
    public static func hue(_ x: UnsafeMutablePointer<Float>, plane: Int, shift: Float) {
        let r0 = x, g0 = x + plane, b0 = x + 2 * plane
        // Without branches (selects instead), so that a pixel's hue sector costs no mispredicted jump; the
        // arithmetic is torchvision's. A grey pixel (max = min) gets s = 0, so p = q = t = v: unchanged.
        for i in 0..<plane {
            let r = r0[i], g = g0[i], b = b0[i]
            let maxc = max(r, max(g, b)), minc = min(r, min(g, b))
            let cr = maxc - minc
            let v = maxc
            let grey = cr == 0
            let s = grey ? 0 : cr / maxc
            let inv = 1 / (grey ? 1 : cr)
            let rc = (maxc - r) * inv, gc = (maxc - g) * inv, bc = (maxc - b) * inv
            var h: Float = maxc == r ? bc - gc : (maxc == g ? 2 + rc - bc : 4 + gc - rc)
            // torchvision: h = fmod(h / 6 + 1, 1), then (h + shift) mod 1 (Python-style, non-negative). h / 6 + 1
            // lies in [5/6, 11/6], h + shift in [-0.5, 1.5), hh * 6 in [0, 6].
            h = h / 6 + 1
            h -= floorSmall(h)
            var hh = h + shift
            hh -= floorSmall(hh)
            let h6 = hh * 6
            let sector = floorSmall(h6)
            let f = h6 - sector
            let p = clamp01(v * (1 - s)), q = clamp01(v * (1 - s * f)), t = clamp01(v * (1 - s * (1 - f)))
            // sector: 0 (v, t, p), 1 (q, v, p), 2 (p, v, t), 3 (p, q, v), 4 (t, p, v), 5 and 6 (v, p, q)
            r0[i] = sector == 0 || sector >= 5 ? v : (sector == 1 ? q : (sector == 4 ? t : p))
            g0[i] = sector == 1 || sector == 2 ? v : (sector == 0 ? t : (sector == 3 ? q : p))
            b0[i] = sector == 3 || sector == 4 ? v : (sector == 2 ? t : (sector >= 5 ? q : p))
        }
    }
}

/// Colour deconvolution into haematoxylin, eosin and DAB (Ruifrok & Johnston 2001) as scikit-image's `rgb2hed` and
/// `hed2rgb` compute it (RGB clamped to at least 1e-6, optical density divided by -log(1e-6), negative stains set to
/// 0; back: exp of the stains times the stain vectors, clipped to [0, 1]), and the HED stain jitter of Tellez et al.
/// 2018 on top of it.
public enum HEDOps {
    /// Rows: the RGB optical density of haematoxylin, eosin, DAB (skimage.color.rgb_from_hed).
    static let rgbFromHED: [Double] = [0.65, 0.70, 0.29, 0.07, 0.99, 0.11, 0.27, 0.57, 0.78]
    /// Its inverse (skimage.color.hed_from_rgb).
    static let hedFromRGB: [Double] = {
        let m = rgbFromHED
        let det = m[0] * (m[4] * m[8] - m[5] * m[7]) - m[1] * (m[3] * m[8] - m[5] * m[6]) + m[2] * (m[3] * m[7] - m[4] * m[6])
        return [(m[4] * m[8] - m[5] * m[7]) / det, (m[2] * m[7] - m[1] * m[8]) / det, (m[1] * m[5] - m[2] * m[4]) / det,
                (m[5] * m[6] - m[3] * m[8]) / det, (m[0] * m[8] - m[2] * m[6]) / det, (m[2] * m[3] - m[0] * m[5]) / det,
                (m[3] * m[7] - m[4] * m[6]) / det, (m[1] * m[6] - m[0] * m[7]) / det, (m[0] * m[4] - m[1] * m[3]) / det]
    }()
    static let logAdjust = Foundation.log(1e-6)

    /// rgb2hed of one pixel in [0, 1].
    @inline(__always)
    public static func toHED(_ rgb: (Float, Float, Float)) -> (Float, Float, Float) {
        let l0 = Foundation.log(Double(max(rgb.0, 1e-6))) / logAdjust, l1 = Foundation.log(Double(max(rgb.1, 1e-6))) / logAdjust
        let l2 = Foundation.log(Double(max(rgb.2, 1e-6))) / logAdjust
        let m = hedFromRGB
        @inline(__always) func s(_ j: Int) -> Float { Float(max(0, l0 * m[j] + l1 * m[3 + j] + l2 * m[6 + j])) }
        return (s(0), s(1), s(2))
    }

    /// hed2rgb of one pixel.
    @inline(__always)
    public static func toRGB(_ hed: (Float, Float, Float)) -> (Float, Float, Float) {
        let h0 = Double(hed.0), h1 = Double(hed.1), h2 = Double(hed.2), m = rgbFromHED
        @inline(__always) func c(_ j: Int) -> Float { Float(min(1, max(0, Foundation.exp((h0 * m[j] + h1 * m[3 + j] + h2 * m[6 + j]) * logAdjust)))) }
        return (c(0), c(1), c(2))
    }

    /// Every pixel of a float CHW image in [0, 1]: stains s' = alpha[k] * s + beta[k], back to RGB (in place).
    public static func jitter(_ x: UnsafeMutablePointer<Float>, plane: Int, alpha: [Float], beta: [Float]) {
        for i in 0..<plane {
            let s = toHED((x[i], x[plane + i], x[2 * plane + i]))
            let r = toRGB((s.0 * alpha[0] + beta[0], s.1 * alpha[1] + beta[1], s.2 * alpha[2] + beta[2]))
            x[i] = r.0; x[plane + i] = r.1; x[2 * plane + i] = r.2
        }
    }
}

/// The random choices for one sample, drawn once and applied to the HR tile (the LR tile inherits them).
public struct AugmentDraw: Equatable, Sendable {
    public var hflip = false, vflip = false
    public var rotations = 0
    /// Order of the colour adjustments: 0 brightness, 1 contrast, 2 saturation, 3 hue.
    public var order = [0, 1, 2, 3]
    public var brightness: Float?, contrast: Float?, saturation: Float?, hue: Float?
    /// HED jitter factors and offsets per stain (nil: off).
    public var hedAlpha: [Float]?, hedBeta: [Float]?
    /// The random resized crop's box in the (flipped and rotated) tile, or nil.
    public var crop: CropBox?
    /// The Gaussian blur's σ in pixels and kernel size, or nil when this tile is not blurred.
    public var blurSigma: Float?
    public var blurKernel = 0

    public init() {}

    /// Draws the parameters for `options` from `g` (square tiles allow 90-degree rotations); the crop and the
    /// blur need the tile's `width` and `height`.
    public init(_ options: AugmentOptions, square: Bool, width: Int = 0, height: Int = 0, using g: inout SplitMix64) {
        if options.horizontalFlip { hflip = g.next() & 1 == 1 }
        if options.verticalFlip { vflip = g.next() & 1 == 1 }
        if options.rotate90 { rotations = square ? Int(g.next() % 4) : 0 }
        var o = [0, 1, 2, 3]
        for i in stride(from: 3, to: 0, by: -1) { o.swapAt(i, Int(g.next() % UInt64(i + 1))) }
        order = o
        if options.brightness > 0 { brightness = g.uniform(max(0, 1 - options.brightness), 1 + options.brightness) }
        if options.contrast > 0 { contrast = g.uniform(max(0, 1 - options.contrast), 1 + options.contrast) }
        if options.saturation > 0 { saturation = g.uniform(max(0, 1 - options.saturation), 1 + options.saturation) }
        if options.hue > 0 { hue = g.uniform(-options.hue, options.hue) }
        if options.hedJitter > 0 {   // drawn last: runs without it draw the same colour jitter as before
            let t = options.hedJitter
            hedAlpha = (0..<3).map { _ in g.uniform(1 - t, 1 + t) }
            hedBeta = (0..<3).map { _ in g.uniform(-t, t) }
        }
        // Drawn after everything above, so runs without them draw the same as before.
        if options.cropScale < 1 && width > 0 && height > 0 {
            crop = CropBox.random(width: width, height: height, scale: (options.cropScale, 1), ratio: (3.0 / 4, 4.0 / 3), using: &g)
        }
        if options.blurProbability > 0 && width > 0 {
            let u: Float = g.uniform(0, 1), sigma: Float = g.uniform(0.1, max(0.1, options.blurSigma))
            if u < options.blurProbability {
                blurSigma = sigma
                blurKernel = options.blurKernelSize(edge: min(width, height))
            }
        }
    }

    /// Applies the colour adjustments in `order` to a float CHW image.
    public func applyColor(_ x: UnsafeMutablePointer<Float>, plane: Int) {
        for op in order {
            switch op {
            case 0: if let f = brightness { ColorOps.brightness(x, plane: plane, factor: f) }
            case 1: if let f = contrast { ColorOps.contrast(x, plane: plane, factor: f) }
            case 2: if let f = saturation { ColorOps.saturation(x, plane: plane, factor: f) }
            default: if let h = hue { ColorOps.hue(x, plane: plane, shift: h) }
            }
        }
        if let a = hedAlpha, let b = hedBeta { HEDOps.jitter(x, plane: plane, alpha: a, beta: b) }
    }
}

/// A flip and rotation of an image, as the augmentation draws them: out(y, x) = in(source(y, x)) with the
/// horizontal and vertical flips applied to the output coordinates, then `rotations` quarter turns of
/// out(y, x) = in(x, n - 1 - y) (only square images rotate). The eight combinations of `hflip` and 0-3
/// rotations are the symmetries of the square (the dihedral group D4), the views of test-time augmentation.
public struct SquareSymmetry: Equatable, Hashable, Sendable, CustomStringConvertible {
    public var hflip: Bool, vflip: Bool
    /// Quarter turns, 0-3.
    public var rotations: Int

    public init(hflip: Bool = false, vflip: Bool = false, rotations: Int = 0) {
        self.hflip = hflip; self.vflip = vflip; self.rotations = rotations & 3
    }

    public static let identity = SquareSymmetry()
    public var isIdentity: Bool { self == .identity }

    /// The symmetries test-time augmentation averages over: the identity and the three flips
    /// (horizontal, vertical, both = a half turn), or all eight symmetries of the square.
    public static let flips = [identity, SquareSymmetry(hflip: true), SquareSymmetry(vflip: true), SquareSymmetry(hflip: true, vflip: true)]
    public static let dihedral = (0..<4).flatMap { k in [SquareSymmetry(rotations: k), SquareSymmetry(hflip: true, rotations: k)] }

    public var description: String {
        let parts = [hflip ? "hflip" : nil, vflip ? "vflip" : nil, rotations > 0 ? "rot\(90 * rotations)" : nil].compactMap { $0 }
        return parts.isEmpty ? "identity" : parts.joined(separator: "+")
    }

    /// The source pixel index (y * width + x in the input) of output pixel (y, x).
    public func source(y: Int, x: Int, width: Int, height: Int) -> Int {
        let n = width   // rotations only happen for square images
        let fx = hflip ? width - 1 - x : x
        let fy = vflip ? height - 1 - y : y
        switch rotations {
        case 0: return fy * width + fx
        case 1: return fx * width + (n - 1 - fy)
        case 2: return (n - 1 - fy) * width + (n - 1 - fx)
        default: return (n - 1 - fx) * width + fy
        }
    }

    /// Output row `y`: its first pixel's source index and the source step from one pixel to the next.
    @inline(__always)
    func row(_ y: Int, width: Int, height: Int) -> (start: Int, step: Int) {
        let start = source(y: y, x: 0, width: width, height: height)
        return (start, width > 1 ? source(y: y, x: 1, width: width, height: height) - start : 0)
    }

    /// Applies the symmetry to `images` float CHW images of `channels` x `edge` x `edge` (NCHW, contiguous).
    public func apply(_ input: UnsafePointer<Float>, into output: UnsafeMutablePointer<Float>, images: Int, channels: Int, edge: Int) {
        let plane = edge * edge
        let rows = (0..<edge).map { row($0, width: edge, height: edge) }   // the same for every plane
        for p in 0..<(images * channels) {
            let src = input + p * plane, dst = output + p * plane
            for (y, (start, step)) in rows.enumerated() {
                var s = start
                for x in 0..<edge { dst[y * edge + x] = src[s]; s += step }
            }
        }
    }
}

/// Turns a decoded tile into the normalised HR and LR float CHW images the models see.
public struct PairedTransform: Sendable {
    public var augment: AugmentOptions
    /// LR = HR area-downsampled by this factor (1, 2, 4, 8 or 16).
    public var factor: Int
    /// When set, LR = HR resized to this edge by bicubic interpolation (PyTorch's, align_corners=False)
    /// instead of area downsampling by `factor`.
    public var bicubicSize: Int?

    /// The LR edge for an HR edge of `size`.
    public func lowSize(for size: Int) -> Int { bicubicSize ?? size / factor }
    public var mean: [Float]
    public var std: [Float]

    public init(augment: AugmentOptions, factor: Int, mean: [Float] = [0, 0, 0], std: [Float] = [1, 1, 1]) {
        precondition([1, 2, 4, 8, 16].contains(factor), "PairedTransform: factor \(factor) must be 1, 2, 4, 8 or 16")
        precondition(mean.count == 3 && std.count == 3 && std.allSatisfy { $0 > 0 }, "PairedTransform: mean \(mean) and std \(std) need 3 channels, std > 0")
        self.augment = augment; self.factor = factor; self.mean = mean; self.std = std
    }

    /// rgb (h, w, 3) uint8 -> hr (3, h', w') and, when `lr` is given, lr (3, h'/factor, w'/factor), both normalised.
    /// h' x w' is h x w, or w x h after an odd number of rotations (only square tiles rotate).
    /// `extra`: further views area-downsampled by other factors, made like `lr` (several students in one pass).
    /// `normalizeHighResolution` false leaves `hr` in [0, 1] (a scratch when only the low-resolution view is wanted).
    public func apply(rgb: UnsafePointer<UInt8>, width: Int, height: Int, draw: AugmentDraw,
                      hr: UnsafeMutablePointer<Float>, lr: UnsafeMutablePointer<Float>?, extra: [(Int, UnsafeMutablePointer<Float>)] = [],
                      normalizeHighResolution: Bool = true) {
        let plane = width * height
        // uint8 HWC -> float CHW in [0, 1]; the flips and rotation become one source-index formula per case.
        let symmetry = SquareSymmetry(hflip: draw.hflip, vflip: draw.vflip, rotations: draw.rotations)
        Self.unitScale.withUnsafeBufferPointer { scale in
            let u = scale.baseAddress!   // u[v] = Float(v) / 255, exactly as a division gives it
            for y in 0..<height {
                // Along an output row the source pixel moves by a fixed step: the row's first source pixel and that step.
                let (start, step) = symmetry.row(y, width: width, height: height)
                let r = hr + y * width, g = r + plane, b = g + plane
                if step == 1 {
                    hd_rgb_unit_planes(rgb + start * 3, width, r, g, b)
                    continue
                }
                var s = start * 3
                let step3 = step * 3
                for x in 0..<width {
                    r[x] = u[Int(rgb[s])]
                    g[x] = u[Int(rgb[s + 1])]
                    b[x] = u[Int(rgb[s + 2])]
                    s += step3
                }
            }
        }
        if let box = draw.crop { box.resize(hr, width: width, height: height) }
        draw.applyColor(hr, plane: plane)
        if let sigma = draw.blurSigma { GaussianBlur.apply(hr, width: width, height: height, kernelSize: draw.blurKernel, sigma: sigma) }
        if let lr {
            if let b = bicubicSize {
                BicubicResize.forward(output: lr, input: hr, shape: NCHW(1, 3, height, width), outH: b, outW: b)
                normalize(lr, plane: b * b)
            } else {
                AreaDownsample.apply(hr, width: width, height: height, factor: factor, into: lr)
                normalize(lr, plane: (width / factor) * (height / factor))
            }
        }
        for (f, view) in extra {
            AreaDownsample.apply(hr, width: width, height: height, factor: f, into: view)
            normalize(view, plane: (width / f) * (height / f))
        }
        if normalizeHighResolution { normalize(hr, plane: plane) }
    }

    /// Float(v) / 255 for every byte value.
    static let unitScale: [Float] = (0..<256).map { Float($0) / 255 }

    func normalize(_ x: UnsafeMutablePointer<Float>, plane: Int) {
        for c in 0..<3 {
            let m = mean[c], s = 1 / std[c]
            for i in 0..<plane { x[c * plane + i] = (x[c * plane + i] - m) * s }
        }
    }
}

/// Area (box) downsampling by an integer factor: each output pixel is the mean of a factor x factor block
/// (PyTorch's `interpolate(mode="area")` and `avg_pool2d(factor)` for sizes divisible by the factor).
public enum AreaDownsample {
    /// Each output pixel's block is summed row by row, left to right, then scaled by 1 / factor^2 (`hd_area_downsample`:
    /// 16 output pixels' sums side by side, every pixel's own order that of one float accumulator).
    public static func apply(_ x: UnsafePointer<Float>, width: Int, height: Int, factor f: Int, into out: UnsafeMutablePointer<Float>) {
        precondition(width % f == 0 && height % f == 0, "AreaDownsample: \(width)x\(height) is not divisible by \(f)")
        hd_area_downsample(x, Int32(width), Int32(height), Int32(f), out)
    }
}

/// A crop box (top-left corner and size, in pixels) of torchvision's `RandomResizedCrop`.
public struct CropBox: Equatable, Sendable {
    public var top: Int, left: Int, height: Int, width: Int

    public init(top: Int, left: Int, height: Int, width: Int) {
        self.top = top; self.left = left; self.height = height; self.width = width
    }

    /// torchvision's `RandomResizedCrop.get_params`: up to 10 tries of an area share in `scale` and a log-uniform
    /// aspect ratio in `ratio` that fit the image, else the central crop clamped to the ratio range.
    public static func random(width: Int, height: Int, scale: (Float, Float), ratio: (Float, Float), using g: inout SplitMix64) -> CropBox {
        let area = Float(width * height)
        let logRatio = (Foundation.log(ratio.0), Foundation.log(ratio.1))
        for _ in 0..<10 {
            let target = area * g.uniform(scale.0, scale.1)
            let aspect = Foundation.exp(g.uniform(logRatio.0, logRatio.1))
            let w = Int((target * aspect).squareRoot().rounded()), h = Int((target / aspect).squareRoot().rounded())
            if w > 0 && w <= width && h > 0 && h <= height {
                let top = Int(g.next() % UInt64(height - h + 1)), left = Int(g.next() % UInt64(width - w + 1))
                return CropBox(top: top, left: left, height: h, width: w)
            }
        }
        let inRatio = Float(width) / Float(height)
        var w = width, h = height
        if inRatio < ratio.0 { h = Int((Float(w) / ratio.0).rounded()) } else if inRatio > ratio.1 { w = Int((Float(h) * ratio.1).rounded()) }
        return CropBox(top: (height - h) / 2, left: (width - w) / 2, height: h, width: w)
    }

    /// Replaces a float CHW image (3, height, width) by this box of it resized to height x width, bilinear with
    /// align_corners=False (torch.nn.functional.interpolate; the box is never larger than the image, so this is
    /// an enlargement and antialiasing changes nothing).
    public func resize(_ x: UnsafeMutablePointer<Float>, width outW: Int, height outH: Int) {
        let plane = outW * outH
        let source = [Float](UnsafeBufferPointer(start: x, count: 3 * plane))
        // Source index and weight per output column and row (torch's area_pixel_compute_source_index, linear).
        func taps(_ out: Int, _ inSize: Int, _ offset: Int) -> [(Int, Int, Float)] {
            let scale = Float(inSize) / Float(out)
            return (0..<out).map { d in
                let src = max(0, (Float(d) + 0.5) * scale - 0.5)
                let i0 = min(Int(src), inSize - 1), i1 = min(i0 + 1, inSize - 1)
                return (offset + i0, offset + i1, src - Float(i0))
            }
        }
        let xs = taps(outW, width, left), ys = taps(outH, height, top)
        source.withUnsafeBufferPointer { s in
            for c in 0..<3 {
                let src = s.baseAddress! + c * plane, dst = x + c * plane
                for (oy, (y0, y1, ly)) in ys.enumerated() {
                    let r0 = src + y0 * outW, r1 = src + y1 * outW
                    for (ox, (x0, x1, lx)) in xs.enumerated() {
                        let top = r0[x0] + lx * (r0[x1] - r0[x0]), bottom = r1[x0] + lx * (r1[x1] - r1[x0])
                        dst[oy * outW + ox] = top + ly * (bottom - top)
                    }
                }
            }
        }
    }
}

/// torchvision's `gaussian_blur` on a float CHW image (in place): a normalised Gaussian of `kernelSize` taps
/// (x = -k/2 ... k/2, weight exp(-x²/2σ²)), reflect padding, applied along rows then columns.
public enum GaussianBlur {
    public static func kernel(size: Int, sigma: Float) -> [Float] {
        let half = Float(size - 1) / 2
        let pdf = (0..<size).map { Foundation.exp(-0.5 * ((Float($0) - half) / sigma) * ((Float($0) - half) / sigma)) }
        let sum = pdf.reduce(0, +)
        return pdf.map { $0 / sum }
    }

    /// Reflect padding's source index (torch "reflect": the edge pixel is not repeated).
    @inline(__always) static func reflect(_ i: Int, _ n: Int) -> Int {
        guard n > 1 else { return 0 }
        var i = i
        while i < 0 || i >= n { i = i < 0 ? -i : 2 * (n - 1) - i }
        return i
    }

    public static func apply(_ x: UnsafeMutablePointer<Float>, width: Int, height: Int, kernelSize: Int, sigma: Float) {
        let k = kernel(size: kernelSize, sigma: sigma), r = kernelSize / 2, plane = width * height
        var row = [Float](repeating: 0, count: max(width, height) + 2 * r)
        for c in 0..<3 {
            let p = x + c * plane
            for y in 0..<height {
                for i in 0..<(width + 2 * r) { row[i] = p[y * width + reflect(i - r, width)] }
                for xx in 0..<width {
                    var s: Float = 0
                    for t in 0..<kernelSize { s += k[t] * row[xx + t] }
                    p[y * width + xx] = s
                }
            }
            for xx in 0..<width {
                for i in 0..<(height + 2 * r) { row[i] = p[reflect(i - r, height) * width + xx] }
                for y in 0..<height {
                    var s: Float = 0
                    for t in 0..<kernelSize { s += k[t] * row[y + t] }
                    p[y * width + xx] = s
                }
            }
        }
    }
}
