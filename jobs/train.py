"""`posepipe train`: train the bottom-up PoseNet with Ray Train; `--set key=value` or `--config FILE` change the recipe.

    posepipe train --set optim.epochs=2 --set run.output=runs/try

With no data configured (data.train / data.val null) the synthetic generator writes the sets once into
data.generate.cache_dir, so the default run needs no download. Re-running the same command after an interruption
resumes after the last finished epoch. Exit status: 0 trained, 2 bad config, 1 training failed.
"""

from __future__ import annotations

import json
import logging
import sys

from jobs.cli import ArgumentParser, add_config_arguments, configure_logging, fail

logger = logging.getLogger("posepipe.train")


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser("train", __doc__)
    add_config_arguments(parser, "optim.epochs=2")
    args = parser.parse_args(argv)
    configure_logging(logging.INFO)
    from pipeline.config import ConfigError, dump_config, load_config
    from pipeline.training.loop import TrainConfig, run_training

    try:
        config = load_config(TrainConfig, args.config, args.overrides)
    except ConfigError as exc:
        return fail(exc)
    if args.show_config:
        print(dump_config(config), end="")
        return 0
    try:
        last = run_training(config)
    except Exception:  # noqa: BLE001 - a job reports any failure as its exit status
        logger.exception("training failed")
        return 1
    print(json.dumps({"output": config.run.output, "export": config.run.export, "last_epoch": last}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
