"""Issue #8 g: ``firepbt bench`` stopped with SIGTERM leaves no pool process behind.

The comparison benches (``compare(jobs=2)``) fan (method, seed) jobs out over a fork process
pool. SIGTERM ended the bench's main process at once, and its pool processes waited for work
forever (found still there 30 minutes later). Here each job blocks (a stand-in for a long
training run), the bench process gets SIGTERM, and every pool process must be gone soon after.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from rel_helpers import REPO

HARNESS = """
import os, sys, time
from pathlib import Path

from firepbt.bench.{module} import {function} as pool_map

def job(i):
    Path(sys.argv[1], f"{{os.getpid()}}").touch()
    time.sleep(600)  # a long training run
    return {{}}

if __name__ == "__main__":
    pool_map(job, list(range(4)), 2)
"""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.parametrize(("module", "function"), [("_pool", "pool_map")])
def test_sigterm_tears_the_bench_pool_down(module: str, function: str, tmp_path: Path) -> None:
    pids_dir = tmp_path / "pids"
    pids_dir.mkdir()
    script = tmp_path / "bench.py"
    script.write_text(textwrap.dedent(HARNESS.format(module=module, function=function)))
    bench = subprocess.Popen([sys.executable, str(script), str(pids_dir)], cwd=str(REPO),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pool: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(pool) < 2:  # both pool processes are inside a job
            assert bench.poll() is None and time.monotonic() < deadline, "no pool started"
            time.sleep(0.02)
            pool = [int(p.name) for p in pids_dir.iterdir()]
        bench.send_signal(signal.SIGTERM)
        bench.wait(timeout=60)  # not communicate(): pool processes hold inherited pipes
        deadline = time.monotonic() + 30
        while not all(_gone(p) for p in pool) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [p for p in pool if not _gone(p)] == [], "pool processes outlived the bench"
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
        for pid in pool:
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
