#!/usr/bin/env python3
"""Charts for docs/results.md from the runs' summary files (matplotlib; SVG).

    frontier   accuracy against multiply-adds per tile and measured tiles/s, distilled vs from scratch, mean and
               standard deviation over seeds (cluster/frontier.sh: WORK/seed-*/summary.tsv and WORK/speed.tsv)
    curve      accuracy against the number of unlabeled tiles added to the labelled ones, students at 28 and 14 px
               against the from-scratch students (cluster/unlabeled-curve.sh: WORK/seed-*/summary.tsv)
    table      a Markdown table of one column of WORK/seed-*/summary.tsv: mean ± sd over seeds and each seed's value

Usage: python3 cluster/plot_results.py frontier runs/frontier docs/figures/frontier.svg
       python3 cluster/plot_results.py curve runs/curve docs/figures/unlabeled-curve.svg
       python3 cluster/plot_results.py table runs/curve val_accuracy_last
"""
import csv
import glob
import os
import statistics
import sys


def pyplot():
    """matplotlib's pyplot set for SVG (imported here so that `table` needs no matplotlib)."""
    import matplotlib
    matplotlib.use("svg")
    import matplotlib.pyplot as plt
    plt.rcParams["svg.hashsalt"] = "histodistill"  # the same SVG for the same numbers
    plt.rcParams["svg.fonttype"] = "none"
    return plt


def matplotlib_ticker():
    import matplotlib.ticker
    return matplotlib.ticker


def read_seeds(work, column):
    """{run: [value per seed]} for one column of every WORK/seed-*/summary.tsv (accuracies in %)."""
    runs = {}
    paths = sorted(glob.glob(os.path.join(work, "seed-*", "summary.tsv")))
    if not paths:
        sys.exit(f"plot_results: no {work}/seed-*/summary.tsv; run the experiment's script first")
    for path in paths:
        with open(path) as f:
            for row in csv.DictReader(f, delimiter="\t"):
                runs.setdefault(row["run"], []).append(100 * float(row[column]))
    return runs, len(paths)


def mean_sd(values):
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def frontier(work, out):
    plt = pyplot()
    acc, seeds = read_seeds(work, "kept")
    speed_path = os.path.join(work, "speed.tsv")
    if not os.path.exists(speed_path):
        sys.exit(f"plot_results: no {speed_path}; run `cluster/frontier.sh speed` first")
    with open(speed_path) as f:
        speed = {int(r["px"]): (float(r["macs_millions"]), float(r["tiles_per_s"])) for r in csv.DictReader(f, delimiter="\t")}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, index, label in ((axes[0], 0, "multiply-adds per tile (millions, log scale)"),
                             (axes[1], 1, "tiles/s, predict, 2 threads (log scale)")):
        for kind, marker, name in (("distilled/student-", "o", "distilled (no labels)"), ("scratch-", "s", "from scratch (labels)")):
            points = [(px, *mean_sd(acc[f"{kind}{px}"])) for px in (112, 56, 28, 14) if f"{kind}{px}" in acc]
            xs = [speed[px][index] for px, _, _ in points]
            ax.errorbar(xs, [m for _, m, _ in points], yerr=[s for _, _, s in points], marker=marker, capsize=3, label=name)
            for x, (px, m, _) in zip(xs, points):
                ax.annotate(f"{px} px", (x, m), textcoords="offset points", xytext=(4, -12), fontsize=8)
        if "teacher" in acc:
            m, s = mean_sd(acc["teacher"])
            ax.errorbar([speed[224][index]], [m], yerr=[s], marker="*", markersize=12, color="black", capsize=3, label="teacher, 224 px")
        ax.set_xscale("log")
        # Ticks at 1-2-5 steps, labelled as plain numbers (a short log range gets one major tick, or overlapping minor ones).
        lo, hi = ax.get_xlim()
        ax.set_xticks([v for e in range(-1, 6) for v in (10**e, 2 * 10**e, 5 * 10**e) if lo <= v <= hi])
        ax.xaxis.set_minor_formatter(matplotlib_ticker().NullFormatter())
        ax.xaxis.set_major_formatter(matplotlib_ticker().FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel(f"lung val accuracy (%), up to {seeds} seeds")
    axes[0].legend(loc="lower right", fontsize=8)
    counts = sorted({len(v) for v in acc.values()})
    seeds_text = f"{counts[0]} seeds" if len(counts) == 1 else "seeds per point: " + ", ".join(
        f"{run} {len(v)}" for run, v in sorted(acc.items()) if len(v) != max(counts))
    fig.suptitle(f"Accuracy against compute, kept weights, mean ± sd over seeds ({seeds_text})")
    fig.tight_layout()
    fig.savefig(out)


def curve(work, out):
    plt = pyplot()
    acc, seeds = read_seeds(work, "val_accuracy_last")
    # Unlabeled tiles added to the labelled ones, read from the packed shard sets (the manifests of seed 0).
    def rows(name):
        path = os.path.join(work, "seed-0", f"{name}.csv")
        with open(path) as f:
            return sum(1 for _ in f) - 1
    pools = {"0": 0, "25": rows("pool-25"), "50": rows("pool-50"), "100": rows("pool-100")}
    fig, ax = plt.subplots(figsize=(9, 4))
    for px, color in (("28", "C0"), ("14", "C1")):
        points = [(n, *mean_sd(acc[f"distilled-{p}/student-{px}"])) for p, n in pools.items() if f"distilled-{p}/student-{px}" in acc]
        ax.errorbar([n for n, _, _ in points], [m for _, m, _ in points], yerr=[s for _, _, s in points], marker="o",
                    capsize=3, color=color, label=f"{px} px distilled, in-domain pool")
        if f"distilled-colon/student-{px}" in acc:
            m, s = mean_sd(acc[f"distilled-colon/student-{px}"])
            colon = len(glob.glob(os.path.join(os.environ.get("COLON", "../shared/data/lc25000-colon"), "train", "*", "*")))
            ax.errorbar([colon], [m], yerr=[s], marker="x", color=color, linestyle="none",
                        label=f"{px} px distilled, colon tiles (out of domain)")
        if f"scratch-{px}" in acc:
            m, s = mean_sd(acc[f"scratch-{px}"])
            ax.axhline(m, color=color, linestyle="--", linewidth=1, label=f"{px} px from scratch, labelled tiles only (± sd shaded)")
            if s > 0:
                ax.axhspan(m - s, m + s, color=color, alpha=0.1)
    ax.set_xlabel("unlabeled tiles added to the labelled ones")
    ax.set_ylabel(f"lung val accuracy at the last step (%), {seeds} seed(s)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(out)


def table(work, column):
    acc, seeds = read_seeds(work, column)
    print(f"| run | seeds | {column}, % (mean ± sd) | per seed |")
    print("|---|---|---|---|")
    for run, values in acc.items():
        m, s = mean_sd(values)
        print(f"| {run} | {len(values)} | {m:.2f} ± {s:.2f} | {', '.join(f'{v:.2f}' for v in values)} |")


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("frontier", "curve", "table"):
        sys.exit(__doc__)
    if sys.argv[1] == "table":
        table(sys.argv[2], sys.argv[3])
        sys.exit(0)
    os.makedirs(os.path.dirname(sys.argv[3]) or ".", exist_ok=True)
    {"frontier": frontier, "curve": curve}[sys.argv[1]](sys.argv[2], sys.argv[3])
    print(f"wrote {sys.argv[3]}")
