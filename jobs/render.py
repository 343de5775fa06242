"""`posepipe render`: look at the results. A clip or contact sheet of one video with skeletons, or a run summary plot.

    posepipe render OUTPUT --video-id ID --out clip.mp4           # the video with skeletons, coloured by track
    posepipe render OUTPUT --video-id ID --sheet sheet.png        # a grid of 12 evenly spaced frames instead
    posepipe render OUTPUT --summary summary.png                  # people and keypoint score over video time

The source video is the frames table's `uri` of that video unless --source-video gives another copy.
Exit status: 0 written, 2 bad arguments, unknown video id or unreadable source video.
"""

from __future__ import annotations

import logging
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
from jobs.query import EXIT_OK

if TYPE_CHECKING:
    import argparse

    import duckdb

logger = logging.getLogger("posepipe.render")


def source_uri(con: duckdb.DuckDBPyConnection, video_id: str) -> str:
    """Where the video was read from, by the frames, tracks or errors table (a video without people has no frames)."""
    row = con.execute("SELECT uri FROM (SELECT video_id, uri FROM frames UNION ALL SELECT video_id, uri FROM tracks "
                      "UNION ALL SELECT video_id, uri FROM errors) WHERE video_id = ? LIMIT 1", [video_id]).fetchone()
    if row is None:
        sample = [r[0] for r in con.execute("SELECT DISTINCT video_id FROM tracks ORDER BY 1 LIMIT 5").fetchall()]
        raise UsageError(f"video_id {video_id!r} is not in the output (some that are: {sample}); list them with "
                          f"`posepipe query OUTPUT \"SELECT DISTINCT video_id, uri FROM tracks\"`")
    return row[0]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser("render", __doc__)
    add_output_arguments(parser)
    parser.add_argument("--video-id", help="the video to render (frames.video_id)")
    parser.add_argument("--source-video", help="path or URI of the source video (default: the frames table's uri)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--out", help="write an mp4 clip with skeletons here (path or URI)")
    what.add_argument("--sheet", help="write a contact sheet PNG here instead")
    what.add_argument("--summary", help="write the run summary plot PNG here (no --video-id needed)")
    parser.add_argument("--max-frames", type=int, default=None, help="clip: only the first N frames")
    parser.add_argument("--frames", type=int, default=12, help="sheet: number of frames")
    parser.add_argument("--columns", type=int, default=None, help="sheet: tiles per row (default: ceil(sqrt(N)))")
    parser.add_argument("--tile-width", type=int, default=None,
                        help="sheet: tile width in pixels (default: the video's width, at most 960)")
    parser.add_argument("--bin-seconds", type=float, default=None,
                        help="summary: time bin in seconds (default: 60, finer for footage under 10 minutes)")
    args = parser.parse_args(argv)
    if (args.out or args.sheet) and not args.video_id:
        parser.error("--out and --sheet need --video-id (list ids with `posepipe query OUTPUT "
                     "\"SELECT DISTINCT video_id FROM tracks\"`)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging()
    import duckdb

    from pipeline.outputs.render import plot_summary, render_clip, render_contact_sheet
    from pipeline.video import DecodeError

    try:
        storage_options = parse_storage_options(args.storage_options)
        con = open_output(args.output, storage_options)
        if args.summary:
            table = plot_summary(con, args.summary, args.bin_seconds, storage_options)
            print(f"summary of {int(table['rows'].sum()) if len(table) else 0} person rows written to {args.summary}")
            return EXIT_OK
        source = args.source_video or source_uri(con, args.video_id)
        frames = con.execute("SELECT * FROM frames WHERE video_id = ?", [args.video_id]).df()
        if args.out:
            count = render_clip(frames, source, args.out, args.max_frames, storage_options)
            print(f"{count} frames of {args.video_id} ({len(frames)} person rows) written to {args.out}")
        else:
            height, width = render_contact_sheet(frames, source, args.sheet, args.frames, args.columns,
                                                 args.tile_width, storage_options)
            print(f"contact sheet {width}x{height} of {args.video_id} written to {args.sheet}")
    except (UsageError, DecodeError, duckdb.Error) as exc:
        return fail(exc)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
