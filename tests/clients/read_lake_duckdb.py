"""Reads a Hive-partitioned directory of Parquet files with DuckDB and prints every row, with
the partition columns DuckDB takes from the directory names, as JSON lines.

Used by Hydrant's partitioning tests as an outside reader: what DuckDB sees of the layout is
what Athena, Trino and Spark see.
"""
import json
import sys

import duckdb

root = sys.argv[1]
con = duckdb.connect()
rows = con.execute(
    "SELECT * FROM read_parquet(?, hive_partitioning = true, hive_types_autocast = false)",
    [f"{root}/**/*.parquet"],
)
names = [column[0] for column in rows.description]
for row in rows.fetchall():
    print(json.dumps({name: (value if isinstance(value, (int, str)) or value is None else str(value))
                      for name, value in zip(names, row)}))
