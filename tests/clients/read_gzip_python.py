"""Reads a gzip file of JSON lines with Python's gzip module, DuckDB's read_json and
pyarrow's JSON reader, and prints what each saw as one JSON object: the outside readers
Hydrant's multi-member gzip objects are checked with."""
import gzip
import hashlib
import json
import sys

import duckdb
import pyarrow
import pyarrow.json

path = sys.argv[1]
with gzip.open(path, "rb") as f:
    text = f.read()
con = duckdb.connect()
duck = con.execute(
    "SELECT count(*), sum(n) FROM read_json(?, format = 'newline_delimited', compression = 'gzip', columns = {n: 'BIGINT'})",
    [path],
).fetchone()
with pyarrow.input_stream(path, compression="gzip") as stream:
    table = pyarrow.json.read_json(stream)
print(json.dumps({
    "python_sha256": hashlib.sha256(text).hexdigest(),
    "duckdb_rows": duck[0],
    "duckdb_sum": duck[1],
    "pyarrow_rows": table.num_rows,
    "pyarrow_sum": sum(table.column("n").to_pylist()),
}))
