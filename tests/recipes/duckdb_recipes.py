"""Runs the DuckDB recipes of a Markdown chapter and prints what each statement returned, as JSON.

A recipe is a ```sql block whose first line is `-- duckdb: TITLE`. The blocks run in document
order on one connection (a view made by one is there for the next), each statement on its own,
after the literal replacements given with --replace (the documented s3:// paths become local
copies, the documented times become the test's). Blocks without the `-- duckdb:` line (S3
access setup, other engines) are not run.

Output: {"recipes": [{"title": T, "results": [[row, ...] or null, ...]}]}; bytes are hex,
timestamps ISO 8601. A failing statement fails the run, naming its recipe.
"""

import argparse
import datetime
import decimal
import json
import os
import re
import sys

import duckdb

FENCE = re.compile(r"^```sql\n(.*?)^```", re.S | re.M)
TITLE = "-- duckdb: "


def recipes(markdown, chapter):
    start = markdown.find(chapter)
    if start < 0:
        sys.exit(f"no chapter {chapter!r} in the document")
    end = markdown.find("\n## ", start + len(chapter))
    text = markdown[start : end if end > 0 else len(markdown)]
    for block in FENCE.findall(text):
        first, _, rest = block.partition("\n")
        if first.startswith(TITLE):
            yield first[len(TITLE) :].strip(), block


def plain(value):
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("document")
    parser.add_argument("--chapter", required=True)
    parser.add_argument("--replace", action="append", default=[], metavar="FROM=TO")
    parser.add_argument("--workdir", required=True, help="where COPY ... TO writes its files")
    args = parser.parse_args()
    with open(args.document, encoding="utf-8") as f:
        markdown = f.read()
    os.chdir(args.workdir)
    con = duckdb.connect()
    # Timestamps print in UTC whatever the machine's zone, so results compare across hosts.
    con.execute("SET TimeZone = 'UTC'")
    out = []
    for title, sql in recipes(markdown, args.chapter):
        for pair in args.replace:
            old, sep, new = pair.partition("=")
            if not sep:
                sys.exit(f"--replace {pair!r}: expected FROM=TO")
            sql = sql.replace(old, new)
        results = []
        for statement in con.extract_statements(sql):
            try:
                cursor = con.execute(statement)
            except duckdb.Error as e:
                sys.exit(f"recipe {title!r}: {statement.query.strip()}\n{e}")
            rows = cursor.fetchall() if cursor.description else None
            results.append(None if rows is None else [plain(list(r)) for r in rows])
        out.append({"title": title, "results": results})
    if not out:
        sys.exit(f"no `{TITLE}` recipes in chapter {args.chapter!r}")
    json.dump({"recipes": out}, sys.stdout)


if __name__ == "__main__":
    main()
