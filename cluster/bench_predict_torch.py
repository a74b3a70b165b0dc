#!/usr/bin/env python3
"""PyTorch side of the slide-scale inference benchmark (docs/benchmarks.md, "Slide-scale inference"): the same
tiles as `histodistill predict`, read from the same shards, through a torch DataLoader: zstd decode, uint8 -> float,
normalise, area downsample by FACTOR (avg_pool2d, = histodistill's area downsampling), the paper's ResNet-GN
forward in eval mode under no_grad, softmax. Reports tiles/s, the median of REPS passes over the tiles.

usage: bench_predict_torch.py SHARD_DIR FACTOR [--threads N] [--workers W] [--batch B] [--reps R] [--max-tiles N]
Needs torch and zstandard (pip install torch zstandard). The shard format: docs/shard-format.md.
"""
import argparse, glob, json, os, statistics, struct, sys, time
import numpy as np
import torch, torch.nn.functional as F
import zstandard

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "anchors", "pytorch"))


def read_index(path):
    """(offset, size, width, height, label) per tile and the metadata, from a shard's footer and index."""
    with open(path, "rb") as f:
        f.seek(-64, os.SEEK_END)
        footer = f.read(64)
        index_offset, count, meta_offset, meta_length = struct.unpack_from("<QQQQ", footer, 0)
        assert footer[56:64] == b"HDSHEND1", f"{path}: not a histodistill shard"
        f.seek(index_offset)
        index = f.read(48 * count)
        f.seek(meta_offset)
        meta = json.loads(f.read(meta_length))
    tiles = []
    for i in range(count):
        off, size, _crc, w, h, label = struct.unpack_from("<QIIHHi", index, 48 * i)
        tiles.append((off, size, w, h, label))
    return tiles, meta


class ShardTiles(torch.utils.data.Dataset):
    def __init__(self, directory, mean, std, factor, max_tiles=None):
        self.items = []
        for path in sorted(glob.glob(os.path.join(directory, "*.shard"))):
            tiles, meta = read_index(path)
            planar = meta.get("filter", "none") == "planar-delta"
            self.items += [(path, planar) + t for t in tiles]
        if max_tiles: self.items = self.items[:max_tiles]
        self.mean = torch.tensor(mean).view(3, 1, 1); self.std = torch.tensor(std).view(3, 1, 1)
        self.factor = factor; self.files = {}; self.dctx = None

    def __len__(self): return len(self.items)

    def __getitem__(self, i):
        path, planar, off, size, w, h, label = self.items[i]
        if self.dctx is None: self.dctx = zstandard.ZstdDecompressor()
        f = self.files.get(path) or self.files.setdefault(path, open(path, "rb"))
        f.seek(off)
        raw = self.dctx.decompress(f.read(size), max_output_size=w * h * 3)
        if planar:   # three planes, each row delta-coded from its left neighbour (mod 256): a running sum undoes it
            rgb = np.cumsum(np.frombuffer(raw, dtype=np.uint8).reshape(3, h, w), axis=2, dtype=np.uint8)
            x = torch.from_numpy(rgb).float().div_(255)
        else:
            x = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(h, w, 3).permute(2, 0, 1).float().div_(255)
        if self.factor > 1: x = F.avg_pool2d(x.unsqueeze(0), self.factor).squeeze(0)
        return (x - self.mean) / self.std, label


def main():
    p = argparse.ArgumentParser()
    p.add_argument("shards"); p.add_argument("factor", type=int)
    p.add_argument("--threads", type=int, default=2); p.add_argument("--workers", type=int, default=0)
    p.add_argument("--batch", type=int, default=64); p.add_argument("--reps", type=int, default=3)
    p.add_argument("--max-tiles", type=int, default=None)
    p.add_argument("--amp", action="store_true", help="bf16 autocast (torch.autocast('cpu', dtype=torch.bfloat16))")
    p.add_argument("--mean", type=float, nargs=3, default=[0.6655, 0.5299, 0.8484])
    p.add_argument("--std", type=float, nargs=3, default=[0.1700, 0.1974, 0.1134])
    a = p.parse_args()
    torch.set_num_threads(a.threads); torch.set_num_interop_threads(1)
    from rbd_model import ResNetGN
    model = ResNetGN(num_classes=3).eval()
    data = ShardTiles(a.shards, a.mean, a.std, a.factor, a.max_tiles)
    loader = torch.utils.data.DataLoader(data, batch_size=a.batch, num_workers=a.workers, shuffle=False,
                                         persistent_workers=a.workers > 0)
    rates = []
    for rep in range(a.reps + 1):
        t0 = time.perf_counter(); n = 0
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.amp):
            for x, _ in loader:
                torch.softmax(model(x)[1], 1); n += x.shape[0]
        if rep > 0: rates.append(n / (time.perf_counter() - t0))   # the first pass warms up
    med = statistics.median(rates)
    print(f"torch {torch.__version__} amp={int(a.amp)} threads={a.threads} workers={a.workers} factor={a.factor} tiles={len(data)} "
          f"median {med:.1f} tiles/s (min {min(rates):.1f}, max {max(rates):.1f}); 10,000-tile slide {10000 / med:.1f} s")


if __name__ == "__main__":
    main()
