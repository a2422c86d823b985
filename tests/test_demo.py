"""The README's first command's job, at its quick size: FIRE PBT vs PBT vs random search on the
NQM through compare() on process workers, then PBT on real Fashion-MNIST, ending in reports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from firepbt.demo import _clear_comparison


@pytest.mark.slow
def test_quick_demo_writes_every_run_beside_each_other_and_reports(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "firepbt.cli", "demo", "--quick", "--out",
                           str(tmp_path / "demo")], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    demo = tmp_path / "demo"
    stores = sorted(p.name for p in demo.glob("*.db"))
    assert stores == ["fire-s0.db", "fmnist-pbt.db", "pbt-s0.db", "random-s0.db"]
    for page in ("nqm-comparison.html", "compare.html", "fmnist-pbt.html"):
        assert (demo / page).stat().st_size > 0
    assert "FIRE PBT: final loss" in proc.stdout
    _clear_comparison(demo)  # what the next demo does first: the comparison goes, the rest stays
    assert sorted(p.name for p in demo.glob("*.db")) == ["fmnist-pbt.db"]
    assert not (demo / "plan.json").exists() and not list(demo.glob("*-s0.db.ckpt"))
