// Losses with their gradients: cross-entropy, the temperature-softened KD term, and the pixel (feature-map)
// term with the teacher's map resized by adaptive max pool, bicubic, or the mean of the two.
import TensorCore

/// Mean cross-entropy over labeled rows.
public enum CrossEntropy {
    /// Returns mean(-Σ_j q_j log softmax(logits)_j) over rows whose label is >= 0 (negative = unlabeled, ignored),
    /// with q = (1 - ε) one-hot(label) + ε / classes (ε = `labelSmoothing`; 0 is plain cross-entropy), as
    /// `torch.nn.CrossEntropyLoss(label_smoothing=ε)`, and writes d(loss * scale)/d(logits) = (softmax - q) * scale / n
    /// into `gradLogits` (overwritten; zero rows for unlabeled).
    /// With mixup (`mixWeights` given), row i's target is the blend of two such targets, λ_i q(label_i) +
    /// (1 - λ_i) q(partner_i), the labels blended as the pixels were (Zhang et al. 2018; timm's `Mixup` with
    /// `label_smoothing`, whose soft targets `SoftTargetCrossEntropy` takes).
    /// - Parameters:
    ///   - logits: (n, classes).
    ///   - labels: n class indices in 0..<classes, or -1.
    ///   - mixPartnerLabels: n class indices in 0..<classes: the label of the tile each row's tile was blended with
    ///     (read where `labels` is >= 0; required with `mixWeights`).
    ///   - mixWeights: n weights λ in 0...1 of each row's own label; nil: no mixup.
    public static func forwardBackward(
        logits: UnsafePointer<Float>, labels: UnsafePointer<Int32>, n: Int, classes: Int,
        gradLogits: UnsafeMutablePointer<Float>?, scale: Float = 1, labelSmoothing: Float = 0,
        mixPartnerLabels: UnsafePointer<Int32>? = nil, mixWeights: UnsafePointer<Float>? = nil
    ) -> Float {
        precondition(labelSmoothing >= 0 && labelSmoothing <= 1, "CrossEntropy: label smoothing \(labelSmoothing) is not in 0...1")
        precondition((mixWeights == nil) == (mixPartnerLabels == nil), "CrossEntropy: mixup needs both partner labels and weights")
        var labeled = 0
        for i in 0..<n where labels[i] >= 0 {
            precondition(Int(labels[i]) < classes, "CrossEntropy: label \(labels[i]) of row \(i) is not below \(classes) classes")
            if let mixPartnerLabels, let mixWeights {
                precondition(mixPartnerLabels[i] >= 0 && Int(mixPartnerLabels[i]) < classes,
                             "CrossEntropy: mixup partner label \(mixPartnerLabels[i]) of row \(i) is not in 0..<\(classes)")
                precondition(mixWeights[i] >= 0 && mixWeights[i] <= 1, "CrossEntropy: mixup weight \(mixWeights[i]) of row \(i) is not in 0...1")
            }
            labeled += 1
        }
        if let gradLogits { zeroFill(gradLogits, n * classes) }
        guard labeled > 0 else { return 0 }
        var total: Double = 0
        let logp = UnsafeMutablePointer<Float>.allocate(capacity: classes)
        defer { logp.deallocate() }
        let uniform = labelSmoothing / Float(classes)
        for i in 0..<n where labels[i] >= 0 {
            LogSoftmax.forward(output: logp, input: logits + i * classes, rows: 1, cols: classes)
            let y = Int(labels[i])
            // The one-hot part of the target: weight λ on the row's label and 1 - λ on its partner's.
            let lambda = mixWeights?[i] ?? 1, partner = mixPartnerLabels.map { Int($0[i]) } ?? y
            let hot = lambda == 1 ? Double(logp[y]) : Double(lambda) * Double(logp[y]) + Double(1 - lambda) * Double(logp[partner])
            if labelSmoothing == 0 {
                total -= hot
            } else {
                var sum = 0.0
                for j in 0..<classes { sum += Double(logp[j]) }
                total -= Double(1 - labelSmoothing) * hot + Double(uniform) * sum
            }
            if let gradLogits {
                let g = gradLogits + i * classes, k = scale / Float(labeled)
                for j in 0..<classes { g[j] = (Float.exp(logp[j]) - uniform) * k }
                // Without mixup λ is 1: the partner's share is 0 and the label's (1 - ε) k as before, bit for bit.
                g[y] -= (1 - labelSmoothing) * lambda * k
                g[partner] -= (1 - labelSmoothing) * (1 - lambda) * k
            }
        }
        return Float(total / Double(labeled))
    }
}

