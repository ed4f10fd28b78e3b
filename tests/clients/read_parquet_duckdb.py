"""Reads a Parquet file with DuckDB and prints its column types and rows as JSON.

Used by Hydrant's format tests as an outside reader: what DuckDB sees is what query
engines see. Timestamps print as ISO 8601 in UTC with microseconds, decimals as strings, binary as base64.
"""
import base64
import datetime
import decimal
import json
import sys

import duckdb


def plain(value):
    if isinstance(value, datetime.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        return value.isoformat(timespec="microseconds")
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


path = sys.argv[1]
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
described = con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [path]).fetchall()
# Instants print as their UTC wall-clock time (the session zone is UTC).
columns = ", ".join(
    f'CAST("{name}" AS TIMESTAMP) AS "{name}"' if kind == "TIMESTAMP WITH TIME ZONE" else f'"{name}"'
    for name, kind, *_ in described
)
cursor = con.execute(f"SELECT {columns} FROM read_parquet(?)", [path])
names = [d[0] for d in cursor.description]
rows = [dict(zip(names, (plain(v) for v in row))) for row in cursor.fetchall()]
print(json.dumps({"types": {d[0]: d[1] for d in described}, "rows": rows}))
