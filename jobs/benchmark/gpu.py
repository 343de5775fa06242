"""`python -m jobs.benchmark.gpu`: the top-down person finding on a GPU, as the inference actor runs it, without Ray
or a video decoder (a GPU machine may lack both; `infra/gpu/check.sh` runs this there).

Rows:
    raw model fwd / raw model   the whole person finding (`PoseEstimator.predict` / `__call__`, which also letterboxes
                                the frames on the device) on decoded batches of B frames of real people
                                (`pipeline.photos.group_frames`, the benchmark's footage),
                                one video per batch, per precision; the forward row's note has the share of time
                                outside the nets, the torch ops per batch and the crop batches that reached each net
    raw detector / landmarks    each net alone at the given batch sizes (the landmark net's crop batches in the
                                pipeline are about people per frame x frames per step, see the row above)

    python -m jobs.benchmark.gpu --out gpu-results/benchmark [--batch-sizes 16,32,64,128] [--precisions fp32,bf16]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from jobs.benchmark.raw import raw_model_rates
from jobs.benchmark.report import machine_description, markdown_table, write_outputs
from jobs.benchmark.topdown import raw_net_rates
from jobs.cli import configure_logging
from pipeline.models.checkpoint import read_metadata, resolve_checkpoint

logger = logging.getLogger("posepipe.benchmark.gpu")


def travelling_group_frames(count: int, picture: tuple[int, int], size: int) -> np.ndarray:
    """(count, h, w, 3) uint8 frames of real people as the decode stage hands them to a top-down model: at their
    own size, shrunk to fit `size` (`Letterbox.fit(..., pad=False)`)."""
    from pipeline.photos import group_frames
    from pipeline.pose.letterbox import Letterbox

    letterbox = Letterbox.fit(picture[0], picture[1], size, pad=False)
    return np.stack([letterbox.apply(frame) for frame in group_frames(count, picture)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser("python -m jobs.benchmark.gpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="blazepose-heavy")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch-sizes", default="16,32,64,128", help="decoded frames per batch (decode.batch_size)")
    p.add_argument("--net-batch-sizes", default="16,64,256", help="inputs per call of each net alone")
    p.add_argument("--precisions", default="fp32,bf16,fp16")
    p.add_argument("--size", default="640x360", help="picture size WxH of the frames")
    p.add_argument("--frame-size", type=int, default=1024, help="square the frames are letterboxed to")
    p.add_argument("--seconds", type=float, default=4.0, help="minimum timed seconds per row")
    p.add_argument("--out", type=Path, required=True, help="write OUT.json and OUT.md")
    args = p.parse_args(argv)
    configure_logging(logging.INFO)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    width, height = (int(v) for v in args.size.split("x"))
    frames = travelling_group_frames(max(batch_sizes), (width, height), args.frame_size)
    variant = read_metadata(resolve_checkpoint(args.checkpoint))["variant"]
    rows = []
    for precision in args.precisions.split(","):
        for batch in batch_sizes:
            rows += raw_model_rates(args.checkpoint, batch, 1, None, args.device, precision,
                                    min_seconds=args.seconds, frames=frames[:batch], size=args.frame_size,
                                    picture=(width, height))
        rows += raw_net_rates({variant: args.checkpoint}, [int(b) for b in args.net_batch_sizes.split(",")],
                              args.device, precision, 1, min_seconds=args.seconds / 2, litert=False)
    table = markdown_table(rows)
    print(table)
    context = {"machine": machine_description(), "checkpoint": args.checkpoint, "video_size": args.size,
               "frame_size": args.frame_size}
    write_outputs(args.out, rows, {}, context)
    return 0


if __name__ == "__main__":
    sys.exit(main())
