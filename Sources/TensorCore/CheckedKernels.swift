// Shape-checked entry points over `Tensor`s: what layers call. A mismatch stops with a message naming the shapes.

/// Stops with a message naming the kernel and both shapes when `actual` differs from `expected`.
@inline(__always)
func requireShape(_ kernel: String, _ role: String, _ actual: [Int], _ expected: [Int], _ context: @autoclosure () -> String) {
    if actual != expected {
        preconditionFailure("\(kernel): \(role) has shape \(actual), expected \(expected) (\(context()))")
    }
}

extension Conv2d {
    /// The geometry of convolving `input` (n, cIn, h, w) with `weight` (cOut, cIn, kh, kw).
    public static func shape<T>(input: Tensor<T>, weight: Tensor<T>, stride: (Int, Int), padding: (Int, Int)) -> Conv2dShape {
        precondition(input.shape.count == 4 && weight.shape.count == 4,
                     "Conv2d: input \(input.shape) and weight \(weight.shape) must both be rank 4 (NCHW and OIHW)")
        precondition(weight.shape[1] == input.shape[1],
                     "Conv2d: weight \(weight.shape) expects \(weight.shape[1]) input channels but input is \(input.shape)")
        return Conv2dShape(n: input.shape[0], cIn: input.shape[1], h: input.shape[2], w: input.shape[3], cOut: weight.shape[0],
                           kernel: (weight.shape[2], weight.shape[3]), stride: stride, padding: padding)
    }

    /// Shape-checked forward: output (n, cOut, outH, outW), input (n, cIn, h, w), weight (cOut, cIn, kh, kw), bias (cOut).
    public static func forward<T: KernelScalar>(
        output: Tensor<T>, input: Tensor<T>, weight: Tensor<T>, bias: Tensor<T>?,
        stride: (Int, Int) = (1, 1), padding: (Int, Int) = (0, 0), workspace: Workspace<T>
    ) {
        let s = shape(input: input, weight: weight, stride: stride, padding: padding)
        requireShape("Conv2d.forward", "output", output.shape, [s.n, s.cOut, s.outH, s.outW], "input \(input.shape), weight \(weight.shape)")
        if let bias { requireShape("Conv2d.forward", "bias", bias.shape, [s.cOut], "weight \(weight.shape)") }
        forward(output: output.data, input: input.data, weight: weight.data, bias: bias?.data, shape: s, workspace: workspace)
    }

    /// Shape-checked backward; gradients have the shapes of what they are gradients of.
    public static func backward<T: KernelScalar>(
        gradInput: Tensor<T>?, gradWeight: Tensor<T>, gradBias: Tensor<T>?, gradOutput: Tensor<T>,
        input: Tensor<T>, weight: Tensor<T>, stride: (Int, Int) = (1, 1), padding: (Int, Int) = (0, 0),
        workspace: Workspace<T>
    ) {
        let s = shape(input: input, weight: weight, stride: stride, padding: padding)
        requireShape("Conv2d.backward", "gradOutput", gradOutput.shape, [s.n, s.cOut, s.outH, s.outW], "input \(input.shape), weight \(weight.shape)")
        requireShape("Conv2d.backward", "gradWeight", gradWeight.shape, weight.shape, "weight")
        if let gradInput { requireShape("Conv2d.backward", "gradInput", gradInput.shape, input.shape, "input") }
        if let gradBias { requireShape("Conv2d.backward", "gradBias", gradBias.shape, [s.cOut], "weight \(weight.shape)") }
        backward(gradInput: gradInput?.data, gradWeight: gradWeight.data, gradBias: gradBias?.data, gradOutput: gradOutput.data,
                 input: input.data, weight: weight.data, shape: s, workspace: workspace)
    }
}

extension GroupNorm {
    /// Shape-checked forward: output and input (n, c, h, w), mean and rstd (n, groups), weight and bias (c).
    public static func forward<T: KernelScalar>(
        output: Tensor<T>, mean: Tensor<T>, rstd: Tensor<T>, input: Tensor<T>, weight: Tensor<T>, bias: Tensor<T>, groups: Int
    ) {
        let s = input.nchw
        requireShape("GroupNorm.forward", "output", output.shape, input.shape, "input")
        requireShape("GroupNorm.forward", "weight", weight.shape, [s.c], "input \(input.shape)")
        requireShape("GroupNorm.forward", "bias", bias.shape, [s.c], "input \(input.shape)")
        requireShape("GroupNorm.forward", "mean", mean.shape, [s.n, groups], "input \(input.shape), \(groups) groups")
        requireShape("GroupNorm.forward", "rstd", rstd.shape, [s.n, groups], "input \(input.shape), \(groups) groups")
        forward(output: output.data, mean: mean.data, rstd: rstd.data, input: input.data, weight: weight.data,
                bias: bias.data, shape: s, groups: groups)
    }
}

extension Linear {
    /// Shape-checked forward: output (n, out), input (n, in), weight (out, in), bias (out).
    public static func forward<T: KernelScalar>(output: Tensor<T>, input: Tensor<T>, weight: Tensor<T>, bias: Tensor<T>?) {
        precondition(input.shape.count == 2 && weight.shape.count == 2,
                     "Linear.forward: input \(input.shape) and weight \(weight.shape) must be rank 2")
        precondition(weight.shape[1] == input.shape[1],
                     "Linear.forward: weight \(weight.shape) expects \(weight.shape[1]) features but input is \(input.shape)")
        requireShape("Linear.forward", "output", output.shape, [input.shape[0], weight.shape[0]], "input \(input.shape), weight \(weight.shape)")
        if let bias { requireShape("Linear.forward", "bias", bias.shape, [weight.shape[0]], "weight \(weight.shape)") }
        forward(output: output.data, input: input.data, weight: weight.data, bias: bias?.data,
                n: input.shape[0], inFeatures: input.shape[1], outFeatures: weight.shape[0])
    }
}

extension Add {
    /// Shape-checked forward: all three tensors have the same shape.
    public static func forward<T: KernelScalar>(output: Tensor<T>, a: Tensor<T>, b: Tensor<T>) {
        requireShape("Add.forward", "b", b.shape, a.shape, "a")
        requireShape("Add.forward", "output", output.shape, a.shape, "a")
        forward(output: output.data, a: a.data, b: b.data, count: a.count)
    }
}

extension BicubicResize {
    /// Shape-checked forward: output (n, c, outH, outW) from input (n, c, h, w).
    public static func forward<T: KernelScalar>(output: Tensor<T>, input: Tensor<T>) {
        let s = input.nchw, o = output.nchw
        precondition(o.n == s.n && o.c == s.c, "BicubicResize.forward: output \(output.shape) and input \(input.shape) differ in batch or channels")
        forward(output: output.data, input: input.data, shape: s, outH: o.h, outW: o.w)
    }
}

extension AdaptiveMaxPool2d {
    /// Shape-checked forward: output and indices (n, c, outH, outW) from input (n, c, h, w).
    public static func forward<T: KernelScalar>(output: Tensor<T>, indices: UnsafeMutablePointer<Int32>, input: Tensor<T>) {
        let s = input.nchw, o = output.nchw
        precondition(o.n == s.n && o.c == s.c, "AdaptiveMaxPool2d.forward: output \(output.shape) and input \(input.shape) differ in batch or channels")
        forward(output: output.data, indices: indices, input: input.data, shape: s, outH: o.h, outW: o.w)
    }
}
