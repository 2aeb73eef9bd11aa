"""One statement appending many orphans and their ``reconciled`` events: ``python -m benchmarks.ledger_append``.

Why it exists: the ledger trigger (``mailglass_track_orphans``) runs once per statement over its
transition table, and a sweep's write appends up to ``max_total`` (10,000) ``reconciled`` events in one
statement. Migration 0006's body was quadratic in them (decision D33: 5k/10k/20k/100k orphans took
1.0/3.8/17.7/430 s); 0008's is linear. This prints the seconds per size and the time per orphan, so a
return to a join planned on an estimate shows as a per-orphan time that grows with the size.
"""

from __future__ import annotations

import argparse
import time

from benchmarks import datasets
from benchmarks.scratch import ScratchServer, engine_for
from mailglass_pipeline.db import resolve_database_url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ledger_append", description=__doc__)
    parser.add_argument("--database-url", help="server to create the scratch database on (default: the app's)")
    parser.add_argument("--sizes", default="5000,10000,20000,100000", help="orphans per statement, comma-separated")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    server = ScratchServer(resolve_database_url(args.database_url))
    try:
        server.create_template()
        url = server.clone("append")
        with engine_for(url) as engine:
            print("orphans   seconds   us per orphan (each orphan plus its reconciled event, one statement)")
            for size in sizes:
                started = time.perf_counter()
                datasets.load_history(engine, f"t{size}", 1, size, chunk=size)
                seconds = time.perf_counter() - started
                print(f"{size:>7}  {seconds:8.2f}  {seconds / size * 1e6:14.1f}")
    finally:
        server.drop_all()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
