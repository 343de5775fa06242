"""`python -m jobs.evaluate`: OKS AP/AR and PCK of a checkpoint (or of ready-made predictions) on a COCO set.

    python -m jobs.evaluate --checkpoint models/posepipe-synthetic.pt --data /tmp/posepipe-synthetic/<set>
    python -m jobs.evaluate --results predictions.json --data path/to/annotations.json

`--data` is a directory (annotations.json + images/), or the JSON itself, at a local path or fsspec URI. With
`--results` (COCO keypoint-results format) no model runs: predictions made elsewhere are scored as they are.
Prints one JSON object of metrics. Exit status: 0 scored, 2 bad arguments or input.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import torch
import yaml
from torch.utils.data import DataLoader

from pipeline.checkpoint import CheckpointError, load_checkpoint
from pipeline.config import ModelSettings
from pipeline.dataset import CocoKeypointDataset, read_coco
from pipeline.grouping import GroupingConfig
from pipeline.inference import autocast_dtype, keep_freed_memory, prepare_model, run_network
from pipeline.metrics import evaluate_results, predict_coco_results
from pipeline.storage import resolve

logger = logging.getLogger("posepipe.evaluate")


def predict_checkpoint(checkpoint: str, data: str, batch_size: int = 16, limit: int | None = None,
                       grouping: GroupingConfig | None = None, device: str = "cpu",
                       storage_options: dict | None = None, flip_test: bool = False,
                       precision: str = ModelSettings().precision) -> tuple[dict, list[dict]]:
    """Run a checkpoint over a COCO set as `posepipe run` runs it (folded BatchNorm, channels_last, `precision`,
    by default the run's); returns (ground truth of the images used, COCO keypoint results)."""
    torch_device = torch.device(device)
    if torch_device.type == "cpu":
        keep_freed_memory()
    model, meta = load_checkpoint(checkpoint, map_location=device, storage_options=storage_options)
    model, dtype = prepare_model(model), autocast_dtype(precision, torch_device)
    grouping = grouping or GroupingConfig()  # what `posepipe run` groups with unless its config says otherwise
    dataset = CocoKeypointDataset(data, int(meta["input_size"]), None, storage_options=storage_options, limit=limit)
    results: list[dict] = []
    for batch in DataLoader(dataset, batch_size=batch_size, num_workers=1):
        # (B, K, h, w), (B, 2L, h, w)
        heatmaps, pafs = run_network(model, batch["image"].to(device), dtype, flip_test)
        for image_results in predict_coco_results(heatmaps, pafs, batch, grouping).values():
            results.extend(image_results)
    return dataset.ground_truth(), results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.evaluate", description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="checkpoint path or URI to run over --data")
    source.add_argument("--results", help="COCO keypoint-results JSON to score as it is")
    parser.add_argument("--data", required=True, help="COCO set: directory with annotations.json + images/, or JSON")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N images")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu", help="torch device for the network (cpu, cuda, cuda:1)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--precision", default=ModelSettings().precision, choices=["fp32", "bf16", "fp16", "auto"],
                        help="autocast of the network, as model.precision in a run (default: the run's default)")
    parser.add_argument("--pck-threshold", type=float, default=0.2, help="PCK distance, fraction of bbox size")
    parser.add_argument("--grouping", action="append", default=[], metavar="KEY=VALUE",
                        help="GroupingConfig field, as a run config's grouping section sets it, e.g. "
                             "min_keypoints=4 (repeatable)")
    parser.add_argument("--flip-test", action="store_true",
                        help="average each image's outputs with its mirror's, as model.flip_test=true in a run")
    parser.add_argument("--save-results", help="write the predictions (COCO results JSON) here")
    parser.add_argument("--storage-options", default="{}", help="fsspec options as JSON, e.g. an endpoint_url")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    options = json.loads(args.storage_options)
    started = time.monotonic()
    try:
        if args.checkpoint:
            grouping = GroupingConfig(**{key: yaml.safe_load(value) for key, _, value in
                                         (item.partition("=") for item in args.grouping)})
            gt, results = predict_checkpoint(args.checkpoint, args.data, args.batch_size, args.limit, grouping,
                                             device=args.device, storage_options=options, flip_test=args.flip_test,
                                             precision=args.precision)
        else:
            gt, _ = read_coco(args.data, options)
            fs, path = resolve(args.results, options)
            with fs.open(path, "rb") as f:
                results = json.load(f)
            if not isinstance(results, list):
                raise ValueError(f"{args.results} must hold a JSON list of COCO keypoint results, "
                                 f"got {type(results).__name__}")
        metrics = evaluate_results(gt, results, args.pck_threshold)
    except (FileNotFoundError, CheckpointError, ValueError, KeyError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.save_results:
        fs, path = resolve(args.save_results, options)
        with fs.open(path, "w") as f:
            json.dump(results, f)
    print(json.dumps({"images": len(gt["images"]), "people": len(gt["annotations"]), "predictions": len(results),
                      "seconds": round(time.monotonic() - started, 1), **metrics}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
