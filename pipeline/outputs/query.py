"""Query the output tables of posepipe runs (frames, tracks, videos, errors, runs) as DuckDB views over Parquet.

The output root can be a local folder or any fsspec URI (s3://, gs://, memory://): for a non-local root the fsspec
filesystem is registered with DuckDB, so no DuckDB extension (httpfs) has to be downloaded. A table that has no
files yet is an empty view with the right columns (from `pipeline.outputs.schema`), so a query never fails because a run
happened to have no errors. Partition columns are typed explicitly (`date` DATE, `source` VARCHAR): left to
inference, a source named `123` would turn into an integer.

Views are bound when `connect` is called: a table whose first file is written later shows up on the next `connect`.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.outputs.schema import PARTITION_SCHEMA, TABLE_PARTITIONS, TABLES
from pipeline.pose.keypoints import KEYPOINT_NAMES, NUM_KEYPOINTS
from pipeline.storage import is_local, join, resolve

logger = logging.getLogger(__name__)

# DuckDB types of the hive partition columns; the runs table is partitioned by date only.
DUCKDB_TYPES = {pa.date32(): "DATE", pa.string(): "VARCHAR"}

LONG_ID_COLUMNS = ("video_id", "frame_index", "track_id")


def root_uri(output: str, storage_options: dict[str, Any] | None = None) -> str:
    """The output root as DuckDB must see it: an absolute path when local, else the URI with its protocol."""
    fs, path = resolve(output, storage_options)
    return path.rstrip("/") if is_local(fs) else output.rstrip("/")


def table_glob(output: str, table: str, storage_options: dict[str, Any] | None = None) -> str:
    """`<root>/<table>/**/*.parquet`: every file of a table (temporary files start with '.' and end in .tmp)."""
    return join(root_uri(output, storage_options), table, "**", "*.parquet")


def empty_table(table: str) -> pa.Table:
    """A table with no rows and the columns a read of the files would give: schema, then partition columns."""
    schema = TABLES[table]
    for column in TABLE_PARTITIONS[table]:
        schema = schema.append(PARTITION_SCHEMA.field(column))
    return schema.empty_table()


def connect(output: str, storage_options: dict[str, Any] | None = None,
            con: duckdb.DuckDBPyConnection | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with a view per table of `pipeline.outputs.schema.TABLES` over the files under `output`."""
    fs, root = resolve(output, storage_options)
    if not fs.exists(root):  # a typo in the path is an error, not a set of empty tables
        raise FileNotFoundError(f"output {output!r} does not exist: give the --output folder or URI of `posepipe run`")
    con = con or duckdb.connect()
    if not is_local(fs):
        con.register_filesystem(fs)
    for table in TABLES:
        files = fs.glob(join(root, table, "**", "*.parquet"))
        if files:
            hive_types = ", ".join(f"'{c}': {DUCKDB_TYPES[PARTITION_SCHEMA.field(c).type]}"
                                   for c in TABLE_PARTITIONS[table])
            glob = table_glob(output, table, storage_options).replace("'", "''")
            con.execute(f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM read_parquet('{glob}', "
                        f"hive_partitioning = true, hive_types = {{{hive_types}}}, union_by_name = true)")
        else:
            con.register(f"_empty_{table}", empty_table(table))
            con.execute(f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM _empty_{table}")
        logger.debug("view %s: %d files", table, len(files))
    return con


def query(output: str | duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | None = None,
          storage_options: dict[str, Any] | None = None) -> pd.DataFrame:
    """Run SQL over the views of an output root (or of a connection from `connect`) and return a DataFrame."""
    con = output if isinstance(output, duckdb.DuckDBPyConnection) else connect(output, storage_options)
    return con.execute(sql, params).df()


def table_counts(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """One row per view: name, rows and columns, for `posepipe query --tables`."""
    rows = []
    for table in TABLES:
        columns = con.execute(f"DESCRIBE {table}").df()
        count = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        rows.append({"table": table, "rows": int(count), "columns": len(columns),
                     "partitions": ", ".join(TABLE_PARTITIONS[table])})
    return pd.DataFrame(rows)


def to_long(frames: pd.DataFrame, id_columns: Sequence[str] = LONG_ID_COLUMNS) -> pd.DataFrame:
    """Wide frames rows -> one row per keypoint: id columns, keypoint (ordered category), x, y, score.

    A frames DataFrame of N rows gives N * K rows, K = 17 in `pipeline.pose.keypoints` order; keypoints that were not
    found keep their row with x = y = NaN and score 0, so counts per person stay K. Filter `score > 0` for found ones.
    """
    missing = [c for c in id_columns if c not in frames.columns]
    if missing:
        raise ValueError(f"to_long expected a frames table with columns {list(id_columns)}; {missing} are missing "
                         f"(select them, or pass id_columns=...)")
    keypoints = keypoint_array(frames).reshape(-1, 3)                      # (N * K, 3)
    columns: dict[str, Any] = {c: np.repeat(frames[c].to_numpy(), NUM_KEYPOINTS) for c in id_columns}
    columns["keypoint"] = pd.Categorical.from_codes(np.tile(np.arange(NUM_KEYPOINTS), len(frames)),
                                                    categories=list(KEYPOINT_NAMES), ordered=True)
    columns.update(x=keypoints[:, 0], y=keypoints[:, 1], score=keypoints[:, 2])
    return pd.DataFrame(columns)


def keypoint_array(frames: pd.DataFrame) -> np.ndarray:
    """Wide frames rows -> (N, K, 3) float32 [x, y, score], NaN x/y where a keypoint was not found.

    The inverse of the wide layout `pipeline.stages.write.frames_table` writes; rows keep their order.
    """
    parts = [[f"{name}_{part}" for name in KEYPOINT_NAMES] for part in ("x", "y", "score")]
    missing = [c for cols in parts for c in cols if c not in frames.columns]
    if missing:
        raise ValueError(f"expected the keypoint columns of the frames table; {len(missing)} are missing "
                         f"(e.g. {missing[:3]}): select them (SELECT * FROM frames)")
    return np.stack([frames[cols].to_numpy(dtype=np.float32, na_value=np.nan) for cols in parts], axis=-1)
