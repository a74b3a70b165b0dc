// Benchmark: GFLOP/s of conv forward and backward for every conv of the paper's model, next to square sgemm.
//
// Usage: histodistill-bench [--resolution 224] [--batch 32] [--threads 1,2] [--reps 5] [--min-columns N] [--column-budget FLOATS]
//                           [--algorithm auto|gemm|direct|winograd] [--clock wall|cpu] [--precision 32-true|bf16-mixed] [--no-shift-copies] [--no-winograd]
//        histodistill-bench --peak [--threads 1,2]
// --peak prints the cores' multiply-add roof (register-only VDPBF16PS and float32 FMA loops), against which the
// kernels' GFLOP/s read as a share of what the CPU can issue.
// --clock cpu times with the calling thread's CPU time instead of the wall clock: on a VM whose hypervisor steals CPU
// time, it counts only the time the process actually ran (meaningful for --threads 1).
// Prints a markdown table per thread count. Run with OPENBLAS_CORETYPE unset for the real figures.
import CKernels
import Foundation
import TensorCore

/// Prints a usage error and exits with status 2 (no crash trace for a typo).
func usageError(_ message: String) -> Never {
    FileHandle.standardError.write(Data("histodistill-bench: \(message)\nhint: run histodistill-bench --help\n".utf8))
    exit(2)
}

struct Options {
    var resolution = 224
    var batch = 32
    var threads = [1, 2]
    var reps = 5
    var tiling = ConvTiling.default
    var gemmSize = 2048
    var useMin = false
    var gemmOnly = false
    var algorithm = ConvAlgorithm.automatic
    var cpuClock = false
    var only: String? = nil
    var peak = false

    init(_ args: [String]) {
        var i = 1
        func value() -> String {
            i += 1
            guard i < args.count else { usageError("missing value after \(args[i - 1])") }
            return args[i]
        }
        func int(_ s: String, _ flag: String) -> Int {
            guard let v = Int(s), v > 0 else { usageError("\(flag) takes a positive whole number, got '\(s)'") }
            return v
        }
        while i < args.count {
            switch args[i] {
            case "--resolution": resolution = int(value(), "--resolution")
            case "--batch": batch = int(value(), "--batch")
            case "--threads": threads = value().split(separator: ",").map { int(String($0), "--threads") }
            case "--reps": reps = int(value(), "--reps")
            case "--min-columns": tiling.minColumns = int(value(), "--min-columns")
            case "--column-budget": tiling.columnBudget = int(value(), "--column-budget")
            case "--gemm-size": gemmSize = int(value(), "--gemm-size")
            case "--stat":
                let v = value()
                guard v == "min" || v == "median" else { usageError("--stat takes min or median, got \(v)") }
                useMin = v == "min"
            case "--gemm-only": gemmOnly = true
            case "--peak": peak = true
            case "--no-shift-copies": Conv2d.setShiftCopies(false)
            case "--no-winograd": Winograd.automaticEnabled = false
            case "--clock":
                let v = value()
                guard v == "wall" || v == "cpu" else { usageError("--clock takes wall or cpu, got \(v)") }
                cpuClock = v == "cpu"
            case "--only": only = value()
            case "--precision":
                let v = value()
                guard let p = MatmulPrecision(rawValue: v) else { usageError("--precision takes 32-true or bf16-mixed, got \(v)") }
                BF16GEMM.precision = p
            case "--algorithm":
                switch value() {
                case "auto": algorithm = .automatic
                case "gemm": algorithm = .im2colGEMM
                case "direct": algorithm = .direct
                case "winograd": algorithm = .winograd
                case let v: usageError("--algorithm takes auto, gemm, direct or winograd, got \(v)")
                }
            case "-h", "--help":
                print("histodistill-bench [--resolution 224] [--batch 32] [--threads 1,2] [--reps 5] [--min-columns N] [--column-budget FLOATS] [--gemm-size 2048] [--stat median|min] [--gemm-only] [--algorithm auto|gemm|direct|winograd] [--clock wall|cpu] [--only NAME] [--precision 32-true|bf16-mixed] [--no-shift-copies] [--no-winograd] [--peak]")
                exit(0)
            default: usageError("unknown argument \(args[i])")
            }
            i += 1
        }
    }
}

/// One conv of the model: its shape, how many times it occurs, and whether its input needs a gradient.
struct ConvCase {
    var name: String
    var shape: Conv2dShape
    var occurrences: Int
    var inputGradient: Bool
}

