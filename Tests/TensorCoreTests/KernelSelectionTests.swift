// The start-up choice of OpenBLAS kernels: restart with the best family when OpenBLAS falls back to an older one,
// try the next family when the library lacks one, give up cleanly, respect the user's choice; the GEMM self-check.
import Testing
@testable import TensorCore

@Suite("OpenBLAS kernel selection")
struct KernelSelectionTests {
    let auto = KernelSelection.autoVariable, tried = KernelSelection.triedVariable

    @Test("an OpenBLAS that falls back to Prescott on Sapphire Rapids restarts with SapphireRapids, then Cooperlake, then SkylakeX, then gives up")
    func fallbackChain() {
        let first = KernelSelection.decide(cpuBest: "SapphireRapids", loaded: "Prescott", env: [:])
        #expect(first == .restart(["OPENBLAS_CORETYPE": "SapphireRapids", auto: "1", tried: "SapphireRapids", KernelSelection.originalVariable: "Prescott"]))
        // The library lacks SapphireRapids (it loaded Prescott again): the next family.
        let second = KernelSelection.decide(cpuBest: "SapphireRapids", loaded: "Prescott",
                                            env: ["OPENBLAS_CORETYPE": "SapphireRapids", auto: "1", tried: "SapphireRapids"])
        #expect(second == .restart(["OPENBLAS_CORETYPE": "Cooperlake", tried: "SapphireRapids,Cooperlake"]))
        // It has SkylakeX: keep.
        #expect(KernelSelection.decide(cpuBest: "SapphireRapids", loaded: "SkylakeX",
                                       env: ["OPENBLAS_CORETYPE": "SkylakeX", auto: "1", tried: "SapphireRapids,Cooperlake,SkylakeX"]) == .keep)
        // None of them: OpenBLAS's own choice, with the reason.
        let none = KernelSelection.decide(cpuBest: "SapphireRapids", loaded: "Prescott",
                                          env: ["OPENBLAS_CORETYPE": "SkylakeX", auto: "1", tried: "SapphireRapids,Cooperlake,SkylakeX"])
        guard case .restart(let v) = none else { Issue.record("expected a restart, got \(none)"); return }
        #expect(v["OPENBLAS_CORETYPE"] == .some(nil) && v[auto] == "failed" && (v[KernelSelection.reasonVariable] ?? "")?.contains("has none of") == true)
        #expect(KernelSelection.decide(cpuBest: "SapphireRapids", loaded: "Prescott", env: [auto: "failed"]) == .keep)
    }

    @Test("no restart when OpenBLAS already runs the CPU's vector class, when the user chose a family, or when turned off")
    func keep() {
        #expect(KernelSelection.decide(cpuBest: "Haswell", loaded: "Zen", env: [:]) == .keep)
        #expect(KernelSelection.decide(cpuBest: "SkylakeX", loaded: "SkylakeX", env: [:]) == .keep)
        #expect(KernelSelection.decide(cpuBest: "SapphireRapids", loaded: "Cooperlake", env: [:]) == .keep)
        #expect(KernelSelection.decide(cpuBest: "SkylakeX", loaded: "Prescott", env: ["OPENBLAS_CORETYPE": "Prescott"]) == .keep)
        #expect(KernelSelection.decide(cpuBest: "SkylakeX", loaded: "Prescott", env: [KernelSelection.enableVariable: "0"]) == .keep)
        // The simulation aid stands in for what OpenBLAS loaded.
        #expect(KernelSelection.decide(cpuBest: "Haswell", loaded: "Zen", env: [KernelSelection.simulateVariable: "Prescott"])
                == .restart(["OPENBLAS_CORETYPE": "Haswell", auto: "1", tried: "Haswell", KernelSelection.originalVariable: "Prescott"]))
    }

    @Test("the GEMM self-check passes with the kernels in use and fails with a GEMM that computes wrong results")
    func selfCheck() {
        #expect(KernelSelection.gemmSelfCheck())
        // B read untransposed: a wrong product of the right shape.
        #expect(!KernelSelection.gemmSelfCheck { ta, _, m, n, k, al, a, lda, b, _, be, c, ldc in
            Float.gemm(transA: ta, transB: false, m: m, n: n, k: k, alpha: al, a: a, lda: lda, b: b, ldb: n, beta: be, c: c, ldc: ldc)
        })
        // One element off by 1%.
        #expect(!KernelSelection.gemmSelfCheck { ta, tb, m, n, k, al, a, lda, b, ldb, be, c, ldc in
            Float.gemm(transA: ta, transB: tb, m: m, n: n, k: k, alpha: al, a: a, lda: lda, b: b, ldb: ldb, beta: be, c: c, ldc: ldc)
            c[7] += 0.01 * max(1, abs(c[7]))
        })
    }
}
