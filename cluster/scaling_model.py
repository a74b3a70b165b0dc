#!/usr/bin/env python3
"""Predicts data-parallel efficiency of histodistill from measured inputs (docs/scaling.md).

Model (the all-reduce after backward, train.overlap_allreduce: false):
    step time  T(p) = T_compute(b) + T_allreduce(p)
    T_compute(b)    = b / r                 r: images/s of ONE rank on its node's cores, b: tiles per rank
    T_allreduce(p)  = 2 (p-1)/p * G / BW  +  2 (p-1) * k * alpha
                      (ring all-reduce of G bytes in k buckets; BW bytes/s per link, alpha latency per message)
    efficiency      = T_compute(b) / T(p)   (images/s of p ranks over p times one rank's)

With --overlap PROFILE (the all-reduce overlapped with backward, histodistill's default on several ranks): PROFILE is
`histodistill bench-step --overlap --json` output (or its "overlap" object): each bucket's MB, in the order buckets
are sent, and the fraction of T_compute at which backward had finished it. Bucket j is sent from
max(ready_j * T_compute, end of bucket j-1) and takes 2 (p-1)/p * bucket_j / BW + 2 (p-1) alpha; the step waits for
what is left after T_compute:
    T(p) = T_compute(b) + max(0, end of the last bucket - T_compute(b))
This assumes the network moves a bucket while the rank computes (histodistill lets MPI progress between layers).
A profile measured with `bench-step --overlap --overlap-teacher` (distillation, train.overlap_teacher: the next
batch's teacher forward runs after backward, before the update) counts that forward in T_compute after the last
bucket is ready ("teacher_ahead_ms"), so the buckets are ready early in the step and travel during it.

Weak scaling keeps b fixed (global batch b*p); strong scaling keeps the global batch B fixed (b = B/p).
Only the Python standard library is needed.

Usage:
    cluster/scaling_model.py --rank-images-per-second 210 --gradient-mb 4.9 [--batch-per-rank 32]
        [--global-batch 256] [--bucket-mb 16] [--check MEASURED.json]
"""
import argparse
import json
import math

NETWORKS = {  # name: (bytes/s per link, latency per message in s): typical values, not measured here
    "10 Gbit/s Ethernet (TCP)": (10e9 / 8 * 0.9, 30e-6),
    "100 Gbit/s (InfiniBand/RoCE)": (100e9 / 8 * 0.9, 3e-6),
}
RANKS = [8, 16, 32, 64, 128, 256]


def allreduce_seconds(p, grad_bytes, bandwidth, latency, buckets):
    if p <= 1:
        return 0.0
    return 2 * (p - 1) / p * grad_bytes / bandwidth + 2 * (p - 1) * buckets * latency


def efficiency(compute, comm):
    return compute / (compute + comm)


def exposed_seconds(p, compute, profile, bandwidth, latency):
    """Communication left after compute when buckets are sent as backward finishes them (see the module doc)."""
    if p <= 1:
        return 0.0
    end = 0.0
    for mb, ready in zip(profile["bucket_mb"], profile["ready_fraction"]):
        end = max(ready * compute, end) + allreduce_seconds(p, mb * 1e6, bandwidth, latency, 1)
    return max(0.0, end - compute)


