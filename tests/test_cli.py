"""The `posepipe` command as a new user meets it: fast help, help texts, examples that parse, "did you mean", and
errors as one `posepipe: error:` line with exit 2 (a traceback only with --debug)."""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

from jobs.cli import COMMANDS, ArgumentParser, main

from conftest import encode_video

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "ray", "pandas", "duckdb", "pyarrow", "decord", "scipy")   # seconds of imports together


@pytest.mark.parametrize("command", [None] + list(COMMANDS))
def test_help_answers_before_any_heavy_import(command):
    """`--help` must not wait for torch or Ray (seconds of imports): they load after parsing."""
    argv = ["--help"] if command is None else [command, "--help"]
    code = ("import sys; from jobs.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            f"print('LOADED', sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=REPO,
                         timeout=60).stdout
    assert out.strip().endswith("LOADED []"), out[-500:]
    assert out.startswith(f"usage: posepipe {command or ''}".rstrip())


class Parsed(Exception):
    """Raised instead of parsing: carries the parser a job built."""


def parser_of(command: str) -> ArgumentParser:
    """The parser `posepipe <command>` builds (caught at its parse call, before anything runs)."""
    module = importlib.import_module(COMMANDS[command][0])

    def capture(self, *args, **kwargs):
        raise Parsed(self)

    with mock.patch.object(ArgumentParser, "parse_args", capture), \
            mock.patch.object(ArgumentParser, "parse_intermixed_args", capture):
        with pytest.raises(Parsed) as caught:
            module.main([])
    return caught.value.args[0]


def all_parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from all_parsers(sub)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_option_has_a_help_text_and_the_usage_says_posepipe(command):
    for parser in all_parsers(parser_of(command)):
        assert parser.prog.startswith(f"posepipe {command}"), parser.prog
        for action in parser._actions:
            if not isinstance(action, argparse._SubParsersAction):
                assert action.help, f"posepipe {command}: {action.option_strings or action.dest} has no help text"


def docstring_examples(command: str) -> list[list[str]]:
    """The `posepipe <command> ...` lines of a job's docstring (its --help), comments and line breaks removed."""
    doc = importlib.import_module(COMMANDS[command][0]).__doc__
    text = doc.replace("\\\n", " ")
    lines = [line.split(" # ")[0].strip() for line in text.splitlines()]
    return [shlex.split(line)[2:] for line in lines if line.startswith(f"posepipe {command} ")]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_examples_parse(command):
    examples = docstring_examples(command)
    parser = parser_of(command)
    intermixed = command == "query"
    for argv in examples:
        (parser.parse_intermixed_args if intermixed else parser.parse_args)(argv)
    if command not in ("evaluate-tracks", "benchmark"):
        assert examples, f"posepipe {command} --help shows no example"


def test_did_you_mean_for_commands_options_and_config_keys(capsys):
    assert main(["rnu"]) == 2
    assert capsys.readouterr().err.strip() == ("posepipe: error: unknown command 'rnu' (did you mean 'run'?); "
                                               "`posepipe --help` lists them")
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--ouptut", "x"])
    assert exit_.value.code == 2 and "(did you mean '--output'?)" in capsys.readouterr().err
    assert main(["run", "--input", "x", "--output", "y", "--set", "model.devcie=cpu"]) == 2
    assert "model.devcie: unknown key (did you mean 'model.device'?)" in capsys.readouterr().err


@pytest.fixture
def one_video(tmp_path):
    encode_video(tmp_path / "videos" / "a.mp4", num_frames=2)
    return tmp_path


@pytest.mark.parametrize("case", ["output is a file", "no videos", "bad yaml", "missing model", "query path",
                                  "render path", "bad env"])
def test_usage_errors_are_one_line_with_exit_2(case, one_video, capsys):
    root = one_video
    (root / "file").write_text("x")
    (root / "empty").mkdir()
    (root / "bad.yaml").write_text("decode: [1\n")
    run = ["run", "--input", str(root / "videos"), "--output", str(root / "out")]
    argv, expected = {
        "output is a file": (["run", "--input", str(root / "videos"), "--output", str(root / "file")],
                             "is a file; give a folder"),
        "no videos": (["run", "--input", str(root / "empty"), "--output", str(root / "out")], "holds no videos"),
        "bad yaml": (run + ["--config", str(root / "bad.yaml")], "is not valid YAML at line 2, column 1"),
        "missing model": (run + ["--set", "model.checkpoint=blazepose-nope"], "`posepipe models list`"),
        "query path": (["query", str(root / "nothere"), "SELECT 1"], "does not exist"),
        "render path": (["render", str(root / "nothere"), "--summary", str(root / "s.png")], "does not exist"),
        "bad env": (["submit", "--input", "s3://b/v", "--output", "s3://b/o", "--env", "NOT_SET_ANYWHERE_XYZ"],
                    "not set in this shell"),
    }[case]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("posepipe: error: ") and err.count("\n") == 1 and expected in err, err
    assert not (root / "out").exists()


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(capsys):
    def broken(argv):
        raise RuntimeError("disk on fire\nsecond line")

    with mock.patch("jobs.query.main", broken):
        assert main(["query", "x", "SELECT 1"]) == 1
        err = capsys.readouterr().err
        assert err == "posepipe: error: RuntimeError: disk on fire second line (rerun with --debug for the traceback)\n"
        with pytest.raises(RuntimeError):
            main(["--debug", "query", "x", "SELECT 1"])


def test_progress_lines_without_a_terminal(capsys):
    from jobs.run import Progress

    progress = Progress(videos=4, every_s=0.0)      # stderr is not a TTY under pytest: plain lines
    progress.update(frames=10)
    progress.update(frames=20, videos=1)
    progress.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["posepipe: 0/4 videos, 10 frames", lines[1]]           # no time left before a video is done
    assert lines[1].startswith("posepipe: 1/4 videos, 30 frames, ") and lines[1].endswith(" s left")


@pytest.mark.slow
def test_a_run_on_a_terminal_shows_a_progress_bar_then_only_the_summary(tmp_path, random_checkpoint):
    """The whole job under a pseudo-terminal, as a user runs it: no Ray log lines, a bar, the summary last."""
    for name in ("a", "b", "c"):
        encode_video(tmp_path / "in" / f"{name}.mp4", num_frames=12, width=96, height=64)
    (tmp_path / "in" / "broken.mp4").write_bytes(b"\x00" * 64)
    command = [str(Path(sys.executable).parent / "posepipe"), "run", "--input", str(tmp_path / "in"),
               "--output", str(tmp_path / "out"), "--set", f"model.checkpoint={random_checkpoint}",
               "--set", "decode.batch_size=4", "--set", "ray.num_cpus=2"]
    env = os.environ | {"COLUMNS": "120", "TERM": "xterm"}
    # `script` gives the job a terminal and records everything it printed there
    log = tmp_path / "terminal.log"
    done = subprocess.run(["script", "-qec", shlex.join(command), str(log)], env=env, cwd=REPO,
                          capture_output=True, timeout=300)
    assert done.returncode == 3, log.read_text(errors="replace")[-3000:]   # partial: the broken video failed
    text = log.read_text(errors="replace").split("Script done on")[0]         # `script`'s own footer left out
    text = "\n".join(line for line in text.splitlines() if line.strip(" \r\x1b[0m"))   # ... and a colour reset
    assert "posepipe run:" in text and "/4 [" in text and " frames" in text   # tqdm's bar: videos, frames
    for noise in ("INFO", "Started a local Ray instance", "Running Dataset", "core_worker", "issue_detector",
                  "logging.cc", "WARNING"):
        assert noise not in text, noise
    summary = text[text.rindex("posepipe run 20"):].splitlines()
    assert summary[0].endswith(": partial") and summary[1].strip().startswith("videos   3 ok / 1 failed")
    assert summary[-1].strip().startswith("output") and "videos" in summary[-1]
    assert "failed   " in text[text.rindex("posepipe run 20"):]


def test_the_models_command_offers_the_variants_the_converter_has():
    """`posepipe models fetch --variants` names them without importing torch; they must stay the converter's."""
    from jobs.models import VARIANTS
    from pipeline.models.blazepose.landmarks import VARIANTS as CONVERTED

    assert VARIANTS == tuple(CONVERTED)


def test_help_texts_that_name_a_default_name_the_codes():
    """Help texts name some defaults without importing the config (torch): they must say what the code does."""
    from pipeline.config import ModelSettings

    evaluate = parser_of("evaluate")
    checkpoint = next(a for a in evaluate._actions if "--checkpoint" in a.option_strings)
    precision = next(a for a in evaluate._actions if "--precision" in a.option_strings)
    assert f"model.checkpoint, {ModelSettings().checkpoint})" in checkpoint.help
    assert f"a run's, {ModelSettings().precision})" in precision.help


def test_the_speed_line_gives_a_rate_only_over_enough_processing():
    """Start-up ends when the first inference actor has its model loaded; processing shorter than MIN_RATE_SECONDS
    says so instead of printing a rate that a batch more or less would swing."""
    import datetime as dt

    from jobs.run import MIN_RATE_SECONDS, RunSummary, speed_line, startup_seconds

    started = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    assert startup_seconds(started.timestamp() + 46.5, started, elapsed=46.6) == 46.5
    assert startup_seconds(started.timestamp() + 90.0, started, elapsed=46.6) == 46.6   # clocks apart: capped
    assert startup_seconds(None, started, elapsed=3.0) == 3.0                          # no actor ever ready

    short = RunSummary("r", "out", videos_listed=2, frames=10, seconds=46.7, startup_seconds=46.5)
    assert short.frames_per_second is None
    assert speed_line(short) == ("10 frames in 0.2 s of processing, too short for a rate, after 46.5 s of start-up "
                                 "(Ray, actors, model)")
    long = RunSummary("r", "out", videos_listed=2, frames=300, seconds=20.0 + 2 * MIN_RATE_SECONDS,
                      startup_seconds=20.0)
    assert long.frames_per_second == pytest.approx(30.0)
    assert speed_line(long).startswith("30.0 frames/s over 10.0 s of processing, after 20.0 s of start-up")
    assert speed_line(RunSummary("r", "out", videos_listed=3, videos_skipped=3)) == "nothing to process"
