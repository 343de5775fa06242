"""`posepipe evaluate`: OKS AP/AR and PCK of a model (or of ready-made predictions) on a COCO keypoint set.

    posepipe evaluate --data ../shared/real-dev --save-results r.json      # the default model, end to end
    posepipe evaluate --data DIR --gt-boxes --by dataset                   # keypoints only, per source
    posepipe evaluate --checkpoint models/posepipe-synthetic.pt --data /tmp/posepipe-synthetic/<set>
    posepipe evaluate --results predictions.json --data path/to/annotations.json

`--data` is a directory (annotations.json + images/), or the JSON itself, at a local path or fsspec URI. The model
runs as in `posepipe run`: images letterboxed to the model's frame size, the same people finding and precision.
With `--results` (COCO keypoint-results format) no model runs: predictions made elsewhere are scored as they are.
Prints one JSON object of metrics. Exit status: 0 scored, 2 bad arguments or input.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time

from jobs.cli import (
    ArgumentParser,
    UsageError,
    add_storage_option_argument,
    configure_logging,
    fail,
    parse_storage_options,
)

logger = logging.getLogger("posepipe.evaluate")


def parse_fields(items: list[str], cls) -> dict:
    """`key=value` strings (values as YAML) for the fields of dataclass `cls`, as a run config's section sets them."""
    fields = {f.name for f in dataclasses.fields(cls)}
    import yaml

    values = {key: yaml.safe_load(value) for key, _, value in (item.partition("=") for item in items)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; expected some of {sorted(fields)}")
    return values


def parse_args(argv: list[str] | None):
    parser = ArgumentParser("evaluate", __doc__)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="model name, checkpoint path or URI to run over --data (default: a run's "
                                             "model.checkpoint, blazepose-heavy)")
    source.add_argument("--results", help="COCO keypoint-results JSON to score as it is (no model runs)")
    parser.add_argument("--data", required=True, help="COCO set: directory with annotations.json + images/, or JSON")
    parser.add_argument("--limit", type=int, help="score only the first N images (default: all)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per model batch")
    parser.add_argument("--device", default="cpu", help="torch device for the model (cpu, cuda, cuda:1)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16", "auto"],
                        help="autocast of the network, as model.precision in a run (default: a run's, auto)")
    parser.add_argument("--frame-size", type=int,
                        help="letterbox images to this square, as model.frame_size (default: the checkpoint's)")
    parser.add_argument("--pck-threshold", type=float, default=0.2, help="PCK distance, fraction of bbox size")
    parser.add_argument("--grouping", action="append", default=[], metavar="KEY=VALUE",
                        help="bottom-up models: GroupingConfig field as a run config's grouping section sets it, "
                             "e.g. min_keypoints=4 (repeatable)")
    parser.add_argument("--topdown", action="append", default=[], metavar="KEY=VALUE",
                        help="top-down models: TopDownConfig field as a run config's topdown section sets it, "
                             "e.g. tiles=0 (repeatable)")
    parser.add_argument("--gt-boxes", action="store_true",
                        help="top-down models: crop each labelled person's box instead of detecting, to score "
                             "keypoints apart from person finding")
    parser.add_argument("--flip-test", action="store_true",
                        help="bottom-up models: average each image's outputs with its mirror's (model.flip_test)")
    parser.add_argument("--by", metavar="FIELD",
                        help="also score per value of this image field, e.g. --by dataset")
    parser.add_argument("--save-results", help="write the predictions (COCO results JSON) here")
    add_storage_option_argument(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging()
    import torch

    from pipeline.config import ModelSettings
    from pipeline.evaluation.metrics import evaluate_by, evaluate_results
    from pipeline.evaluation.predict import predict_dataset
    from pipeline.models.blazepose.topdown import TopDownConfig
    from pipeline.models.checkpoint import CheckpointError
    from pipeline.pose.grouping import GroupingConfig
    from pipeline.storage import resolve
    from pipeline.training.dataset import read_coco

    torch.set_num_threads(args.threads)
    started = time.monotonic()
    try:
        options = parse_storage_options(args.storage_options)
        if args.results:
            gt, _ = read_coco(args.data, options)
            fs, path = resolve(args.results, options)
            with fs.open(path, "rb") as f:
                results = json.load(f)
            if not isinstance(results, list):
                raise ValueError(f"{args.results} must hold a JSON list of COCO keypoint results, "
                                 f"got {type(results).__name__}")
        else:
            gt, results = predict_dataset(
                args.checkpoint or ModelSettings().checkpoint, args.data, args.batch_size, args.limit,
                GroupingConfig(**parse_fields(args.grouping, GroupingConfig)), device=args.device,
                storage_options=options, flip_test=args.flip_test, precision=args.precision,
                topdown=TopDownConfig(**parse_fields(args.topdown, TopDownConfig)), frame_size=args.frame_size,
                gt_boxes=args.gt_boxes)
        metrics = evaluate_results(gt, results, args.pck_threshold)
        by = evaluate_by(gt, results, args.by, args.pck_threshold) if args.by else None
    except (FileNotFoundError, CheckpointError, UsageError, ValueError, KeyError, TypeError) as exc:
        return fail(exc)
    if args.save_results:
        fs, path = resolve(args.save_results, options)
        with fs.open(path, "w") as f:
            json.dump(results, f)
    print(json.dumps({"images": len(gt["images"]), "people": len(gt["annotations"]), "predictions": len(results),
                      "seconds": round(time.monotonic() - started, 1), **metrics,
                      **({f"by_{args.by}": by} if by else {})}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
