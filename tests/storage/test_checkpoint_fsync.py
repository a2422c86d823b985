"""A local checkpoint is durable when write() returns, with its fsyncs issued together.

The overhead work (issue 10) made the fsyncs of one checkpoint run at the same time; this test
pins what must not change: every data file, the manifest and every folder of the checkpoint is
fsynced before the rename that publishes it, and the parent folder after it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from firepbt.storage.local import LocalCheckpointStorage, fsync_together


def _save(path: Path) -> None:
    (path / "weights.bin").write_bytes(b"w" * 1000)
    (path / "sub").mkdir()
    (path / "sub" / "opt.json").write_text("{}")


def test_every_part_is_fsynced_before_the_rename_and_the_parent_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = LocalCheckpointStorage(tmp_path / "ckpt")
    log: list[tuple[str, int]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        log.append(("fsync", os.fstat(fd).st_ino))
        real_fsync(fd)

    def rename(src: str | Path, dst: str | Path) -> None:
        log.append(("rename", 0))
        real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    location, _ = storage.write(7, _save, {"worker": 0})
    final = Path(location)
    parts = [final / "weights.bin", final / "sub" / "opt.json", final / "manifest.json",
             final, final / "sub"]
    renamed = log.index(("rename", 0))
    before = {ino for kind, ino in log[:renamed] if kind == "fsync"}
    after = {ino for kind, ino in log[renamed + 1:] if kind == "fsync"}
    # Renames keep inodes: the parts' inodes are the ones fsynced under the temporary name.
    missing = [str(p.relative_to(tmp_path)) for p in parts if p.stat().st_ino not in before]
    assert not missing, f"not fsynced before the rename: {missing}"
    assert storage.root.stat().st_ino in after, "the parent folder is not fsynced after it"


def test_fsync_together_reports_a_failure_after_every_call(tmp_path: Path) -> None:
    present = tmp_path / "present"
    present.write_text("x")
    with pytest.raises(FileNotFoundError):
        fsync_together([present, tmp_path / "missing", tmp_path])
