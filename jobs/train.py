"""`python -m jobs.train`: train PoseNet with Ray Train from configs/train.yaml plus `--set key=value` overrides.

    python -m jobs.train --config configs/train.yaml --set optim.epochs=2 --set run.output=runs/try

With no data configured (data.train / data.val null) the synthetic generator writes the sets once into
data.generate.cache_dir, so the default run needs no download. Re-running the same command after an interruption
resumes after the last finished epoch. Exit status: 0 trained, 2 bad config, 1 training failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from pipeline.config import CONFIG_DIR, ConfigError, add_config_arguments, load_config
from pipeline.training import TrainConfig, run_training

logger = logging.getLogger("posepipe.train")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.train", description=__doc__.split("\n")[0])
    add_config_arguments(parser, CONFIG_DIR / "train.yaml")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config = load_config(TrainConfig, args.config, args.overrides)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        last = run_training(config)
    except Exception:  # noqa: BLE001 - a job reports any failure as its exit status
        logger.exception("training failed")
        return 1
    print(json.dumps({"output": config.run.output, "export": config.run.export, "last_epoch": last}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