/// Knowledge distillation on logits: KL(softmax(t/T) || softmax(s/T)), batch mean, times T^2 (Hinton et al.;
/// PyTorch's `kl_div(log_softmax(s/T), softmax(t/T), reduction="batchmean") * T * T`). Gradient to the student only.
public enum DistillationKL {
    /// Returns the loss and writes d(loss * scale)/d(student) into `gradStudent` (overwritten).
    /// - Parameters:
    ///   - student, teacher: (n, classes) logits.
    public static func forwardBackward(
        student: UnsafePointer<Float>, teacher: UnsafePointer<Float>, n: Int, classes: Int, temperature: Float,
        gradStudent: UnsafeMutablePointer<Float>?, scale: Float = 1
    ) -> Float {
        precondition(temperature > 0, "DistillationKL: temperature must be positive, got \(temperature)")
        let t = temperature
        let buf = UnsafeMutablePointer<Float>.allocate(capacity: 4 * classes)
        defer { buf.deallocate() }
        let ss = buf, ts = buf + classes, logq = buf + 2 * classes, logp = buf + 3 * classes
        var total: Double = 0
        for i in 0..<n {
            for j in 0..<classes { ss[j] = student[i * classes + j] / t; ts[j] = teacher[i * classes + j] / t }
            LogSoftmax.forward(output: logq, input: ss, rows: 1, cols: classes)
            LogSoftmax.forward(output: logp, input: ts, rows: 1, cols: classes)
            for j in 0..<classes {
                let p = Float.exp(logp[j])
                // 0 * log 0 = 0; a NaN (a diverged teacher or student) must reach the total, not be skipped.
                if p != 0 { total += Double(p * (logp[j] - logq[j])) }
            }
            if let gradStudent {
                // d/ds [T^2 * KL / n] = T * (q - p) / n
                let k = scale * t / Float(n)
                for j in 0..<classes { gradStudent[i * classes + j] = k * (Float.exp(logq[j]) - Float.exp(logp[j])) }
            }
        }
        return Float(total / Double(n)) * t * t
    }
}

/// How the teacher's feature map is brought to the student's size for the pixel loss.
public enum PixelResize: String, Sendable, Codable, CaseIterable {
    /// Adaptive max pooling (the paper's default).
    case maxpool
    /// Bicubic interpolation (PyTorch's, align_corners=False).
    case bicubic
    /// The mean of the max-pooled and the bicubic map.
    case both = "maxpool+bicubic"
}

/// The norm of the pixel loss.
public enum PixelNorm: String, Sendable, Codable, CaseIterable {
    /// Mean absolute error (L1).
    case l1
    /// Mean squared error (L2, MSE).
    case l2
}

/// Pixel loss between the student's last feature map and the teacher's, resized to the student's size.
public enum PixelLoss {
    /// Writes the teacher's map resized to (outH, outW) into `target` (n, c, outH, outW).
    public static func resizeTeacher(
        target: UnsafeMutablePointer<Float>, teacher: UnsafePointer<Float>, teacherShape: NCHW, outH: Int, outW: Int,
        mode: PixelResize
    ) {
        let count = teacherShape.n * teacherShape.c * outH * outW
        switch mode {
        case .maxpool:
            let idx = UnsafeMutablePointer<Int32>.allocate(capacity: count)
            defer { idx.deallocate() }
            AdaptiveMaxPool2d.forward(output: target, indices: idx, input: teacher, shape: teacherShape, outH: outH, outW: outW)
        case .bicubic:
            BicubicResize.forward(output: target, input: teacher, shape: teacherShape, outH: outH, outW: outW)
        case .both:
            let idx = UnsafeMutablePointer<Int32>.allocate(capacity: count)
            let cubic = UnsafeMutablePointer<Float>.allocate(capacity: count)
            defer { idx.deallocate(); cubic.deallocate() }
            AdaptiveMaxPool2d.forward(output: target, indices: idx, input: teacher, shape: teacherShape, outH: outH, outW: outW)
            BicubicResize.forward(output: cubic, input: teacher, shape: teacherShape, outH: outH, outW: outW)
            for i in 0..<count { target[i] = (target[i] + cubic[i]) * 0.5 }
        }
    }

