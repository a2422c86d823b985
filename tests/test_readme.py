"""The README's "Use it" section works as a newcomer runs it: its task file is the shipped
example, and its commands run through subprocesses, ending with the best weights loaded."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIREPBT = [sys.executable, "-m", "firepbt.cli"]


def readme_blocks(lang: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.DOTALL)


def test_the_readme_task_file_is_the_shipped_example() -> None:
    assert (ROOT / "examples" / "digits.py").read_text() in readme_blocks("python")


@pytest.mark.slow
def test_the_readme_commands_run_and_the_best_weights_load(tmp_path: Path) -> None:
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "digits.py").write_text((ROOT / "examples/digits.py").read_text())
    commands = [line for line in readme_blocks("bash")[1].replace("\\\n", " ").splitlines()
                if line.startswith("firepbt ")]
    assert [c.split()[1] for c in commands] == ["run", "status", "report", "export", "compare"]
    for command in commands:
        argv = shlex.split(command.split(" #")[0])[1:]
        if argv[0] == "compare":  # the README's 5 seeds x 3 methods, scaled down for CI
            argv += ["--seeds", "1", "--steps", "200", "--methods", "fire,pbt"]
        proc = subprocess.run([*FIREPBT, *argv], cwd=tmp_path, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, (command, proc.stderr)
    summary = json.loads((tmp_path / "runs/compare-digits/compare.json").read_text())
    assert set(summary["methods"]) == {"fire", "pbt", "baseline:0"}
    code = (
        "import sys; sys.path.insert(0, 'examples')\n"
        "from firepbt.result import Result\nfrom firepbt.store import open_store\n"
        "from digits import Digits\n"
        "res = Result(open_store('runs/digits.db'))\n"
        "m = Digits(); m.setup(res.schedule(res.best)[-1].hparams, seed=0)\n"
        "m.load('best')\n"
        "print(m.evaluate(), res.best_metric)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded, best = (float(x) for x in out.stdout.split())
    assert loaded == best  # the exported weights are the best member's, exactly