/// Every conv of the paper's ResNet-GN (planes 32/64/128/256, one BasicBlock per stage) at `r` px.
func paperModelConvs(resolution r: Int, batch n: Int) -> [ConvCase] {
    var cases: [ConvCase] = []
    cases.append(ConvCase(name: "conv1 7x7/2", shape: Conv2dShape(n: n, cIn: 3, h: r, w: r, cOut: 32, kernel: 7, stride: 2, padding: 3),
                          occurrences: 1, inputGradient: false))
    var size = (r + 2 * 3 - 7) / 2 + 1
    size = (size + 2 - 3) / 2 + 1   // max-pool 3x3/2 pad 1
    let planes = [32, 64, 128, 256]
    var inPlanes = 32
    for (stage, p) in planes.enumerated() {
        let stride = stage == 0 ? 1 : 2
        let outSize = (size + 2 - 3) / stride + 1
        let l = "layer\(stage + 1)"
        if stride == 1 && inPlanes == p {
            cases.append(ConvCase(name: "\(l) 3x3 (x2)", shape: Conv2dShape(n: n, cIn: p, h: size, w: size, cOut: p, kernel: 3, stride: 1, padding: 1),
                                  occurrences: 2, inputGradient: true))
        } else {
            cases.append(ConvCase(name: "\(l).conv1 3x3/2", shape: Conv2dShape(n: n, cIn: inPlanes, h: size, w: size, cOut: p, kernel: 3, stride: 2, padding: 1),
                                  occurrences: 1, inputGradient: true))
            cases.append(ConvCase(name: "\(l).conv2 3x3", shape: Conv2dShape(n: n, cIn: p, h: outSize, w: outSize, cOut: p, kernel: 3, stride: 1, padding: 1),
                                  occurrences: 1, inputGradient: true))
            cases.append(ConvCase(name: "\(l).downsample 1x1/2", shape: Conv2dShape(n: n, cIn: inPlanes, h: size, w: size, cOut: p, kernel: 1, stride: 2, padding: 0),
                                  occurrences: 1, inputGradient: true))
        }
        inPlanes = p
        size = outSize
    }
    return cases
}