    /// Returns mean |s - target| (L1) or mean (s - target)^2 (L2) and writes d(loss * scale)/d(s) into
    /// `gradStudent` (overwritten). The teacher gets no gradient.
    /// - Parameters:
    ///   - student: (n, c, h, w).
    ///   - teacher: (n, c, H, W) of any spatial size; it is resized to the student's (h, w).
    public static func forwardBackward(
        student: UnsafePointer<Float>, studentShape: NCHW, teacher: UnsafePointer<Float>, teacherShape: NCHW,
        mode: PixelResize, norm: PixelNorm, gradStudent: UnsafeMutablePointer<Float>?, scale: Float = 1
    ) -> Float {
        precondition(studentShape.n == teacherShape.n && studentShape.c == teacherShape.c,
                     "PixelLoss: student map \(studentShape) and teacher map \(teacherShape) differ in batch or channels")
        let count = studentShape.count
        let target = UnsafeMutablePointer<Float>.allocate(capacity: count)
        defer { target.deallocate() }
        resizeTeacher(target: target, teacher: teacher, teacherShape: teacherShape, outH: studentShape.h, outW: studentShape.w, mode: mode)
        var total: Double = 0
        let k = scale / Float(count)
        for i in 0..<count {
            let d = student[i] - target[i]
            switch norm {
            case .l1:
                total += Double(abs(d))
                gradStudent?[i] = d > 0 ? k : (d < 0 ? -k : 0)
            case .l2:
                total += Double(d * d)
                gradStudent?[i] = 2 * d * k
            }
        }
        return Float(total / Double(count))
    }
}

/// The distillation objective: w_kd * KD(T) + w_px * pixel(mode, norm) + w_ce * CE (CE only on labeled rows).
public struct DistillationObjective: Hashable, Sendable, Codable {
    /// Weight of the KD term (0 disables it).
    public var kdWeight: Float
    /// Softmax temperature of the KD term.
    public var temperature: Float
    /// Weight of the pixel term (0 disables it).
    public var pixelWeight: Float
    /// How the teacher's map is resized for the pixel term.
    public var pixelResize: PixelResize
    /// L1 or L2 pixel term.
    public var pixelNorm: PixelNorm
    /// Weight of the cross-entropy term on labeled tiles (0 disables it).
    public var crossEntropyWeight: Float
    /// Label smoothing ε of the cross-entropy term (0: none).
    public var labelSmoothing: Float = 0
    /// True when cross-entropy is the only term (KD and pixel weights 0): a batch without a labeled tile teaches nothing.
    public var labelsOnly: Bool { crossEntropyWeight != 0 && kdWeight == 0 && pixelWeight == 0 }

    /// The paper's defaults: KD with T = 4 plus an L2 pixel term on the max-pooled teacher map, no labels.
    public init(kdWeight: Float = 1, temperature: Float = 4, pixelWeight: Float = 1, pixelResize: PixelResize = .maxpool,
                pixelNorm: PixelNorm = .l2, crossEntropyWeight: Float = 0) {
        self.kdWeight = kdWeight; self.temperature = temperature; self.pixelWeight = pixelWeight
        self.pixelResize = pixelResize; self.pixelNorm = pixelNorm; self.crossEntropyWeight = crossEntropyWeight
    }

    /// Largest temperature accepted: beyond it the softened distributions are uniform to float32 precision and
    /// KL(T) x T^2 is rounding noise (at T = 1e4 it comes out negative).
    public static let maximumTemperature: Float = 100
    /// Largest term weight accepted: beyond it the weighted loss and its gradients overflow float32 (Adam's second
    /// moment squares them) long before any balance between the terms is struck.
    public static let maximumWeight: Float = 1_000_000
    /// Smallest non-zero term weight and smallest temperature accepted: below them a term contributes nothing.
    public static let minimumWeight: Float = 1e-6, minimumTemperature: Float = 0.01

