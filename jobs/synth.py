"""Command line for the synthetic-people generator: COCO image sets, videos with ground truth, the sample archive.

    posepipe synth images --out train/ --num 1000 --seed 1 --size 256 --background train
    posepipe synth videos --out crossing/ --num 4 --seed 7 --scenario cross --ext .mp4
    posepipe synth sample --out sample/

The sample archive also holds real people: `photos/`, two freely licensed photos animated into short clips
(`pipeline/photos`), which the default (real-trained) model finds; the synthetic walkers come with ground truth.
"""

import argparse
import logging
import os
import sys
import time

from jobs.cli import ArgumentParser, configure_logging
from pipeline.synthetic import SCENARIOS, write_coco_dataset, write_sample_archive, write_video
from pipeline.synthetic.backgrounds import BACKGROUND_STYLES, SPLITS
from pipeline.synthetic.videos import CODECS

logger = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser("synth", __doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    backgrounds = sorted(SPLITS) + sorted(BACKGROUND_STYLES)

    images = sub.add_parser("images", help="a COCO keypoint dataset of still images", command="synth images")
    images.add_argument("--out", required=True, help="output folder (images/ and annotations.json)")
    images.add_argument("--num", type=int, required=True, help="number of images")
    images.add_argument("--seed", type=int, required=True,
                        help="random seed: the same seed gives the same set")
    images.add_argument("--size", type=int, default=256, help="square image side in pixels")
    images.add_argument("--min-people", type=int, default=1, help="fewest people in an image")
    images.add_argument("--max-people", type=int, default=4, help="most people in an image")
    images.add_argument("--background", default=None, choices=backgrounds,
                        help="background split or style (default: every family)")
    images.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes rendering images (default: one per CPU); the output does not depend on it")

    videos = sub.add_parser("videos", help="videos with a ground-truth JSON sidecar each", command="synth videos")
    videos.add_argument("--out", required=True, help="output folder (one video and one JSON sidecar each)")
    videos.add_argument("--num", type=int, required=True, help="number of videos")
    videos.add_argument("--seed", type=int, required=True, help="random seed: the same seed gives the same videos")
    videos.add_argument("--scenario", choices=SCENARIOS, default=None,
                        help="motion of the people (default: cycle through all)")
    videos.add_argument("--frames", type=int, default=60, help="frames per video")
    videos.add_argument("--fps", type=float, default=15.0, help="frame rate")
    videos.add_argument("--width", type=int, default=320, help="frame width, pixels")
    videos.add_argument("--height", type=int, default=240, help="frame height, pixels")
    videos.add_argument("--people", type=int, default=2, help="people per video")
    videos.add_argument("--ext", choices=sorted(CODECS), default=".mp4", help="container (picks the codec)")
    videos.add_argument("--background", default=None, choices=backgrounds,
                        help="background split or style (default: every family)")

    sample = sub.add_parser("sample", help="the small sample archive (cam1/, cam2/ synthetic with mp4 + json; "
                                           "photos/ real people)", command="synth sample")
    sample.add_argument("--out", required=True, help="output folder")
    sample.add_argument("--seed", type=int, default=0, help="random seed of the synthetic videos")
    sample.add_argument("--num", type=int, default=4, help="number of synthetic videos")
    sample.add_argument("--no-photos", dest="photos", action="store_false",
                        help="leave out the clips of real people (photos/)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    configure_logging(logging.INFO)
    start = time.perf_counter()
    try:
        _run(args)
    except ValueError as err:   # bad sizes, counts or names: say so like any other usage error
        parser.error(str(err))
    logger.info("done in %.1f s", time.perf_counter() - start)
    return 0


def _run(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    if args.command == "images":
        path = write_coco_dataset(args.out, args.num, args.seed, image_size=(args.size, args.size),
                                  num_people=(args.min_people, args.max_people), background=args.background,
                                  workers=args.workers)
        logger.info("annotations: %s (%.1f images/s)", path, args.num / (time.perf_counter() - start))
    elif args.command == "videos":
        for i in range(args.num):
            scenario = args.scenario or SCENARIOS[i % len(SCENARIOS)]
            gt = write_video(f"{args.out}/video_{i:03d}{args.ext}", args.seed * 1000 + i, num_frames=args.frames,
                             fps=args.fps, size=(args.width, args.height), num_people=args.people,
                             scenario=scenario, background=args.background)
            logger.info("ground truth: %s", gt)
    else:
        paths = write_sample_archive(args.out, seed=args.seed, num_videos=args.num)
        if args.photos:
            from pipeline.photos import write_photo_clips

            paths += write_photo_clips(os.path.join(args.out, "photos"))
        logger.info("sample archive: %d videos under %s", len(paths), args.out)


if __name__ == "__main__":
    sys.exit(main())
