// swift-tools-version: 6.0
// HistoDistill: resolution-based self-supervised knowledge distillation for histology on CPU clusters.
import PackageDescription

let package = Package(
    name: "HistoDistill",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "histodistill", targets: ["HistoDistillCLI"]),
        .executable(name: "histodistill-bench", targets: ["ConvBench"]),
        .library(name: "TensorCore", targets: ["TensorCore"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.1"),
        .package(url: "https://github.com/yaslab/CSV.swift", from: "2.5.2"),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
    ],
    targets: [
        // System libraries, found through pkg-config (Debian: libopenblas-dev, libzstd-dev, libopenmpi-dev, libopenslide-dev).
        .systemLibrary(
            name: "COpenBLAS", pkgConfig: "openblas",
            providers: [.apt(["libopenblas-dev"]), .brew(["openblas"])]),
        .systemLibrary(
            name: "CZstd", pkgConfig: "libzstd",
            providers: [.apt(["libzstd-dev"]), .brew(["zstd"])]),
        .systemLibrary(
            name: "CMPI", pkgConfig: "ompi-c",
            providers: [.apt(["libopenmpi-dev", "openmpi-bin"]), .brew(["open-mpi"])]),
        .systemLibrary(
            name: "COpenSlide", pkgConfig: "openslide",
            providers: [.apt(["libopenslide-dev"]), .brew(["openslide"])]),

        // Image codecs (libjpeg-turbo, libpng, libtiff) behind error codes: C because libjpeg reports errors by longjmp.
        .target(
            name: "CImageCodecs",
            linkerSettings: [.linkedLibrary("jpeg"), .linkedLibrary("png16"), .linkedLibrary("tiff")]),

        // Tile shards: format, writer, reader, image folders, whole-slide images. The only module that uses zstd,
        // image codecs and OpenSlide.
        // CSV files (manifests in, predictions out) through yaslab/CSV.swift.
        .target(name: "TileShards", dependencies: ["CZstd", "CImageCodecs", "COpenSlide", "CKernels", "TensorCore", .product(name: "CSV", package: "CSV.swift")]),

        // C kernels: the direct convolution's AVX-512 micro-kernels (runtime check), and branch-free elementwise,
        // pooling and optimizer loops built for AVX-512 / AVX2 / baseline (picked at load time); CRC-32 through zlib.
        .target(name: "CKernels", cSettings: [.unsafeFlags(["-O3", "-fno-math-errno"])], linkerSettings: [.linkedLibrary("z")]),

        // The engine: tensors, flat parameters, BLAS facade, parallel-for, kernels. No MPI, no file I/O.
        .target(name: "TensorCore", dependencies: ["COpenBLAS", "CKernels"]),

        // Models: ResNets (GroupNorm / BatchNorm, torchvision names), the attention-MIL head, losses.
        .target(name: "Layers", dependencies: ["TensorCore"]),

        // The MPI process group and launch detection. The only module that imports MPI.
        .target(name: "Distributed", dependencies: ["CMPI", "CKernels", "Training"]),

        // Configs, optimizers, schedules, weights I/O, the trainer, checkpoints, the process-group protocol.
        // TensorBoard event files: Event protobufs generated from TensorBoard/event.proto (committed event.pb.swift).
        .target(name: "Training", dependencies: ["Layers", "CKernels", "SafeTensors", "TileShards", .product(name: "Yams", package: "Yams"),
                                                 .product(name: "SwiftProtobuf", package: "swift-protobuf")],
                exclude: ["TensorBoard/event.proto"]),

        // safetensors read/write (weights, checkpoints, test fixtures).
        .target(name: "SafeTensors"),

        .executableTarget(
            name: "HistoDistillCLI",
            dependencies: [
                "TensorCore", "Layers", "Training", "Distributed", "TileShards", "CZstd",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),
        .executableTarget(name: "ConvBench", dependencies: ["TensorCore", "CKernels"]),

        .testTarget(name: "TensorCoreTests", dependencies: ["TensorCore", "SafeTensors"]),
        .testTarget(name: "TileShardsTests", dependencies: ["TileShards", "TensorCore", "SafeTensors"]),
        .testTarget(name: "LayersTests", dependencies: ["Layers", "Training", "SafeTensors"]),
        .testTarget(name: "DistributedTests", dependencies: ["Distributed", "HistoDistillCLI", "TileShards", "Layers", "Training", "TensorCore"]),
    ]
)
