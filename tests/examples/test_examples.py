"""The examples in examples/, run as users run them (a subprocess, process workers), tiny."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, *args: str) -> dict[str, object]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True,
                          text=True, timeout=300, env=env, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_lightning_fmnist_example() -> None:
    pytest.importorskip("pytorch_lightning")
    out = run_example("lightning_fmnist.py", "--tiny")
    assert out["status"] == "finished"
    assert 0.3 < float(out["pbt_test"]) <= 1.0  # 40 steps of a CNN beat chance (0.1) by far
    assert 0.0 < float(out["constant_test"]) <= 1.0


def test_huggingface_text_example() -> None:
    pytest.importorskip("transformers")
    out = run_example("hf_text.py", "--tiny")
    assert out["status"] == "finished"
    assert 0.0 <= float(out["pbt_test"]) <= 1.0
    assert 0.0 <= float(out["constant_test"]) <= 1.0
