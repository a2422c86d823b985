"""A throwaway PostgreSQL server on a loopback port, for tests and benchmarks.

``TempPostgres`` runs ``initdb`` in a fresh temporary folder and ``pg_ctl start`` with the
server listening on 127.0.0.1 only (and on a Unix socket inside that folder), trust
authentication, nothing reachable from outside. ``stop()`` and ``start()`` may be called again
on the same data folder (the outage tests stop the server mid-run); ``close()`` stops it and
removes the folder.

As root the binaries run as the ``postgres`` system user (the server refuses to run as root),
via ``runuser``; otherwise as the current user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from firepbt.errors import ConfigError, StoreError

DEFAULT_BINDIR = Path(os.environ.get("FIREPBT_PG_BINDIR", "/usr/lib/postgresql/15/bin"))
# Bounded waits: pg_ctl -w gives up after this many seconds (its own default is 60).
_PG_CTL_TIMEOUT_S = 30


def missing_reason(bindir: Path = DEFAULT_BINDIR) -> str | None:
    """Why a throwaway server cannot start here (for a test skip), or None if it can."""
    for tool in ("initdb", "pg_ctl", "postgres"):
        if not (bindir / tool).is_file():
            return (f"PostgreSQL server binaries not found: {bindir / tool} is missing "
                    "(scripts/setup.sh installs postgresql-15; or set FIREPBT_PG_BINDIR)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a 'postgres' system user to run the server as"
        if shutil.which("runuser") is None:
            return "running as root without runuser(1) to start the server as 'postgres'"
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TempPostgres:
    """A PostgreSQL server in a temporary data folder, listening on 127.0.0.1:``port``.

    Args:
        bindir: The folder of ``initdb``, ``pg_ctl`` and ``postgres``.
        port: The loopback port; a free one by default.

    Raises:
        ConfigError: The binaries are missing (``missing_reason`` says why).
        StoreError: ``initdb`` or ``pg_ctl`` failed; the message carries their output.
    """

    def __init__(self, bindir: Path = DEFAULT_BINDIR, port: int | None = None) -> None:
        if (why := missing_reason(bindir)) is not None:
            raise ConfigError(f"bindir = {str(bindir)!r}: {why}")
        self.bindir = bindir
        self.port = port if port is not None else free_port()
        # Not under pytest's tmp_path: its parents are root-only (mode 700), and the server
        # runs as 'postgres', which must reach its data folder.
        self.dir = Path(tempfile.mkdtemp(prefix="firepbt-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.running = False
        self._pg("initdb", "-D", str(self.data), "-A", "trust", "--no-sync", "-U", "postgres",
                 "-E", "UTF8")

    @property
    def url(self) -> str:
        """The URL of the server's default database, as superuser ``postgres``."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _pg(self, tool: str, *args: str) -> str:
        cmd = [str(self.bindir / tool), *args]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=_PG_CTL_TIMEOUT_S + 30,
                              cwd=self.dir)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise StoreError(f"{tool} failed (exit {done.returncode}): {done.stderr.strip()} "
                             f"{done.stdout.strip()[-1000:]}\n{log}".strip())
        return done.stdout

    def start(self) -> str:
        """Start the server (again, on the same data and port); returns its URL."""
        # The socket directory is the data folder's parent: short enough for the 107-byte
        # Unix socket path limit, and private to this server.
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} "
                   "-c max_connections=60")
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w",
                 "-t", str(_PG_CTL_TIMEOUT_S), "start", "-o", options)
        self.running = True
        return self.url

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` rolls back open transactions and closes every session."""
        if mode not in ("smart", "fast", "immediate"):
            raise ConfigError(f"mode = {mode!r}: must be 'smart', 'fast' or 'immediate'")
        if self.running:
            self._pg("pg_ctl", "-D", str(self.data), "-w", "-t", str(_PG_CTL_TIMEOUT_S),
                     "stop", "-m", mode)
            self.running = False

    def close(self) -> None:
        """Stop the server and remove its folder. Idempotent."""
        try:
            self.stop("fast")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> TempPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
