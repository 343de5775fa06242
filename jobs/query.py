"""`posepipe query`: SQL over the output tables (DuckDB views frames, tracks, videos, errors, runs); prints a table.

    posepipe query OUTPUT "SELECT source, count(*) FROM frames GROUP BY source"
    posepipe query OUTPUT --tables                       # the views, their row and column counts
    posepipe query OUTPUT --csv "SELECT * FROM tracks"   # CSV on stdout, every row
    posepipe query OUTPUT --coco VIDEO_ID --out results.json   # COCO keypoint results of one video

OUTPUT is the `--output` of `posepipe run`: a folder or any fsspec URI (s3://bucket/prefix).
Exit status: 0 done, 2 bad arguments, a missing output or an SQL error.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

from jobs.cli import (
    ArgumentParser,
    UsageError,
    add_output_arguments,
    configure_logging,
    fail,
    open_output,
    parse_storage_options,
)

if TYPE_CHECKING:
    import argparse

    import pandas as pd

EXIT_OK = 0


def print_frame(df: pd.DataFrame, csv: bool, max_rows: int) -> None:
    if csv:
        df.to_csv(sys.stdout, index=False)
        return
    if df.empty:
        print(f"(0 rows; columns: {', '.join(map(str, df.columns))})")
        return
    print(df.head(max_rows).to_string(index=False))
    if len(df) > max_rows:
        print(f"... {len(df) - max_rows} more rows ({len(df)} in all; --max-rows N or --csv for more)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser("query", __doc__)
    add_output_arguments(parser)
    parser.add_argument("sql", nargs="?", help="SQL over the views frames, tracks, videos, errors, runs")
    parser.add_argument("--tables", action="store_true", help="list the views with their row and column counts")
    parser.add_argument("--csv", action="store_true", help="print CSV (every row) instead of a table")
    parser.add_argument("--max-rows", type=int, default=50, help="rows printed as a table")
    parser.add_argument("--coco", metavar="VIDEO_ID", help="COCO keypoint results of this video (JSON)")
    parser.add_argument("--image-id-offset", type=int, default=0,
                        help="with --coco: image_id = frame_index + this (1 for ground truth numbered from 1)")
    parser.add_argument("--out", help="with --coco: write the JSON here (path or URI) instead of stdout")
    args = parser.parse_intermixed_args(argv)   # SQL may come after options: `OUTPUT --csv "SELECT ..."`
    if sum([bool(args.sql), args.tables, bool(args.coco)]) != 1:
        parser.error("give exactly one of: SQL, --tables, --coco VIDEO_ID")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging()
    import duckdb

    from pipeline.outputs.coco_export import video_results, write_coco_results
    from pipeline.outputs.query import table_counts

    try:
        storage_options = parse_storage_options(args.storage_options)
        con = open_output(args.output, storage_options)
        if args.tables:
            print_frame(table_counts(con), args.csv, args.max_rows)
        elif args.coco:
            results = video_results(con, args.coco, args.image_id_offset)
            if args.out:
                write_coco_results(results, args.out, storage_options)
                print(f"{len(results)} results of {args.coco} written to {args.out}", file=sys.stderr)
            else:
                json.dump(results, sys.stdout)
                print()
        else:
            print_frame(con.execute(args.sql).df(), args.csv, args.max_rows)
    except (UsageError, KeyError, duckdb.Error) as exc:
        return fail(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
