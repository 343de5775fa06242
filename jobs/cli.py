"""`posepipe`: one command, a subcommand per job. Each job module has `main(argv) -> exit code`."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "run": ("jobs.run", "run the pipeline over a folder or archive of videos"),
    "models": ("jobs.models", "import the real-trained default weights; list the models a run can use"),
    "train": ("jobs.train", "train the pose network (Ray Train)"),
    "evaluate": ("jobs.evaluate", "OKS AP / PCK of a checkpoint on a COCO-format set"),
    "query": ("jobs.query", "SQL over the output tables (DuckDB views frames, tracks, videos, errors, runs)"),
    "render": ("jobs.render", "skeletons on a video (mp4 or contact sheet), or a run summary plot"),
    "submit": ("jobs.submit", "run the main job on a Ray cluster (Jobs API)"),
    "benchmark": ("jobs.benchmark", "frames/s per stage: raw decode, raw model, whole pipeline"),
    "evaluate-tracks": ("jobs.evaluate_tracks", "MOTA / IDF1 / OKS AP of a run against ground-truth sidecars"),
    "synth": ("jobs.synth", "generate synthetic people: images, videos, the sample archive"),
}


def usage() -> str:
    lines = ["usage: posepipe COMMAND [options]   (posepipe COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"posepipe: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