    /// What is wrong with these settings, one per problem: the field at fault ("temperature", "kd_weight",
    /// "pixel_weight" or "ce_weight") and what to say after its name; `name(field)` names other fields in the text
    /// (as a config key or a command-line flag). Empty when the objective can train.
    public func problems(naming name: (String) -> String) -> [(field: String, text: String)] {
        var out: [(field: String, text: String)] = []
        if !(temperature > 0 && temperature.isFinite) {
            out.append(("temperature", "must be positive (the paper uses 4), got \(temperature)"))
        } else if temperature < Self.minimumTemperature {
            out.append(("temperature", "must be at least \(Self.minimumTemperature) (the paper uses 4; 1 to 20 is usual), got \(temperature): below it KL(T) x T^2 vanishes and the KD term with it"))
        } else if temperature > Self.maximumTemperature {
            out.append(("temperature", "must be at most \(Int(Self.maximumTemperature)) (the paper uses 4; 1 to 20 is usual), got \(temperature): beyond it the softened distributions are uniform to float32 precision and the KD term is rounding noise"))
        }
        for (field, v) in [("kd_weight", kdWeight), ("pixel_weight", pixelWeight), ("ce_weight", crossEntropyWeight)] {
            if !(v >= 0) || v.isNaN {
                out.append((field, "must be 0 or positive, got \(v)"))
            } else if v > Self.maximumWeight {
                out.append((field, "must be at most \(Int(Self.maximumWeight)), got \(v): a weight this large overflows float32 losses and gradients. Hint: the weights set the terms' balance, so scale the other terms down instead."))
            } else if v > 0 && v < Self.minimumWeight {
                out.append((field, "must be 0 (off) or at least \(Self.minimumWeight), got \(v): a term weighted less contributes nothing a float32 loss can hold. Hint: set it to 0 to turn the term off."))
            }
        }
        if kdWeight == 0 && pixelWeight == 0 && crossEntropyWeight == 0 {
            out.append(("kd_weight", "is 0, and so are \(name("pixel_weight")) and \(name("ce_weight")): the student would learn nothing. Hint: the paper's setting is a KD weight of 1 and a pixel weight of 1."))
        }
        return out
    }

    /// "KD T=4 x1, pixel l2 maxpool x1, CE x0".
    public var summary: String {
        "KD T=\(temperature) x\(kdWeight), pixel \(pixelNorm.rawValue) \(pixelResize.rawValue) x\(pixelWeight), CE x\(crossEntropyWeight)"
    }

    /// The value of each term (unweighted) and the weighted total.
    public struct Terms: Sendable, Equatable {
        public var kd: Float, pixel: Float, crossEntropy: Float, total: Float
        public init(kd: Float = 0, pixel: Float = 0, crossEntropy: Float = 0, total: Float = 0) {
            self.kd = kd; self.pixel = pixel; self.crossEntropy = crossEntropy; self.total = total
        }
    }

    /// Computes every enabled term and writes the gradient of the weighted total with respect to the student's
    /// logits (n, classes) and feature map into `gradLogits` and `gradMap` (both overwritten).
    /// `crossEntropyScale` multiplies the cross-entropy term and its gradient (a data-parallel step uses it so that
    /// CE averages over the labeled tiles of the whole global batch, whatever each rank holds).
    public func evaluate(
        studentLogits: UnsafePointer<Float>, teacherLogits: UnsafePointer<Float>, n: Int, classes: Int,
        studentMap: UnsafePointer<Float>, studentMapShape: NCHW, teacherMap: UnsafePointer<Float>, teacherMapShape: NCHW,
        labels: UnsafePointer<Int32>?, gradLogits: UnsafeMutablePointer<Float>, gradMap: UnsafeMutablePointer<Float>,
        crossEntropyScale: Float = 1
    ) -> Terms {
        zeroFill(gradLogits, n * classes)
        zeroFill(gradMap, studentMapShape.count)
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: n * classes)
        defer { scratch.deallocate() }
        var terms = Terms(kd: 0, pixel: 0, crossEntropy: 0, total: 0)
        if kdWeight != 0 {
            terms.kd = DistillationKL.forwardBackward(student: studentLogits, teacher: teacherLogits, n: n, classes: classes,
                                                      temperature: temperature, gradStudent: scratch, scale: kdWeight)
            accumulate(gradLogits, scratch, count: n * classes)
        }
        if crossEntropyWeight != 0, let labels {
            terms.crossEntropy = CrossEntropy.forwardBackward(logits: studentLogits, labels: labels, n: n, classes: classes,
                                                              gradLogits: scratch, scale: crossEntropyWeight * crossEntropyScale,
                                                              labelSmoothing: labelSmoothing)
            if crossEntropyScale != 1 { terms.crossEntropy *= crossEntropyScale }
            accumulate(gradLogits, scratch, count: n * classes)
        }
        if pixelWeight != 0 {
            terms.pixel = PixelLoss.forwardBackward(student: studentMap, studentShape: studentMapShape, teacher: teacherMap,
                                                    teacherShape: teacherMapShape, mode: pixelResize, norm: pixelNorm,
                                                    gradStudent: gradMap, scale: pixelWeight)
        }
        terms.total = kdWeight * terms.kd + pixelWeight * terms.pixel + crossEntropyWeight * terms.crossEntropy
        return terms
    }
}
