"""Query the output tables of posepipe runs (frames, tracks, videos, errors, runs) with DuckDB.

Each view is the current snapshot of a Delta table, read through `deltalake` (`DeltaTable.to_pyarrow_dataset`): only
the files its log names, so a query never sees a file a run wrote and did not commit, nor one a later run replaced.
DuckDB scans the Arrow dataset with the query's column selection and filters pushed down, through delta-rs's own
object-store client, so no DuckDB extension (delta, httpfs) has to be downloaded, and a local folder, s3://, gs:// or
az:// root all work the same. A table that does not exist yet is an empty view with the schema's columns, so a query
never fails because a run happened to have no errors.

Views are bound when `connect` is called: rows committed later show up on the next `connect`.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import duckdb
import numpy as np
import pandas as pd

from pipeline.outputs.schema import TABLES
from pipeline.outputs.tables import delta_schema, open_table, table_exists
from pipeline.pose.keypoints import KEYPOINT_NAMES, NUM_KEYPOINTS
from pipeline.storage import resolve

logger = logging.getLogger(__name__)

LONG_ID_COLUMNS = ("video_id", "frame_index", "track_id")


def connect(output: str, storage_options: dict[str, Any] | None = None,
            con: duckdb.DuckDBPyConnection | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with a view per table of `pipeline.outputs.schema.TABLES`: its current Delta snapshot."""
    fs, root = resolve(output, storage_options)
    if not fs.exists(root):  # a typo in the path is an error, not a set of empty tables
        raise FileNotFoundError(f"output {output!r} does not exist: give the --output folder or URI of `posepipe run`")
    con = con or duckdb.connect()
    for table in TABLES:
        if table_exists(output, table, storage_options):
            snapshot = open_table(output, table, storage_options)
            con.register(f"_delta_{table}", snapshot.to_pyarrow_dataset())
            logger.debug("view %s: version %d", table, snapshot.version())
        else:
            con.register(f"_delta_{table}", delta_schema(table).empty_table())
        con.execute(f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM _delta_{table}")
    return con


def query(output: str | duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | None = None,
          storage_options: dict[str, Any] | None = None) -> pd.DataFrame:
    """Run SQL over the views of an output root (or of a connection from `connect`) and return a DataFrame."""
    con = output if isinstance(output, duckdb.DuckDBPyConnection) else connect(output, storage_options)
    return con.execute(sql, params).df()


def table_counts(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """One row per view: name, rows and columns, for `posepipe query --tables`."""
    from pipeline.outputs.schema import TABLE_PARTITIONS

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
