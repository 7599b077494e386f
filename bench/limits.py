"""How fast limit_at answers for every node of the reference community, against a plain firm-limit lookup.

Control asks for every node's limit each cycle (online) and for every node and quarter hour of a year (offline),
so this tells whether the contract composition is cheap enough for both. Prints medians of repeated runs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from energyhub.domain.community import load_community
from energyhub.domain.isp import ISP
from energyhub.domain.limits import LimitBook

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--community", type=Path, default=REPO / "examples" / "de-koumen.yaml")
    parser.add_argument("--isps", type=int, default=96 * 7, help="quarter hours per run (default: one week)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    book = LimitBook(load_community(args.community))
    nodes = list(book.nodes)
    start = datetime(2026, 12, 1, tzinfo=UTC)
    times = [start + i * ISP for i in range(args.isps)]
    firm = {n: (ref.limits.import_kw, ref.limits.export_kw) for n, ref in book.nodes.items()}

    def run_limit_at() -> float:
        t0 = time.perf_counter()
        for t in times:
            for n in nodes:
                book.limit_at(n, t)
        return time.perf_counter() - t0

    def run_baseline() -> float:
        # The least any limit lookup does: fetch the node's firm values and the ISP start.
        t0 = time.perf_counter()
        for t in times:
            for n in nodes:
                _ = firm[n], t - timedelta(seconds=t.second)
        return time.perf_counter() - t0

    calls = len(times) * len(nodes)
    ours = statistics.median(run_limit_at() for _ in range(args.repeat))
    base = statistics.median(run_baseline() for _ in range(args.repeat))
    print(
        f"community: {args.community.name}, {len(nodes)} nodes, {len(times)} quarter hours, {calls:,} calls per run"
    )
    print(
        f"limit_at:            {calls / ours:12,.0f} calls/s  ({ours / calls * 1e6:6.2f} us/call, median of {args.repeat})"
    )
    print(f"baseline (firm dict): {calls / base:12,.0f} calls/s  ({base / calls * 1e6:6.2f} us/call)")
    print(f"ratio limit_at / baseline time: {ours / base:.1f}x")
    print(f"one online cycle (all nodes): {ours / len(times) * 1e3:.2f} ms")
    year_calls = 35_040 * len(nodes)
    print(f"a year of quarter hours for all nodes: {ours / calls * year_calls:.1f} s")


if __name__ == "__main__":
    main()
