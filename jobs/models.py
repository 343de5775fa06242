"""`posepipe models`: import the real-trained default weights, and list the models a run can name.

    posepipe models fetch                      # download, check, convert lite/full/heavy into the model cache
    posepipe models fetch --out s3://bucket/models     # ... or anywhere a cluster's workers can read
    posepipe models fetch --archive pose-0.5.1675469404.tgz   # offline: a copy of the npm package tarball
    posepipe models list

Exit status: 0 done, 2 bad arguments, 1 the download, a checksum or a conversion failed (the message says which).
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

from jobs.cli import (
    ArgumentParser,
    UsageError,
    add_storage_option_argument,
    configure_logging,
    fail,
    parse_storage_options,
)

if TYPE_CHECKING:
    import argparse

VARIANTS = ("lite", "full", "heavy")   # pipeline.models.blazepose.landmarks.VARIANTS without torch (a test checks)


def fetch(args: argparse.Namespace) -> int:
    from pipeline.models.blazepose.weights import WeightsError, fetch_models

    try:
        uris = fetch_models(tuple(args.variants), out=args.out, archive=args.archive, force=args.force,
                            storage_options=parse_storage_options(args.storage_options))
    except UsageError as exc:
        return fail(exc)
    except WeightsError as exc:
        return fail(exc, 1)
    for uri in uris:
        print(uri)
    return 0


def list_models(args: argparse.Namespace) -> int:
    from pipeline.models.blazepose.weights import MODEL_NAMES, PACKAGE, VERSION, cache_dir, cached_checkpoint
    from pipeline.models.checkpoint import CheckpointError, read_metadata

    print(f"model cache: {cache_dir()}")
    for name in MODEL_NAMES:
        path = cached_checkpoint(name)
        try:
            meta = read_metadata(str(path))
            state = f"{meta['source']['package']}@{meta['source']['version']}, {meta['license']}"
        except FileNotFoundError:
            state = f"not fetched (posepipe models fetch imports it from {PACKAGE}@{VERSION})"
        except (CheckpointError, KeyError, TypeError) as exc:
            state = f"unreadable ({exc}); posepipe models fetch --force"
        print(f"  {name:<16} {state}")
    print("  models/posepipe-synthetic.pt   bottom-up, trained on synthetic people (for the synthetic tests)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser("models", __doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    get = commands.add_parser("fetch", help="import the BlazePose weights (lite, full, heavy) as checkpoints",
                              command="models fetch")
    get.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                     help="landmark nets to import")
    get.add_argument("--out", help="folder or URI for the checkpoints (default: the model cache)")
    get.add_argument("--archive", help="local copy of the npm package tarball, instead of downloading it")
    get.add_argument("--force", action="store_true", help="import again even where a checkpoint is current")
    add_storage_option_argument(get)
    get.set_defaults(handler=fetch)
    commands.add_parser("list", help="the models a run can name, and where they are",
                        command="models list").set_defaults(handler=list_models)
    args = parser.parse_args(argv)
    configure_logging(logging.INFO)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
