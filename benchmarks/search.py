"""Scale benchmark: top-10 query latency over galleries of random unit vectors, exact vs IVF, with recall@10.

    .venv/bin/python benchmarks/search.py [--dim 10] [--sizes 10000 100000 1000000]

Writes ``benchmarks/results/search.json`` and the search section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from benchmarks.report import command_line, machine, update_results_md  # noqa: E402
from chtn_tf.atomic import write_json_atomic  # noqa: E402
from export.index import IVFIndex, exact_search, normalise, recall_at_k  # noqa: E402


def timed(fn, queries, repeats):
    times = []
    for q in queries[:repeats]:
        start = time.perf_counter()
        fn(q[None])
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), float(np.percentile(times, 99))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=10, help="embedding width (fc10 of a 10-class run: 10)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 32],
                        help="IVF cells probed per query; one row per value (recall against latency)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = []
    for size in args.sizes:
        gallery = normalise(rng.normal(size=(size, args.dim)).astype(np.float32))
        queries = normalise(rng.normal(size=(args.queries, args.dim)).astype(np.float32))
        start = time.perf_counter()
        ivf = IVFIndex(gallery, seed=0)
        build_s = time.perf_counter() - start
        exact_p50, exact_p99 = timed(lambda q: exact_search(gallery, q, 10), queries, args.queries)
        exact_top, _ = exact_search(gallery, queries, 10)
        for nprobe in args.nprobe:
            ivf_p50, ivf_p99 = timed(lambda q: ivf.search(q, 10, nprobe=nprobe), queries, args.queries)
            approx_top, _ = ivf.search(queries, 10, nprobe=nprobe)
            row = {"gallery": size, "dim": args.dim, "exact_p50_ms": exact_p50, "exact_p99_ms": exact_p99,
                   "ivf_p50_ms": ivf_p50, "ivf_p99_ms": ivf_p99, "ivf_cells": len(ivf.cells), "nprobe": nprobe,
                   "ivf_build_s": build_s, "ivf_recall_at_10": recall_at_k(approx_top, exact_top)}
            rows.append(row)
            print(row, flush=True)
    report = {"date": datetime.date.today().isoformat(),
              "command": command_line("search.py", sys.argv[1:] if argv is None else argv),
              "machine": machine(), "rows": rows}
    write_json_atomic(os.path.join(HERE, "results", "search.json"), report)
    lines = ["## Search at scale", "", f"Command: `{report['command']}` — {report['date']}, {report['machine']}; "
             f"{args.queries} single queries, top-10, random unit vectors of width {args.dim}.", "",
             "| gallery | exact p50 / p99 (ms) | IVF p50 / p99 (ms) | IVF cells, nprobe | IVF build (s) | IVF recall@10 |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['gallery']:,} | {r['exact_p50_ms']:.2f} / {r['exact_p99_ms']:.2f} | {r['ivf_p50_ms']:.2f} / "
                     f"{r['ivf_p99_ms']:.2f} | {r['ivf_cells']}, {r['nprobe']} | {r['ivf_build_s']:.1f} | {r['ivf_recall_at_10']:.3f} |")
    update_results_md("search", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