def load_profile(path):
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as e:
        raise SystemExit(f"--overlap {path}: {e.strerror}; write one with `histodistill bench-step --overlap --json > {path}`")
    except ValueError as e:
        raise SystemExit(f"--overlap {path}: not JSON ({e}); write one with `histodistill bench-step --overlap --json > {path}`")
    profile = data.get("overlap", data) if isinstance(data, dict) else None
    if isinstance(profile, dict) and isinstance(data, dict) and "gradient_compression" in data:
        profile = dict(profile, gradient_compression=data["gradient_compression"])
    if not isinstance(profile, dict) or "bucket_mb" not in profile or "ready_fraction" not in profile:
        raise SystemExit(f"--overlap {path}: no overlap profile (bucket_mb, ready_fraction); write one with "
                         f"`histodistill bench-step --overlap --json > {path}`")
    sizes, ready = profile["bucket_mb"], profile["ready_fraction"]
    if not (isinstance(sizes, list) and isinstance(ready, list) and sizes and len(sizes) == len(ready)
            and all(isinstance(v, (int, float)) and v > 0 for v in sizes)
            and all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in ready)):
        raise SystemExit(f"--overlap {path}: bucket_mb (positive MB) and ready_fraction (0 to 1) must be non-empty lists "
                         "of the same length")
    return profile


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rank-images-per-second", type=float, required=True,
                    help="measured images/s of one rank (histodistill bench-step on one node)")
    ap.add_argument("--gradient-mb", type=float, help="gradient buffer in MB (bench-step prints it; taken from --overlap's profile)")
    ap.add_argument("--batch-per-rank", type=int, default=32, help="tiles per rank per step (weak scaling)")
    ap.add_argument("--global-batch", type=int, default=256, help="global batch for the strong-scaling table")
    ap.add_argument("--bucket-mb", type=float, default=16.0, help="all-reduce bucket size in MB")
    ap.add_argument("--overlap", metavar="PROFILE.json",
                    help="predict the all-reduce overlapped with backward, from `histodistill bench-step --overlap --json` "
                         "(bucket sizes and when backward finished each); --gradient-mb and --bucket-mb are then taken from it")
    ap.add_argument("--gradient-compression", choices=["none", "bf16"], default="none",
                    help="bf16: the gradient travels as bfloat16 (train.gradient_compression), half the bytes")
    ap.add_argument("--compression-cost-ms", type=float, default=0.0,
                    help="with --gradient-compression bf16: CPU time per step of rounding, summing and widening the bfloat16 "
                         "values, added to the communication (measure it: bench-step's bare all-reduce with and without "
                         "compression against the model's)")
    ap.add_argument("--label", default="", help="what the rank's images/s measures (printed in the heading)")
    ap.add_argument("--check", help="JSON with shared-memory measurements to compare the model with: "
                                    '{"bandwidth_gbs": ..., "latency_us": ..., "runs": [{"ranks": p, "cores_per_rank": c, '
                                    '"rank_images_per_second": r, "measured_images_per_second": m, "global_batch": B}]}')
    ap.add_argument("--network", action="append", default=[], metavar="LABEL=GBITS,EFFICIENCY,LATENCY_US",
                    help="a network to predict for, instead of the typical ones: line rate in Gbit/s, the share of it an "
                         "all-reduce reaches, latency per message (e.g. 'TCP 10G, calibrated=10,0.97,30'; repeatable)")
    a = ap.parse_args()
    networks = NETWORKS
    if a.network:
        networks = {}
        for spec in a.network:
            label, _, values = spec.rpartition("=")
            try:
                gbit, eff, lat = (float(v) for v in values.split(","))
            except ValueError:
                ap.error(f"--network {spec!r}: expected LABEL=GBITS,EFFICIENCY,LATENCY_US, e.g. 'TCP 10G=10,0.97,30'")
            networks[label or f"{gbit:g} Gbit/s"] = (gbit * 1e9 / 8 * eff, lat * 1e-6)
    for name in ("rank_images_per_second", "gradient_mb", "bucket_mb"):
        v = getattr(a, name)
        if v is not None and not (math.isfinite(v) and v > 0):
            ap.error(f"--{name.replace('_', '-')} must be a positive number, got {v}")
    if not (math.isfinite(a.compression_cost_ms) and a.compression_cost_ms >= 0):
        ap.error(f"--compression-cost-ms must be 0 or more, got {a.compression_cost_ms}")
    if a.batch_per_rank < 1 or a.global_batch < 1:
        ap.error("--batch-per-rank and --global-batch must be at least 1")
    profile = load_profile(a.overlap) if a.overlap else None
    if profile:
        if a.gradient_mb is not None:
            ap.error("--gradient-mb and --overlap: the profile gives the gradient's buckets; leave --gradient-mb out")
        a.gradient_mb = sum(profile["bucket_mb"])
        if profile.get("gradient_compression") == "bf16" and a.gradient_compression == "none":
            print(f"note: {a.overlap} was measured with bfloat16 gradients; predicting with --gradient-compression bf16")
            a.gradient_compression = "bf16"
    elif a.gradient_mb is None:
        ap.error("--gradient-mb is required without --overlap")
    if a.compression_cost_ms > 0 and a.gradient_compression != "bf16":
        ap.error("--compression-cost-ms applies to --gradient-compression bf16 only")
    if a.gradient_compression == "bf16":
        a.gradient_mb /= 2
        a.bucket_mb /= 2
        if profile:
            profile = dict(profile, bucket_mb=[mb / 2 for mb in profile["bucket_mb"]])
    grad = a.gradient_mb * 1e6
    buckets = max(1, math.ceil(a.gradient_mb / a.bucket_mb))
    r = a.rank_images_per_second
    if profile:
        buckets = len(profile["bucket_mb"])
        ahead = profile.get("teacher_ahead_ms")
        what = "backward and the next batch's teacher forward" if ahead else "backward"
        print(f"## {a.label or 'one rank'}: {r:.1f} img/s per rank, gradients {sum(profile['bucket_mb']):.2f} MB on the network in {buckets} "
              f"bucket(s), overlapped with {what}\n")
    else:
        print(f"## {a.label or 'one rank'}: {r:.1f} img/s per rank, gradients {a.gradient_mb:.2f} MB on the network in {buckets} bucket(s)\n")
    for title, per_rank in (("Weak scaling", lambda p: a.batch_per_rank),
                            (f"Strong scaling (global batch {a.global_batch})", lambda p: a.global_batch / p)):
        header = "batch per rank" if title.startswith("Weak") else "tiles per rank"
        print(f"### {title}\n")
        print("| network | " + " | ".join(f"{p} ranks" for p in RANKS) + " |")
        print("|---|" + "---|" * len(RANKS))
        for name, (bw, lat) in networks.items():
            cells = []
            for p in RANKS:
                b = per_rank(p)
                if b < 1:
                    cells.append("n/a")
                    continue
                comp = b / r
                comm = exposed_seconds(p, comp, profile, bw, lat) if profile else allreduce_seconds(p, grad, bw, lat, buckets)
                if a.gradient_compression == "bf16":
                    comm += a.compression_cost_ms / 1e3
                cells.append(f"{efficiency(comp, comm) * 100:.0f}% ({comm * 1e3:.1f} ms)")
            print(f"| {name} | " + " | ".join(cells) + " |")
        what = "all-reduce ms per step left after backward" if profile else "all-reduce ms per step"
        print(f"\nEfficiency ({what}); {header}: "
              + ", ".join(f"{p}: {per_rank(p):g}" for p in RANKS) + ".\n")
    if a.check:
        with open(a.check) as f:
            c = json.load(f)
        bw, lat = c["bandwidth_gbs"] * 1e9, c["latency_us"] * 1e-6
        print(f"### Check against shared-memory runs on this node (bandwidth {c['bandwidth_gbs']} GB/s, latency {c['latency_us']} us)\n")
        print("| ranks | cores per rank | predicted img/s (error) | measured straggler wait, ms/step | "
              "predicted with that wait (error) | measured img/s |")
        print("|---|---|---|---|---|---|")
        for run in c["runs"]:
            p, B = run["ranks"], run["global_batch"]
            comp = (B / p) / run["rank_images_per_second"]
            comm = allreduce_seconds(p, grad, bw, lat, buckets)
            predicted = B / (comp + comm)
            wait = run.get("straggler_ms", 0) / 1e3
            with_wait = B / (comp + comm + wait)
            m = run["measured_images_per_second"]
            print(f"| {p} | {run['cores_per_rank']} | {predicted:.1f} ({(predicted - m) / m * 100:+.0f}%) | "
                  f"{run.get('straggler_ms', 0):.1f} | {with_wait:.1f} ({(with_wait - m) / m * 100:+.0f}%) | {m:.1f} |")
        print()


if __name__ == "__main__":
    main()
