"""The README runs as written: its shell and Python examples, after the demo, in a fresh folder, as a new user would.

Blocks fenced as `bash` or `python` run (in order, each must exit 0); `text` is output and `console` needs a cluster
of your own, so neither runs. The quick start's `make demo` is replaced by the two commands its Makefile recipe runs
(checked here, so the two cannot drift apart), and `make test` would be this suite.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def blocks() -> list[tuple[str, str]]:
    return BLOCK.findall((REPO / "README.md").read_text())


def demo_commands() -> list[str]:
    """The commands of the Makefile's `demo` recipe, as a shell in the virtual environment runs them."""
    recipe = (REPO / "Makefile").read_text().split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    return [line.strip().replace("$(BIN)/", "") for line in recipe.splitlines()[1:] if line.startswith("\t")]


def test_the_quick_start_is_the_two_commands_and_the_readme_is_short():
    runnable = [(lang, code) for lang, code in blocks() if lang in ("bash", "python")]
    assert [line.split("#")[0].strip() for line in runnable[0][1].splitlines()] == ["make demo", "make test"]
    assert demo_commands() == ["posepipe synth sample --out sample", "posepipe run --input sample --output output"]
    assert {lang for lang, _ in blocks()} <= {"bash", "python", "text", "console"}   # nothing runs by accident
    assert len((REPO / "README.md").read_text().splitlines()) <= 150


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_every_readme_example_runs_after_the_demo(tmp_path):
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("POSEPIPE_VERBOSE", None)

    def run(argv: list[str], what: str) -> None:
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"README {what} failed ({done.returncode}):\n{done.stdout[-2000:]}\n" \
                                     f"{done.stderr[-3000:]}"

    for command in demo_commands():
        run(["bash", "-c", command], f"demo step {command!r}")
    examples = [(lang, code) for lang, code in blocks() if lang in ("bash", "python")][1:]   # after the quick start
    assert len(examples) >= 6
    for lang, code in examples:
        if lang == "bash":
            run(["bash", "-euo", "pipefail", "-c", code], f"shell block\n{code}")
        else:
            run([sys.executable, "-c", code], f"Python block\n{code}")
    assert (tmp_path / "sheet.png").stat().st_size > 10_000 and (tmp_path / "summary.png").is_file()
    assert any((tmp_path / "my-poses" / "videos").rglob("*.parquet"))
