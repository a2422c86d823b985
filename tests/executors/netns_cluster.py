"""A real multi-host Ray cluster on one machine: three network namespaces, each its own host.

Host ``head`` holds PostgreSQL and the Ray head (no CPUs, so every actor trains on a worker
node); hosts ``node1`` and ``node2`` each run a Ray worker node. Every host has its own address
on a private /24 (``10.213.X.0/24``): a bridge in the head's namespace, and one veth pair from
it to each worker's namespace. Nothing of it touches the machine's own network namespace, so
the cluster (which listens on every interface of its hosts) is reachable from nowhere else.
The namespaces share the file system: a plain directory is the checkpoints' "NFS" share, and
the test process reaches PostgreSQL through its Unix socket in that shared directory.

Everything is started the way an operator starts it (``ray start --block`` per host,
``pg_ctl``, the ``firepbt`` CLI under ``ip netns exec``), and :meth:`NetnsCluster.close`
removes all of it, even after a failure: every process in each namespace is SIGKILLed (that
is, by definition, every process this harness started there), then the namespaces go.

Needs root and iproute2's ``ip netns``; :func:`netns_missing` says why not, for a skip.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
PG_BINDIR = Path(os.environ.get("FIREPBT_PG_BINDIR", "/usr/lib/postgresql/15/bin"))
RAY_PORT = 6379
PG_PORT = 5432  # every host has its own ports: the defaults never clash with the machine's

#: Every process on the cluster's hosts (Ray nodes, controllers) gets these. Several nodes
#: need RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1 (with 0, ``ray start --address`` refuses to start
#: a worker node, and a driver takes 127.0.0.1 as its address and finds no raylet there); the
#: namespaces keep "every interface" private. The health checks let the head notice a lost
#: node within seconds instead of about half a minute.
RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


def netns_missing() -> str | None:
    """Why namespaces cannot be made here (a skip reason), or None when they can."""
    if os.geteuid() != 0:
        return "not root: `ip netns add` needs CAP_SYS_ADMIN"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed (apt-get install iproute2)"
    name = f"fpbt{os.getpid()}-probe"
    probe = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`ip netns add` failed: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


def ours() -> list[str]:
    """The namespaces of this process's clusters that still exist (for the clean-up check)."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in listed.splitlines()
            if line.startswith(f"fpbt{os.getpid()}-")]


def sh(*argv: str, timeout: float = 60) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed (exit {done.returncode}): "
                           f"{done.stderr.strip()} {done.stdout.strip()}")
    return done.stdout


@dataclass
class Host:
    """One "machine": a network namespace with its own address."""

    name: str
    netns: str
    ip: str
    ray: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def cmd(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]

    def pids(self) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True,
                             text=True).stdout
        return [int(p) for p in out.split()]

    def kill_all(self) -> int:
        """SIGKILL every process in this host's namespace (a node lost at once); how many."""
        pids = self.pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.ray is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.ray.wait(timeout=10)
            self.ray = None
        deadline = time.monotonic() + 10
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.1)
        return len(pids)


