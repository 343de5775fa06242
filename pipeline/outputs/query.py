"""Query the output tables of posepipe runs (frames, tracks, videos, errors, runs) with DuckDB.

Each view is the current snapshot of a Delta table: `deltalake` reads the table's log and names the files of its
current version, and DuckDB's own Parquet reader scans exactly those files (partition columns from their hive
paths), with the query's column selection, filters and row-group statistics. A query therefore never sees a file a
run wrote and did not commit, nor one a later run replaced, and it runs as fast as over plain files. Remote roots
are read through the run's fsspec filesystem, registered with DuckDB, so no DuckDB extension (delta, httpfs) has to
be downloaded. A table that does not exist yet, or has no rows, is an empty view with the schema's columns, so a
query never fails because a run happened to have no errors.

Views are bound when `connect` is called: rows committed later show up on the next `connect`.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import duckdb
import numpy as np
import pandas as pd

from pipeline.outputs.schema import TABLE_PARTITIONS, TABLES
from pipeline.outputs.tables import delta_schema, open_table, table_exists
from pipeline.pose.keypoints import KEYPOINT_NAMES, NUM_KEYPOINTS
from pipeline.storage import is_local, resolve

logger = logging.getLogger(__name__)

LONG_ID_COLUMNS = ("video_id", "frame_index", "track_id")


def connect(output: str, storage_options: dict[str, Any] | None = None,
            con: duckdb.DuckDBPyConnection | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with a view per table of `pipeline.outputs.schema.TABLES`: its current Delta snapshot."""
    fs, root = resolve(output, storage_options)
    if not fs.exists(root):  # a typo in the path is an error, not a set of empty tables
        raise FileNotFoundError(f"output {output!r} does not exist: give the --output folder or URI of `posepipe run`")
    con = con or duckdb.connect()
    if not is_local(fs):
        con.register_filesystem(fs)
    for table in TABLES:
        files = []
        if table_exists(output, table, storage_options):
            snapshot = open_table(output, table, storage_options)
            files = snapshot.file_uris()
            logger.debug("view %s: version %d, %d files", table, snapshot.version(), len(files))
        if files:
            types = ", ".join(f"'{c}': {DUCKDB_PARTITION_TYPES[c]}" for c in TABLE_PARTITIONS[table])
            listed = ", ".join("'" + uri.replace("'", "''") + "'" for uri in files)
            source = f"read_parquet([{listed}], hive_partitioning = true, hive_types = {{{types}}})"
        else:
            con.register(f"_empty_{table}", delta_schema(table).empty_table())
            source = f"_empty_{table}"
        con.execute(f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM {source}")
    return con


DUCKDB_PARTITION_TYPES = {"date": "DATE", "source": "VARCHAR"}   # else a source named 01 would read as 1


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
