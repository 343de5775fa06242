"""`posepipe`: one command, a subcommand per job. Each job module has `main(argv) -> exit code`.

This module stays light (standard library only): `posepipe <cmd> --help` must answer before torch, Ray or pandas
load, so job modules import those inside `main`, after parsing. It also holds what every job shares: the argument
parser (errors as `posepipe: error: ...`, defaults in the help), the usage-error exit, and the config options.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import os
import sys
from typing import Any, Sequence

EXIT_USAGE = 2

COMMANDS = {
    "run": ("jobs.run", "run the pipeline over a folder or archive of videos"),
    "query": ("jobs.query", "SQL over the output tables (DuckDB views frames, tracks, videos, errors, runs)"),
    "render": ("jobs.render", "skeletons on a video (mp4 or contact sheet), or a run summary plot"),
    "submit": ("jobs.submit", "run the main job on a Ray cluster (Jobs API)"),
    "models": ("jobs.models", "import the real-trained default weights; list the models a run can use"),
    "evaluate": ("jobs.evaluate", "OKS AP of a model on a COCO-format set of real photos"),
    "evaluate-tracks": ("jobs.evaluate_tracks", "MOTA / IDF1 / OKS AP of a run against ground-truth sidecars"),
    "benchmark": ("jobs.benchmark", "frames/s per stage: raw decode, raw model, whole pipeline"),
    "train": ("jobs.train", "train the bottom-up pose network (Ray Train)"),
    "synth": ("jobs.synth", "generate synthetic people: images, videos, the sample archive"),
}
GLOBAL_FLAGS = {"--debug": "show the Python traceback of an unexpected error",
                "--verbose": "show every log line, Ray's included"}


class UsageError(Exception):
    """Input the user can fix (a path, an option, a config value); the message says what was expected, what came,
    and what to do. Exits 2 with one line, never a traceback."""


def fail(message: object, status: int = EXIT_USAGE) -> int:
    """Print `posepipe: error: <message>` on one line and return the exit status (2: a usage or input error)."""
    print(f"posepipe: error: {' '.join(str(message).split())}", file=sys.stderr)
    return status


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """` (did you mean 'x'?)` for a close match, else ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's layout and appends each option's default where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "%(default)" in text or default in (None, False, [], "", argparse.SUPPRESS) or not action.option_strings:
            return text
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with posepipe's conventions: `prog` is `posepipe <cmd>`, the module docstring is the description, and
    a bad argument prints the usage and one `posepipe: error:` line (exit 2)."""

    def __init__(self, command: str, doc: str | None = None, **kwargs: Any):
        kwargs.setdefault("prog", f"posepipe {command}")
        kwargs.setdefault("description", (doc or "").strip() or None)
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(**kwargs)

    def error(self, message: str):  # noqa: D102 - argparse's hook
        if message.startswith("unrecognized arguments: "):
            options = [o for action in self._actions for o in action.option_strings]
            message += "".join(did_you_mean(arg.split("=")[0], options) for arg in message.split(": ", 1)[1].split()
                               if arg.startswith("--"))
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"posepipe: error: {message} (`{self.prog} --help` lists the options)\n")


def add_config_arguments(parser: argparse.ArgumentParser, example: str) -> None:
    """`--config FILE`, repeatable `--set KEY=VALUE` and `--show-config`; every default lives in the code
    (pipeline/config.py), a file holds only what it changes."""
    parser.add_argument("--config", metavar="FILE",
                        help="YAML file with the settings to change (default: none, the code's defaults; "
                             "`--show-config` prints them all)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"change one setting, e.g. --set {example} (repeatable; wins over --config)")
    parser.add_argument("--show-config", action="store_true",
                        help="print the resolved config as YAML and exit")


def verbose() -> bool:
    """`--verbose` was given (`posepipe --verbose ...`, or POSEPIPE_VERBOSE=1)."""
    return os.environ.get("POSEPIPE_VERBOSE") == "1"


def add_storage_option_argument(parser: argparse.ArgumentParser) -> None:
    """`--storage-option KEY=VALUE`, the one way every command takes fsspec options (a run: `--set
    storage_options.KEY=VALUE`)."""
    parser.add_argument("--storage-option", dest="storage_options", action="append", default=[],
                        metavar="KEY=VALUE", help="fsspec option for the paths and URIs given, e.g. "
                                                  "endpoint_url=http://localhost:9000 (repeatable)")


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """OUTPUT and --storage-option, for the commands that read a run's tables (query, render)."""
    parser.add_argument("output", help="output root of `posepipe run`: folder or URI (s3://bucket/prefix)")
    add_storage_option_argument(parser)


def open_output(output: str, storage_options: dict[str, Any]):
    """DuckDB views of an existing output root (`pipeline.outputs.query.connect`); a root that does not exist is a
    UsageError (a typo is not 0 rows)."""
    from pipeline.outputs.query import connect

    try:
        return connect(output, storage_options)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None


def parse_storage_options(items: list[str]) -> dict[str, Any]:
    """`["endpoint_url=http://x:9000", "anon=true"]` -> {"endpoint_url": "http://x:9000", "anon": True}; values are
    YAML scalars, as in `--set`."""
    import yaml

    options: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--storage-option {item!r} is not KEY=VALUE (e.g. endpoint_url=http://localhost:9000)")
        try:
            options[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            options[key.strip()] = raw
    return options


def configure_logging(level: int = logging.WARNING) -> None:
    """Warnings and errors only, one short line each (a progress bar and the summary say the rest); with --verbose
    every INFO line with its time and logger."""
    if verbose():
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    else:
        logging.basicConfig(level=level, format="posepipe: %(levelname)s: %(message)s")


def usage() -> str:
    lines = ["usage: posepipe [--debug] [--verbose] COMMAND [options]   (posepipe COMMAND --help for its options)",
             "", "commands:"]
    lines += [f"  {name:<16} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "options of every command:"] + [f"  {flag:<16} {help_}" for flag, help_ in GLOBAL_FLAGS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if "--verbose" in argv:
        os.environ["POSEPIPE_VERBOSE"] = "1"   # read by the job, and by its Ray workers
    argv = [a for a in argv if a not in GLOBAL_FLAGS]
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        return fail(f"unknown command {name!r}{did_you_mean(name, list(COMMANDS))}; `posepipe --help` lists them")
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except UsageError as exc:
        return fail(exc)
    except KeyboardInterrupt:
        print("posepipe: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one line for the user; the traceback on request
        if debug:
            raise
        print(f"posepipe: error: {type(exc).__name__}: {' '.join(str(exc).split())[:500]} "
              f"(rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