def proc_title(pid: int) -> str:
    """A process's command line as ``ps`` shows it (Ray sets an actor's to ``ray::...``)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


class NetnsCluster:
    """Three hosts (head with PostgreSQL, node1, node2), started on construction.

    Args:
        node_cpus: the logical CPUs each worker node advertises to Ray.
    """

    def __init__(self, node_cpus: int = 2) -> None:
        tag = f"fpbt{os.getpid()}"
        # Distinct per process only for people reading `ip addr`: the /24 is private to
        # these namespaces, so two clusters with one subnet would not clash either.
        self.subnet = f"10.213.{os.getpid() % 250 + 1}"
        self.hosts = [Host(name, f"{tag}-{name}", f"{self.subnet}.{i + 1}")
                      for i, name in enumerate(("head", "node1", "node2"))]
        self.head, self.node1, self.node2 = self.hosts
        self.node_cpus = node_cpus
        # Under /tmp, mode 755: the server runs as 'postgres', which must reach its folder
        # (pytest's tmp_path is root-only), and Ray's socket paths must stay short.
        self.dir = Path(tempfile.mkdtemp(prefix=f"{tag}-"))
        self.dir.chmod(0o755)
        self.checkpoints = self.dir / "shared" / "ckpt"
        self.logs = self.dir / "logs"
        self.checkpoints.mkdir(parents=True)
        self.logs.mkdir()
        self.started = time.monotonic()
        try:
            self._network()
            self._postgres()
            self._ray()
        except BaseException:
            self.close()
            raise
        self.start_s = time.monotonic() - self.started

    # -- set-up ------------------------------------------------------------------------------

    def _network(self) -> None:
        for host in self.hosts:
            sh("ip", "netns", "add", host.netns)
            sh("ip", "-n", host.netns, "link", "set", "lo", "up")
        head = self.head.netns
        sh("ip", "-n", head, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", head, "addr", "add", f"{self.head.ip}/24", "dev", "br0")
        sh("ip", "-n", head, "link", "set", "br0", "up")
        for i, host in enumerate(self.hosts[1:], start=1):
            # Both ends are created inside the namespaces: no interface in the machine's own.
            sh("ip", "link", "add", f"veth{i}", "netns", head, "type", "veth", "peer", "name",
               "eth0", "netns", host.netns)
            sh("ip", "-n", head, "link", "set", f"veth{i}", "master", "br0")
            sh("ip", "-n", head, "link", "set", f"veth{i}", "up")
            sh("ip", "-n", host.netns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
            sh("ip", "-n", host.netns, "link", "set", "eth0", "up")

    def _postgres(self) -> None:
        self.pg_dir = self.dir / "pg"
        self.pg_dir.mkdir()
        pw = pwd.getpwnam("postgres")
        os.chown(self.pg_dir, pw.pw_uid, pw.pw_gid)
        self._pg("initdb", "-D", str(self.pg_dir / "data"), "-A", "trust", "--no-sync",
                 "-U", "postgres", "-E", "UTF8")
        # initdb trusts loopback only; the hosts connect from the cluster's /24.
        with open(self.pg_dir / "data" / "pg_hba.conf", "a") as hba:
            hba.write(f"host all all {self.subnet}.0/24 trust\n")
        self.start_postgres()

    def _pg(self, tool: str, *args: str) -> None:
        # As 'postgres' (the server refuses root), in the head's namespace: the server binds
        # the head's address, which exists only there.
        sh(*self.head.cmd("runuser", "-u", "postgres", "--", str(PG_BINDIR / tool), *args),
           timeout=90)

    def start_postgres(self) -> None:
        self._pg("pg_ctl", "-D", str(self.pg_dir / "data"), "-l", str(self.pg_dir / "server.log"),
                 "-w", "-t", "30", "start", "-o",
                 f"-p {PG_PORT} -c listen_addresses={self.head.ip} -k {self.pg_dir} "
                 "-c max_connections=60")

    def stop_postgres(self) -> None:
        self._pg("pg_ctl", "-D", str(self.pg_dir / "data"), "-w", "-t", "30", "stop",
                 "-m", "fast")

    def url(self, experiment: str) -> str:
        """The store URL every host uses: PostgreSQL on the head's address."""
        return f"postgresql://postgres@{self.head.ip}:{PG_PORT}/postgres?experiment={experiment}"

    def local_url(self, experiment: str) -> str:
        """The same store for this (test) process, outside the namespaces: the Unix socket."""
        return (f"postgresql://postgres@/postgres?host={self.pg_dir}&port={PG_PORT}"
                f"&experiment={experiment}")

    @property
    def address(self) -> str:
        return f"{self.head.ip}:{RAY_PORT}"

    def _ray(self) -> None:
        self.start_node(self.head)
        # One after the other: two raylets starting at once on two busy cores can miss
        # Ray's start-up deadline.
        self.start_node(self.node1)
        self.start_node(self.node2)

    def start_node(self, host: Host, timeout: float = 120) -> None:
        """``ray start --block`` on ``host`` (the head, or a worker node joining it); returns
        once it says it started."""
        common = ["--block", f"--node-ip-address={host.ip}", "--disable-usage-stats",
                  f"--temp-dir={self.dir / 'ray'}"]
        if host is self.head:
            role = ["--head", f"--port={RAY_PORT}", "--num-cpus=0",
                    "--include-dashboard=false"]
        else:
            role = [f"--address={self.address}", f"--num-cpus={self.node_cpus}"]
        log = self.logs / f"ray-{host.name}.log"
        with open(log, "ab") as out:
            host.ray = subprocess.Popen(host.cmd(str(BIN / "ray"), "start", *common, *role),
                                        env={**os.environ, **RAY_ENV}, stdout=out,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        # The log is appended to when a node restarts: wait for one more "started" line.
        seen = log.read_text(errors="replace").count("Ray runtime started")
        deadline = time.monotonic() + timeout
        while log.read_text(errors="replace").count("Ray runtime started") == seen:
            if host.ray.poll() is not None:
                raise RuntimeError(f"ray start on {host.name} exited {host.ray.returncode}:\n"
                                   + log.read_text(errors="replace")[-3000:])
            if time.monotonic() > deadline:
                raise RuntimeError(f"ray start on {host.name} did not start in {timeout:g} s:\n"
                                   + log.read_text(errors="replace")[-3000:])
            time.sleep(0.3)

    # -- use ---------------------------------------------------------------------------------

    def ray_nodes(self, host: Host | None = None) -> list[tuple[str, bool]]:
        """(address, alive) of every node the head knows, asked by a driver on ``host``."""
        code = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
                "print(';'.join(f\"{n['NodeManagerAddress']},{n['Alive']}\" "
                "for n in ray.nodes()))")
        out = sh(*(host or self.head).cmd(sys.executable, "-c", code, self.address), timeout=120)
        last = out.strip().splitlines()[-1]
        return [(a, alive == "True") for a, alive in (p.split(",") for p in last.split(";"))]

    def firepbt(self, host: Host, args: Sequence[str], log_name: str) -> subprocess.Popen[str]:
        """The CLI on ``host``, as a user types it; output into ``logs/<log_name>``."""
        out = open(self.logs / log_name, "w")  # noqa: SIM115 - the child owns it
        try:
            return subprocess.Popen(host.cmd(str(BIN / "firepbt"), *args), text=True,
                                    env={**os.environ, **RAY_ENV}, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            out.close()

    def log(self, name: str) -> str:
        path = self.logs / name
        return path.read_text(errors="replace") if path.exists() else ""

    def actors(self, host: Host) -> list[tuple[int, str]]:
        """(pid, title) of the firepbt actors' processes on ``host``."""
        return [(pid, t) for pid in host.pids()
                if (t := proc_title(pid)).startswith("ray::SegmentActor")]

    # -- tear-down ---------------------------------------------------------------------------

    def close(self) -> None:
        """Kill everything on every host, remove the namespaces and the folder. Idempotent."""
        for host in reversed(self.hosts):
            with contextlib.suppress(Exception):
                host.kill_all()
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> NetnsCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
