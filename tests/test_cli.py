"""The command line, run in-process through main() on real stores."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from firepbt.cli import main


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def finished_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "q.db"
    assert main(["run", "quadratic", "--population", "3", "--executor", "inprocess",
                 "--store", str(path), "--seed", "1", "-q"]) == 0
    return path


def test_run_writes_store_and_report(finished_store: Path) -> None:
    assert finished_store.exists()
    assert finished_store.with_suffix(".html").exists()


def test_status_lists_members_and_best(finished_store: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    code, out, _ = _run(capsys, "status", str(finished_store))
    assert code == 0
    assert "algorithm: pbt" in out and "status: finished" in out
    assert out.count(" member ") == 3
    assert "best:" in out


def test_export_json_and_csv_agree(finished_store: Path, capsys: pytest.CaptureFixture[str]
                                   ) -> None:
    _, out_json, _ = _run(capsys, "export", str(finished_store))
    data = json.loads(out_json)
    _, out_csv, _ = _run(capsys, "export", str(finished_store), "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out_csv)))
    assert len(rows) == len(data["schedule"]) >= 1
    assert data["schedule"][0]["start_step"] == 0
    assert data["schedule"][-1]["end_step"] == 200
    assert float(rows[-1]["h0"]) == pytest.approx(data["schedule"][-1]["h0"])


def test_report_command(finished_store: Path, tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "r.html"
    code, out, _ = _run(capsys, "report", str(finished_store), "-o", str(out_file))
    assert code == 0 and out.strip() == str(out_file)
    assert "FP.offline(" in out_file.read_text()  # the interactive, self-contained page


def test_resume_finished_store_is_a_no_op(finished_store: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "resume", str(finished_store), "--executor", "inprocess", "-q")
    assert code == 0 and "finished" in out


def test_errors_name_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "status", str(tmp_path / "missing.db"))
    assert code == 2 and "missing.db" in err and "does not exist" in err
    code, _, err = _run(capsys, "run", "nosuchtask", "--store", str(tmp_path / "x.db"))
    assert code == 2 and "nosuchtask" in err
    assert not (tmp_path / "x.db").exists()
    code, _, err = _run(capsys, "run", "quadratic", "--steps", "0", "--executor", "inprocess",
                        "--store", str(tmp_path / "y.db"))
    assert code == 2 and "steps=0" in err
    assert not (tmp_path / "y.db").exists()


def test_user_task_file_with_function_form(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                           ) -> None:
    task = tmp_path / "mytask.py"
    task.write_text(
        "import json\n"
        "from firepbt import Space, Uniform\n"
        "SPACE = Space(rate=Uniform(0.1, 1.0))\n"
        "DEFAULTS = {'steps': 40, 'interval': 10, 'eval_every': 5}\n"
        "def train_fn(hparams, checkpoint, report):\n"
        "    score = 0.0\n"
        "    if checkpoint is not None:\n"
        "        score = json.loads((checkpoint / 's.json').read_text())['score']\n"
        "    def save(path):\n"
        "        (path / 's.json').write_text(json.dumps({'score': score}))\n"
        "    while True:\n"
        "        score += hparams['rate']\n"
        "        report(score, save=save)\n"
        "train_fn.SPACE = SPACE\n"
        "train_fn.DEFAULTS = DEFAULTS\n"
    )
    store = tmp_path / "f.db"
    code, out, err = _run(capsys, "run", f"{task}:train_fn", "--population", "4", "--workers",
                          "2", "--store", str(store), "-q", "--no-report")
    assert code == 0, err
    _, status, _ = _run(capsys, "status", str(store))
    assert status.count("step     40") == 4
    # The best member's metric is the sum of its rates: at most 40 * 1.0.
    assert "best:" in status


def test_report_on_a_full_disk_leaves_no_temp_file_and_says_why(
    finished_store: Path, tmp_path: Path
) -> None:
    import subprocess
    import sys

    # A real ENOSPC from the kernel: the temp file is a link to /dev/full.
    (tmp_path / ".r.html.tmp").symlink_to("/dev/full")
    proc = subprocess.run([sys.executable, "-m", "firepbt.cli", "report", str(finished_store),
                           "-o", str(tmp_path / "r.html")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "No space left on device" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / ".r.html.tmp").exists() and not (tmp_path / "r.html").exists()
