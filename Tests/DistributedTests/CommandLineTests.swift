// The `histodistill` executable end to end: `cost` reports and clean errors for bad options.
import Foundation
import Testing

@Suite("Command line")
struct CommandLineTests {
    @Test("cost: parameters, multiply-adds per resolution, activation memory")
    func costCounts() throws {
        let r = try run([try histodistillBinary(), "cost", "--resolutions", "64,32", "--batch", "2"])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        #expect(r.stdout.contains("1,231,525"))
        #expect(r.stdout.contains("| 64 px | 20.55 M | 1x fewer |"), "stdout: \(r.stdout)")
        #expect(r.stdout.contains("| 32 px |"))
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
