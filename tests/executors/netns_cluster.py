"""A real multi-host Ray cluster on one machine: three network namespaces, each its own host.

Host ``head`` holds PostgreSQL and the Ray head (no CPUs, so every actor trains on a worker
node); hosts ``node1`` and ``node2`` each run a Ray worker node. Every host has its own address
on a private /24 (``10.213.X.0/24``): a bridge in the head's namespace, and one veth pair from
it to each worker's namespace. Nothing of it touches the machine's own network namespace, so
the cluster (which listens on every interface of its hosts) is reachable from nowhere else.
The namespaces share the file system: a plain directory is the checkpoints' "NFS" share, and
the test process reaches PostgreSQL through its Unix socket in that shared directory.

Each host also has its own host name (``fpbt-head``, ...; a UTS namespace per command), so
the experiment lock sees a controller on another host as one whose process it cannot check.
Everything is started the way an operator starts it (``ray start --block`` per host,
``pg_ctl``, the ``firepbt`` CLI under ``ip netns exec``), and :meth:`NetnsCluster.close`
removes all of it, even after a failure: every process in each namespace is SIGKILLed (that
is, by definition, every process this harness started there), then the namespaces go.

Needs root and iproute2's ``ip netns``. Without ``ip netns`` (but as root), ``NetnsCluster(
loopback=True)`` is the fallback: the same three hosts and faults, all in ONE namespace made by
``unshare --net`` (nothing but loopback in it), on 127.0.0.2-4 with a port range per host; a
lost node is then every process of its ``ray start`` session. :func:`netns_missing` and
:func:`loopback_missing` say why a mode cannot run, for the test output.
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


def loopback_missing() -> str | None:
    """Why the loopback fallback cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "not root: `unshare --net` and `nsenter` need CAP_SYS_ADMIN"
    for tool in ("unshare", "nsenter", "runuser"):
        if shutil.which(tool) is None:
            return f"util-linux's `{tool}` is not installed"
    # Root in a container without CAP_SYS_ADMIN cannot make one either.
    probe = subprocess.run(["unshare", "--net", "--uts", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`unshare --net --uts` failed: {probe.stderr.strip()}"
    return None


# Brings up `lo` in the namespace it runs in, without iproute2 (SIOCGIFFLAGS/SIOCSIFFLAGS).
LO_UP = ("import fcntl, socket, struct; s = socket.socket(); "
         "f = struct.unpack('16sH', fcntl.ioctl(s, 0x8913, struct.pack('16sH', b'lo', 0)))[1]; "
         "fcntl.ioctl(s, 0x8914, struct.pack('16sH', b'lo', f | 1))")


def net_ns(pid: int) -> str | None:
    """The network namespace of a process (as the ``net:[inode]`` link), None if gone."""
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def pids_in(ns: str) -> list[int]:
    """Every process in network namespace ``ns`` (what ``ip netns pids`` prints)."""
    return [int(d) for d in os.listdir("/proc") if d.isdigit() and net_ns(int(d)) == ns]


def sh(*argv: str, timeout: float = 60) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed (exit {done.returncode}): "
                           f"{done.stderr.strip()} {done.stdout.strip()}")
    return done.stdout


@dataclass
class Host:
    """One "machine": a network namespace with its own address (in the loopback fallback,
    a share of one namespace: an address and the sessions of its ``ray start``)."""

    name: str
    ip: str
    enter: list[str]  # the command prefix that runs a program on this host
    ns: str = ""  # its network namespace, net:[inode]
    netns: str | None = None  # its `ip netns` name; None in the loopback fallback
    ports: int = 0  # loopback fallback: the base of this host's port range
    ray: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    sessions: set[int] = field(default_factory=set)  # loopback: its `ray start` sessions

    def cmd(self, *argv: str) -> list[str]:
        # Its own host name too (a UTS namespace per command), as on separate machines: the
        # experiment lock tells a dead controller on this host from one on another by it.
        return [*self.enter, "unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"',
                f"fpbt-{self.name}", *argv]

    def pids(self) -> list[int]:
        """The processes of this host: all in its namespace, or in the loopback fallback
        those of its ``ray start`` sessions (raylet, agents, actors)."""
        pids = pids_in(self.ns)
        if self.netns is not None:
            return pids
        mine = []
        for pid in pids:
            with contextlib.suppress(OSError):
                if os.getsid(pid) in self.sessions:
                    mine.append(pid)
        return mine

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
        loopback: the fallback without ``ip netns``: one ``unshare --net`` namespace.
    """

    def __init__(self, node_cpus: int = 2, loopback: bool = False) -> None:
        tag = f"fpbt{os.getpid()}"
        self.loopback = loopback
        self.holder: subprocess.Popen[bytes] | None = None
        names = ("head", "node1", "node2")
        if loopback:
            # Ray rewrites 127.0.0.1 as a node address; 127.0.0.2 and up it keeps.
            self.subnet = "127.0.0"
            self.hosts = [Host(n, f"127.0.0.{i + 2}", [], ports=20000 + 1000 * i)
                          for i, n in enumerate(names)]
        else:
            # Distinct per process only for people reading `ip addr`: the /24 is private to
            # these namespaces, so two clusters with one subnet would not clash either.
            self.subnet = f"10.213.{os.getpid() % 250 + 1}"
            self.hosts = [Host(n, f"{self.subnet}.{i + 1}", ["ip", "netns", "exec", f"{tag}-{n}"],
                               netns=f"{tag}-{n}") for i, n in enumerate(names)]
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
        if self.loopback:
            self.holder = subprocess.Popen(["unshare", "--net", "sleep", "infinity"],
                                           start_new_session=True)
            deadline = time.monotonic() + 10
            while net_ns(self.holder.pid) == net_ns(os.getpid()):
                assert time.monotonic() < deadline, "unshare --net made no namespace"
                time.sleep(0.05)
            for host in self.hosts:
                host.enter = ["nsenter", f"--net=/proc/{self.holder.pid}/ns/net"]
                host.ns = net_ns(self.holder.pid) or ""
            sh(*self.head.cmd(sys.executable, "-c", LO_UP))
            return
        names = [str(h.netns) for h in self.hosts]  # set in netns mode
        for name in names:
            sh("ip", "netns", "add", name)
            sh("ip", "-n", name, "link", "set", "lo", "up")
        head = names[0]
        sh("ip", "-n", head, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", head, "addr", "add", f"{self.head.ip}/24", "dev", "br0")
        sh("ip", "-n", head, "link", "set", "br0", "up")
        for i, (host, name) in enumerate(zip(self.hosts, names, strict=True)):
            if i == 0:
                continue
            # Both ends are created inside the namespaces: no interface in the machine's own.
            sh("ip", "link", "add", f"veth{i}", "netns", head, "type", "veth", "peer", "name",
               "eth0", "netns", name)
            sh("ip", "-n", head, "link", "set", f"veth{i}", "master", "br0")
            sh("ip", "-n", head, "link", "set", f"veth{i}", "up")
            sh("ip", "-n", name, "addr", "add", f"{host.ip}/24", "dev", "eth0")
            sh("ip", "-n", name, "link", "set", "eth0", "up")
        for host, name in zip(self.hosts, names, strict=True):
            # `ip netns add` bind-mounts the namespace there: its inode names it.
            host.ns = f"net:[{os.stat(f'/run/netns/{name}').st_ino}]"

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
        if host.ports:  # loopback: hosts share one namespace, so each has ports of its own
            p = host.ports
            common += [f"--node-manager-port={p + 1}", f"--object-manager-port={p + 2}",
                       f"--dashboard-agent-listen-port={p + 3}",
                       f"--dashboard-agent-grpc-port={p + 4}",
                       f"--runtime-env-agent-port={p + 5}", f"--metrics-export-port={p + 6}",
                       f"--min-worker-port={p + 100}", f"--max-worker-port={p + 999}"]
        log = self.logs / f"ray-{host.name}.log"
        with open(log, "ab") as out:
            host.ray = subprocess.Popen(host.cmd(str(BIN / "ray"), "start", *common, *role),
                                        env={**os.environ, **RAY_ENV}, stdout=out,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        host.sessions.add(host.ray.pid)  # its own session: the node is that session
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
            # Everything else there too (controllers, PostgreSQL): every process in the
            # namespace is one this harness started.
            for pid in pids_in(host.ns):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if host.netns is not None:
                subprocess.run(["ip", "netns", "del", host.netns], capture_output=True)
        if self.holder is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.holder.pid, signal.SIGKILL)
            self.holder.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """What :meth:`close` failed to remove: namespaces, processes, the folder."""
        left = [f"process {pid} in {h.ns}" for h in self.hosts if h.ns for pid in pids_in(h.ns)]
        if not self.loopback:
            listed = subprocess.run(["ip", "netns", "list"], capture_output=True,
                                    text=True).stdout
            names = {line.split()[0] for line in listed.splitlines() if line.strip()}
            left += [f"namespace {h.netns}" for h in self.hosts if h.netns in names]
        if self.dir.exists():
            left.append(f"folder {self.dir}")
        return left

    def __enter__(self) -> NetnsCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
