// The `histodistill` executable end to end: `cost` reports and clean errors for bad options.
import Foundation
import Testing
import TileShards
import TensorCore

@Suite("Command line")
struct CommandLineTests {
    @Test("cost: parameters, multiply-adds per resolution, activation memory")
    func costCounts() throws {
        let r = try run([try histodistillBinary(), "cost", "--resolutions", "64,32", "--batch", "2"])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        #expect(r.stdout.contains("1,231,525"))
        #expect(r.stdout.contains("| 64 px | 20.55 M | reference |"), "stdout: \(r.stdout)")
        #expect(r.stdout.contains("| 32 px | 5.14 M | 4x fewer |"), "stdout: \(r.stdout)")
    }

    @Test("cost --measure --distill times training, inference and distillation steps")
    func costMeasure() throws {
        let r = try run([try histodistillBinary(), "cost", "--resolutions", "32,16", "--batch", "2", "--measure", "--distill",
                         "--reps", "1", "--steps", "1", "--threads", "1"])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        #expect(r.stdout.contains("train img/s"))
        #expect(r.stdout.contains("teacher 32 px + student 16 px"), "stdout: \(r.stdout)")
    }

    @Test("bad options give one clear line naming the option, a non-zero exit and no crash trace",
          arguments: [["cost", "--model", "vgg"], ["cost", "--resolutions", "224,abc"], ["cost", "--batch", "0"], ["doctor", "--threads", "0"]])
    func badOptions(_ args: [String]) throws {
        let r = try run([try histodistillBinary()] + args)
        #expect(r.status != 0)
        #expect(r.stderr.contains(args[1]), "stderr: \(r.stderr)")
        #expect(!r.stderr.contains("Fatal error") && !r.stderr.contains("Stack dump"), "stderr: \(r.stderr)")
    }
}

@Suite("Command line: shards")
struct ShardCommandTests {
    @Test("pack, inspect and verify an image folder; verify fails naming the file and tile after corruption")
    func packInspectVerify() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-cli-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        for (cls, n) in [("a", 2), ("b", 3)] {
            let d = dir.appendingPathComponent("in/\(cls)")
            try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true)
            for i in 0..<n {
                let px = (0..<(8 * 8 * 3)).map { UInt8(($0 * 7 + i * 31 + cls.count) & 255) }
                try ImageCodec.writePNG(RGBImage(width: 8, height: 8, pixels: px), to: d.appendingPathComponent("\(i).png"))
            }
        }
        let bin = try histodistillBinary()
        let pack = try run([bin, "pack", dir.appendingPathComponent("in").path, "-o", dir.appendingPathComponent("out").path])
        #expect(pack.status == 0, "\(pack.stderr)")
        #expect(pack.stdout.contains("packed 5 tiles from 5 images of 2 classes (a, b)"))
        let inspect = try run([bin, "inspect", dir.appendingPathComponent("out").path])
        #expect(inspect.stdout.contains("a: 2") && inspect.stdout.contains("b: 3") && inspect.stdout.contains("8x8 x5"), "\(inspect.stdout)")
        let verify = try run([bin, "verify", dir.appendingPathComponent("out").path])
        #expect(verify.status == 0 && verify.stdout.contains("ok: 1 shard(s), 5 tiles"))

        let shard = dir.appendingPathComponent("out/shard-00000.shard")
        var bytes = try Data(contentsOf: shard)
        bytes[16 + 3] ^= 0xFF   // inside the first frame
        let entries = try ShardReader(url: shard).entries
        bytes[Int(entries[3].offset) + Int(entries[3].compressedSize) / 2] ^= 0x5A   // and the fourth tile's
        try bytes.write(to: shard)
        let bad = try run([bin, "verify", shard.path])
        #expect(bad.status != 0)
        // Every damaged tile is listed, not only the first.
        #expect(bad.stderr.contains(shard.path) && bad.stderr.contains("tile 0 ") && bad.stderr.contains("tile 3 ") && !bad.stderr.contains("tile 1 "), "\(bad.stderr)")
        #expect(bad.stderr.contains("2 damaged tile(s) in 1 of 1 shard(s)"), "\(bad.stderr)")
        #expect(!bad.stderr.contains("Fatal error"))
    }

    @Test("pack of a missing folder fails with one clear line")
    func packMissing() throws {
        let r = try run([try histodistillBinary(), "pack", "/nonexistent/folder", "-o", "/tmp/x"])
        #expect(r.status != 0 && r.stderr.contains("/nonexistent/folder") && !r.stderr.contains("Fatal error"), "\(r.stderr)")
    }

    @Test("OpenBLAS kernels: an older family (simulated) makes the program restart itself with the CPU's best, which doctor explains; a family the library lacks ends in OpenBLAS's own choice, said once")
    func kernelRestart() throws {
        let bin = try histodistillBinary()
        let best = CPUCapabilities.current.bestOpenBLASCore
        guard KernelSelection.candidates(best: best).count > 0 else { print("skipping: no AVX2 on this CPU"); return }
        // The automatic choice is made only when the user has not chosen: a machine whose environment sets
        // OPENBLAS_CORETYPE (some images do) must not turn this into a test of the user's choice.
        let r = try run([bin, "doctor"], environment: [KernelSelection.simulateVariable: "Prescott"], unsetting: ["OPENBLAS_CORETYPE"])
        #expect(r.status == 0 && r.stdout.contains("chosen by histodistill: OpenBLAS picked Prescott") && r.stdout.contains("self-check passed"), "\(r.stdout) \(r.stderr)")
        #expect(!r.stdout.contains("warning:"), "no warning when all is well: \(r.stdout)")
        let gaveUp = try run([bin, "doctor"], environment: ["OPENBLAS_CORETYPE": "NoSuchCore", KernelSelection.autoVariable: "1",
                                                            KernelSelection.triedVariable: KernelSelection.candidates(best: best).joined(separator: ",")])
        #expect(gaveUp.status == 0 && gaveUp.stdout.contains("OpenBLAS's own choice: histodistill's choice was given up"), "\(gaveUp.stdout) \(gaveUp.stderr)")
        let user = try run([bin, "doctor"], environment: ["OPENBLAS_CORETYPE": "Prescott"])
        #expect(user.stdout.contains("as OPENBLAS_CORETYPE=Prescott in the environment asks") && user.stdout.contains("warning: OpenBLAS is using Prescott"), "\(user.stdout)")
    }
}