/// Nanoseconds of the chosen clock: wall (monotonic) or the process's CPU time.
func now() -> UInt64 {
    var ts = timespec()
    clock_gettime(options.cpuClock ? CLOCK_THREAD_CPUTIME_ID : CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

func seconds(_ body: () -> Void) -> Double {
    let t0 = now()
    body()
    return Double(now() - t0) / 1e9
}

/// The statistic over repetitions: median, or min (more stable on a machine shared with noisy neighbours).
func median(_ xs: [Double]) -> Double { let s = xs.sorted(); return options.useMin ? s[0] : s[s.count / 2] }

func fill(_ b: Buffer<Float>, seed: UInt64) {
    var state = seed &* 6364136223846793005 &+ 1442695040888963407
    for i in 0..<b.count {
        state = state &* 6364136223846793005 &+ 1442695040888963407
        b[i] = Float(Int64(bitPattern: state >> 11) % 2000) / 1000 - 1
    }
}

let options = Options(CommandLine.arguments)
let env = ProcessInfo.processInfo.environment

/// The multiply-add roof per thread count: `hd_peak_loop` on every thread at once, wall clock, best of the repetitions.
func printPeak() {
    print("# histodistill-bench --peak: register-only multiply-add loops (no memory traffic), best of \(options.reps)")
    print("| threads | bf16 VDPBF16PS GMAC/s | per thread | float32 FMA GMAC/s | per thread |")
    print("|---|---|---|---|---|")
    let iters = 50_000_000
    for t in options.threads {
        var cells: [String] = []
        for (bf16, perRound) in [(Int32(1), 12 * 32), (Int32(0), 12 * 16)] {
            var best = 0.0
            for _ in 0..<options.reps {
                let sums = UnsafeMutableBufferPointer<Double>.allocate(capacity: t)
                defer { sums.deallocate() }
                var ts = timespec(), te = timespec()
                clock_gettime(CLOCK_MONOTONIC, &ts)
                nonisolated(unsafe) let out = sums   // each thread writes its own element
                DispatchQueue.concurrentPerform(iterations: t) { k in out[k] = hd_peak_loop(bf16, iters) }
                clock_gettime(CLOCK_MONOTONIC, &te)
                guard sums.allSatisfy({ $0 > 0 }) else { best = -1; break }
                let sec = Double(te.tv_sec - ts.tv_sec) + Double(te.tv_nsec - ts.tv_nsec) / 1e9
                best = max(best, Double(t * iters * perRound) / sec / 1e9)
            }
            cells += best < 0 ? ["not on this CPU", ""] : [String(format: "%.1f", best), String(format: "%.1f", best / Double(t))]
        }
        print("| \(t) | " + cells.joined(separator: " | ") + " |")
    }
}
if options.peak { printPeak(); exit(0) }
print("# histodistill-bench: conv GFLOP/s vs square sgemm")
print("OpenBLAS \(BLAS.version), kernels \(BLAS.coreName), OPENBLAS_CORETYPE=\(env["OPENBLAS_CORETYPE"] ?? "(unset)"), "
      + "OPENBLAS_L2_SIZE=\(env["OPENBLAS_L2_SIZE"] ?? "(unset)")")
print("clock: \(options.cpuClock ? "CPU time of the calling thread" : "wall"); conv algorithm: \(options.algorithm) (direct kernel available: \(DirectConv.isAvailable))")
print("paper model convs at \(options.resolution) px, batch \(options.batch), \(options.useMin ? "min" : "median") of \(options.reps), tiling: column budget \(options.tiling.columnBudget) floats, min columns \(options.tiling.minColumns)")

/// One conv's buffers, allocated once and reused by every repetition.
struct ConvBuffers {
    let x, w, y, dy, dx, dw: Buffer<Float>
    init(_ s: Conv2dShape) {
        x = Buffer(count: s.inputCount); w = Buffer(count: s.weightCount)
        y = Buffer(count: s.outputCount); dy = Buffer(count: s.outputCount)
        dx = Buffer(count: s.inputCount); dw = Buffer(count: s.weightCount)
        fill(x, seed: 3); fill(w, seed: 4); fill(dy, seed: 5)
    }
}

let cases = paperModelConvs(resolution: options.resolution, batch: options.batch)
    .filter { cc in options.only.map { cc.name.hasPrefix($0) } ?? true }
if cases.isEmpty { usageError("--only \(options.only ?? ""): no conv of the model has that name prefix") }
let buffers = cases.map { ConvBuffers($0.shape) }

for t in options.threads {
    let g = options.gemmSize
    let a = Buffer<Float>(count: g * g), b = Buffer<Float>(count: g * g), c = Buffer<Float>(count: g * g)
    fill(a, seed: 1); fill(b, seed: 2)
    let workspace = Workspace<Float>()
    // Repetitions interleave the square GEMM and every conv, so a machine whose speed drifts (a shared VM) affects
    // the reference and the convs alike. The first repetition warms up and is dropped.
    var gemmTimes: [Double] = [], bf16Times: [Double] = []
    var fwd = [[Double]](repeating: [], count: cases.count), bwd = fwd
    for _ in 0..<(options.reps + 1) {
        // Square GEMM reference: OpenBLAS alone with t threads (the engine keeps OpenBLAS single-threaded).
        BLAS.setThreadCount(t)
        BLAS.setLibraryThreadCount(t)
        gemmTimes.append(seconds {
            Float.gemm(transA: false, transB: false, m: g, n: g, k: g, alpha: 1, a: a.pointer, lda: g, b: b.pointer, ldb: g,
                       beta: 0, c: c.pointer, ldc: g)
        })
        BLAS.setThreadCount(t)
        if BF16GEMM.precision == .bf16Mixed && t == 1 {
            // The same square product with bfloat16 operands (one thread: hd_sgemm_bf16 is single-threaded per call).
            bf16Times.append(seconds {
                BF16GEMM.gemm(transA: false, transB: false, m: g, n: g, k: g, alpha: 1, a: a.pointer, lda: g, b: b.pointer, ldb: g,
                              beta: 0, c: c.pointer, ldc: g)
            })
        }
        for (i, cc) in cases.enumerated() {
            let s = cc.shape, bf = buffers[i]
            fwd[i].append(seconds {
                Conv2d.forward(output: bf.y.pointer, input: bf.x.pointer, weight: bf.w.pointer, bias: nil, shape: s,
                               workspace: workspace, tiling: options.tiling, algorithm: options.algorithm)
            })
            bwd[i].append(seconds {
                Conv2d.backward(gradInput: cc.inputGradient ? bf.dx.pointer : nil, gradWeight: bf.dw.pointer, gradBias: nil,
                                gradOutput: bf.dy.pointer, input: bf.x.pointer, weight: bf.w.pointer, shape: s,
                                workspace: workspace, tiling: options.tiling, algorithm: options.algorithm)
            })
        }
    }
    let gemmRate = 2 * Double(g * g * g) / median(Array(gemmTimes.dropFirst())) / 1e9

    print("\n## \(t) thread\(t > 1 ? "s" : "")\n")
    print("sgemm \(g)x\(g)x\(g): \(String(format: "%.1f", gemmRate)) GFLOP/s\n")
    if bf16Times.count > 1 {
        let rate = 2 * Double(g * g * g) / median(Array(bf16Times.dropFirst())) / 1e9
        print("bf16 GEMM (\(BF16GEMM.kernelDescription)) \(g)x\(g)x\(g): \(String(format: "%.1f", rate)) GFLOP/s\n")
    }
    print("| conv | shape (n, c, h, w) -> cOut | count | fwd ms | fwd GFLOP/s | bwd ms | bwd GFLOP/s | fwd+bwd % of sgemm |")
    print("|---|---|---|---|---|---|---|---|")
    var totalFlops = 0.0, totalTime = 0.0
    for (i, cc) in cases.enumerated() {
        let s = cc.shape, bf = buffers[i]
        let (x, w, y, dw) = (bf.x, bf.w, bf.y, bf.dw)
        let tf = median(Array(fwd[i].dropFirst())), tb = median(Array(bwd[i].dropFirst()))
        if options.gemmOnly {
            // im2col alone over the whole batch in tiles of 1024 columns (what one forward pass writes).
            let tileCols = 1024
            let col = Buffer<Float>(count: s.k * tileCols)
            var ti: [Double] = []
            for _ in 0..<(options.reps + 1) {
                ti.append(seconds {
                    var p = 0
                    let total = s.n * s.outPlane
                    while p < total {
                        let c = min(tileCols, total - p)
                        Conv2d.im2col(col: col.pointer, ld: c, input: x.pointer, start: p, count: c, shape: s)
                        p += c
                    }
                })
            }
            let tim = median(Array(ti.dropFirst()))
            let elements = Double(s.k * s.n * s.outPlane)
            print("  im2col \(cc.name): \(String(format: "%.2f", tim * 1e3)) ms for \(String(format: "%.1f", elements / 1e6)) M elements = \(String(format: "%.2f", elements * 4 / tim / 1e9)) GB/s written")
            // The GEMMs of this conv alone on the whole batch's columns: forward, dW and dX (no im2col).
            let cols = s.n * s.outPlane
            let colBuf = Buffer<Float>(count: s.k * cols), dyBuf = Buffer<Float>(count: s.cOut * cols)
            var g: [Double] = []
            for _ in 0..<(options.reps + 1) {
                g.append(seconds {
                    Float.gemm(transA: false, transB: false, m: s.cOut, n: cols, k: s.k, alpha: 1, a: w.pointer, lda: s.k,
                               b: colBuf.pointer, ldb: cols, beta: 0, c: y.pointer, ldc: cols)
                    Float.gemm(transA: false, transB: true, m: s.cOut, n: s.k, k: cols, alpha: 1, a: dyBuf.pointer, lda: cols,
                               b: colBuf.pointer, ldb: cols, beta: 1, c: dw.pointer, ldc: s.k)
                    if cc.inputGradient {
                        Float.gemm(transA: true, transB: false, m: s.k, n: cols, k: s.cOut, alpha: 1, a: w.pointer, lda: s.k,
                                   b: dyBuf.pointer, ldb: cols, beta: 0, c: colBuf.pointer, ldc: cols)
                    }
                })
            }
            let tg = median(Array(g.dropFirst()))
            print("  gemm-only \(cc.name): \(String(format: "%.1f", (2 * Double(s.macs) * (cc.inputGradient ? 3 : 2)) / tg / 1e9)) GFLOP/s")
        }
        let ff = 2 * Double(s.macs), fb = ff * (cc.inputGradient ? 2 : 1)
        totalFlops += Double(cc.occurrences) * (ff + fb)
        totalTime += Double(cc.occurrences) * (tf + tb)
        let pct = (ff + fb) / (tf + tb) / 1e9 / gemmRate * 100
        print("| \(cc.name) | (\(s.n), \(s.cIn), \(s.h), \(s.w)) -> \(s.cOut) | \(cc.occurrences) | "
              + String(format: "%.2f | %.1f | %.2f | %.1f | %.0f%% |", tf * 1e3, ff / tf / 1e9, tb * 1e3, fb / tb / 1e9, pct))
    }
    let rate = totalFlops / totalTime / 1e9
    print("\nall convs, forward + backward: \(String(format: "%.1f", totalFlops / 1e9)) GFLOP in "
          + "\(String(format: "%.1f", totalTime * 1e3)) ms = \(String(format: "%.1f", rate)) GFLOP/s = "
          + "\(String(format: "%.0f", rate / gemmRate * 100))% of sgemm (target 70%)")
}
