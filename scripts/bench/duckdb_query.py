#!/usr/bin/env python3
"""DuckDB's query time over a rule's objects, for the `formats` bench scenario.

Run by tdmq-backup-bench (docs/benchmarks.md) with the venv's DuckDB: over every object GLOB
matches (JSON Lines read with the user guide's typed columns, Parquet as it is), times a
count(*) and a count with a publish_time range filter, each the best of three runs, and prints
one JSON line: {"count", "count_s", "range_count", "range_s", "from", "to"}. The range is the
middle tenth of the messages' publish times (found first, untimed).

    duckdb_query.py GLOB
"""

import json
import sys
import time

import duckdb

COLUMNS = (
    "{message_id: 'VARCHAR', topic: 'VARCHAR', publish_time: 'TIMESTAMPTZ', "
    "event_time: 'TIMESTAMPTZ', key: 'VARCHAR', key_encoding: 'VARCHAR', "
    "ordering_key: 'VARCHAR', properties: 'MAP(VARCHAR, VARCHAR)', producer_name: 'VARCHAR', "
    "sequence_id: 'BIGINT', payload: 'VARCHAR', payload_encoding: 'VARCHAR'}"
)


def best_of_three(con, sql):
    best, result = None, None
    for _ in range(3):
        started = time.perf_counter()
        result = con.execute(sql).fetchone()[0]
        took = time.perf_counter() - started
        best = took if best is None else min(best, took)
    return result, best


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    glob = sys.argv[1]
    if glob.endswith(".parquet"):
        source = f"read_parquet('{glob}')"
    else:
        source = f"read_json('{glob}', format = 'newline_delimited', columns = {COLUMNS})"
    con = duckdb.connect()
    first, last = con.execute(f"SELECT min(publish_time), max(publish_time) FROM {source}").fetchone()
    start, end = first + (last - first) * 9 / 20, first + (last - first) * 11 / 20
    count, count_s = best_of_three(con, f"SELECT count(*) FROM {source}")
    range_count, range_s = best_of_three(
        con,
        f"SELECT count(*) FROM {source} WHERE publish_time >= TIMESTAMPTZ '{start.isoformat()}' "
        f"AND publish_time < TIMESTAMPTZ '{end.isoformat()}'",
    )
    print(
        json.dumps(
            {
                "count": count,
                "count_s": count_s,
                "range_count": range_count,
                "range_s": range_s,
                "from": start.isoformat(),
                "to": end.isoformat(),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
