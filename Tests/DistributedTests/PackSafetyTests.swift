// pack never mixes two shard sets, never makes an empty class, and refuses impossible microns per pixel;
// verify and the dataset refuse a directory that is not one complete packing.
import Foundation
import Testing
@testable import TileShards

@Suite("Pack safety")
struct PackSafetyTests {
    @Test("a non-empty output is refused; --overwrite replaces the whole set and keeps other files; a mixed directory is refused by verify and the dataset")
    func oneSetPerDirectory() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-packsafety-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let bin = try histodistillBinary()
        _ = try classShards(dir, name: "first", classes: ["a", "b"], count: 3)
        _ = try classShards(dir, name: "second", classes: ["a", "b"], count: 5)
        let out = dir.appendingPathComponent("out")
        let a = try run([bin, "pack", dir.appendingPathComponent("in-first").path, "-o", out.path])
        #expect(a.status == 0, "\(a.stderr)")
        try "notes".write(to: out.appendingPathComponent("README.txt"), atomically: true, encoding: .utf8)
        let b = try run([bin, "pack", dir.appendingPathComponent("in-second").path, "-o", out.path])
        #expect(b.status != 0 && b.stderr.contains("already holds 1 shard file") && b.stderr.contains("--overwrite"), "\(b.stderr)")
        #expect(try ShardDataset(directory: out).count == 6, "the first set is untouched")
        let c = try run([bin, "pack", dir.appendingPathComponent("in-second").path, "-o", out.path, "--overwrite"])
        #expect(c.status == 0, "\(c.stderr)")
        #expect(try ShardDataset(directory: out).count == 10)
        #expect(try String(contentsOf: out.appendingPathComponent("README.txt"), encoding: .utf8) == "notes")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.contains(".tmp-") || $0.contains(".old-") }.isEmpty)
        // Two packings in one directory (copied together by hand): refused by the dataset and by verify.
        let mixed = dir.appendingPathComponent("mixed")
        try FileManager.default.createDirectory(at: mixed, withIntermediateDirectories: true)
        try FileManager.default.copyItem(at: dir.appendingPathComponent("first/shard-00000.shard"), to: mixed.appendingPathComponent("shard-00000.shard"))
        try FileManager.default.copyItem(at: dir.appendingPathComponent("second/shard-00000.shard"), to: mixed.appendingPathComponent("shard-00001.shard"))
        let e = #expect(throws: ShardError.self) { _ = try ShardDataset(directory: mixed) }
        #expect(e?.message.contains("not one complete packing") == true, "\(String(describing: e))")
        let v = try run([bin, "verify", mixed.path])
        #expect(v.status != 0 && v.stderr.contains("not one complete packing"), "\(v.stderr)")
        // inspect describes such a directory, and warns that it is not one packing.
        let i = try run([bin, "inspect", mixed.path])
        #expect(i.status == 0 && i.stdout.contains("2 shard(s), 16 tiles") && i.stderr.contains("warning: \(mixed.path): its shards are not one complete packing"), "\(i.stderr)")
        #expect(try run([bin, "inspect", dir.appendingPathComponent("first").path]).stderr.isEmpty)
        // A pack that fails leaves no directory it made (here: an unreadable image, without --skip-bad).
        let bad = dir.appendingPathComponent("in-bad/a")
        try FileManager.default.createDirectory(at: bad, withIntermediateDirectories: true)
        try Data("not an image".utf8).write(to: bad.appendingPathComponent("broken.png"))
        let failed = dir.appendingPathComponent("new/out")
        let p = try run([bin, "pack", dir.appendingPathComponent("in-bad").path, "-o", failed.path])
        #expect(p.status != 0 && p.stderr.contains("broken.png"), "\(p.stderr)")
        #expect(!FileManager.default.fileExists(atPath: dir.appendingPathComponent("new").path), "the failed pack's directories were left behind")
        #expect(FileManager.default.fileExists(atPath: dir.appendingPathComponent("in-bad/a/broken.png").path))
        // Shards of two packings of the same images (labeled, and unlabeled) numbered as one set: told apart by the
        // packing id every shard records, where index and count alone would match.
        let input = dir.appendingPathComponent("in-second")
        var shardSets: [URL] = []
        for unlabeled in [false, true] {
            var options = PackOptions(output: dir.appendingPathComponent("two-\(unlabeled)"))
            options.targetShardBytes = 2000
            let report = try Packer.pack(try PackPlan.imageFolder(input, unlabeled: unlabeled), options: options)
            #expect(report.shards.count >= 2)
            shardSets.append(options.output)
        }
        let relabeled = dir.appendingPathComponent("relabeled")
        try FileManager.default.createDirectory(at: relabeled, withIntermediateDirectories: true)
        let names = try FileManager.default.contentsOfDirectory(atPath: shardSets[0].path).filter { $0.hasSuffix(".shard") }.sorted()
        for (k, name) in names.enumerated() { try FileManager.default.copyItem(at: shardSets[k == 1 ? 1 : 0].appendingPathComponent(name), to: relabeled.appendingPathComponent(name)) }
        let two = #expect(throws: ShardError.self) { _ = try ShardDataset(directory: relabeled) }
        #expect(two?.message.contains("not one complete packing") == true && two?.message.contains("packing ") == true, "\(String(describing: two))")
        #expect(try ShardDataset(directory: shardSets[1]).count == 10, "one packing alone is one set")
    }

    @Test("an empty class folder is named (or kept with --allow-empty-classes); impossible microns per pixel are refused at start")
    func emptyClassesAndScale() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("histodistill-packclasses-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let bin = try histodistillBinary()
        _ = try classShards(dir, name: "s", classes: ["a", "b"], count: 2)
        let input = dir.appendingPathComponent("in-s")
        try FileManager.default.createDirectory(at: input.appendingPathComponent("c"), withIntermediateDirectories: true)
        let r = try run([bin, "pack", input.path, "-o", dir.appendingPathComponent("x").path])
        #expect(r.status != 0 && r.stderr.contains("in-s/c") && r.stderr.contains("--allow-empty-classes"), "\(r.stderr)")
        let ok = try run([bin, "pack", input.path, "-o", dir.appendingPathComponent("y").path, "--allow-empty-classes"])
        #expect(ok.status == 0 && ok.stdout.contains("3 classes (a, b, c)"), "\(ok.stdout) \(ok.stderr)")
        for bad in ["0", "-0.5", "500", "nan"] {
            let m = try run([bin, "pack", input.path, "-o", dir.appendingPathComponent("z\(bad)").path, "--allow-empty-classes", "--microns-per-pixel=\(bad)"])
            #expect(m.status != 0 && m.stderr.contains("--microns-per-pixel must be"), "\(bad): \(m.stderr)")
            #expect(!FileManager.default.fileExists(atPath: dir.appendingPathComponent("z\(bad)").path), "refused before anything is written")
        }
    }
}
