"""The Python writer of the randomized end-to-end test (crates/e2e).

Usage: writer.py CONNINFO OPS.json. OPS is a list of transactions
{"stmts": [[sql, [params]]...], "rollback": bool}; each runs in its own
BEGIN ... COMMIT (or ROLLBACK) with psycopg's server-side parameters. A
failing statement rolls its transaction back. Prints a JSON summary.
"""

import json
import os
import sys

import psycopg


def main() -> None:
    conninfo, path = sys.argv[1], sys.argv[2]
    with open(path, encoding="utf-8") as f:
        txs = json.load(f)
    done = {"transactions": 0, "rolled_back": 0, "errors": 0}
    with psycopg.connect(conninfo, autocommit=True) as conn:
        if os.environ.get("CM_E2E_ASYNC_COMMIT"):
            conn.execute("SET synchronous_commit = off")
        for tx in txs:
            conn.execute("BEGIN")
            failed = False
            for sql, params in tx["stmts"]:
                try:
                    conn.execute(sql, params)
                except psycopg.Error as error:
                    print(f"writer.py: {error}", file=sys.stderr)
                    done["errors"] += 1
                    failed = True
                    break
            conn.execute("ROLLBACK" if tx["rollback"] or failed else "COMMIT")
            done["transactions"] += 1
            done["rolled_back"] += 1 if tx["rollback"] else 0
    print(json.dumps(done))


if __name__ == "__main__":
    main()
