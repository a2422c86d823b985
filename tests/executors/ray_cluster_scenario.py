"""A run on a real multi-node Ray cluster survives losing a whole worker node (the script
behind tests/executors/test_ray_nodes.py, which runs it in a network namespace of its own).

Three Ray nodes on the loopback address 127.0.0.2: a head without CPUs, so every actor runs on
a worker node, and two worker nodes of 2 CPUs, each started by ``ray start --block`` in its own
process group, as an operator would start them; this process joins as the driver and runs the
controller. Killing a worker node's process group (raylet, agents; its actors die with their
raylet) mid-run is the node loss. Prints one line starting with "survived" and exits 0 when
the run finished with a clean store; anything else is a failure.

Run it only inside a network namespace with nothing but loopback (``unshare --net``): a Ray
cluster that other nodes may join listens on every interface.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# Ray reads its authentication mode when it is imported: the driver must agree with the nodes.
os.environ.update({"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"})

import ray  # noqa: E402

from firepbt import PBT, run  # noqa: E402
from firepbt.controller import Controller  # noqa: E402
from firepbt.executors.ray import RayExecutor  # noqa: E402
from firepbt.invariants import check_store  # noqa: E402

RAY = str(Path(sys.executable).with_name("ray"))
# Several nodes need RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1 (0 makes a head refuse other nodes),
# and with it Ray replaces --node-ip-address=127.0.0.1 by the machine's network address. It
# keeps 127.0.0.2, which is loopback too.
NODE_IP = "127.0.0.2"
ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", "RAY_USAGE_STATS_ENABLED": "0"}
#: For the nodes only: the GCS notices a lost node within seconds, not Ray's default of about
#: half a minute.
NODE_ENV = {"RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "1000",
            "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((NODE_IP, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Node:
    process: subprocess.Popen[bytes]
    node_manager_port: int

    def kill(self) -> None:
        """SIGKILL the node: ``ray start`` and everything in its process group."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


def start_node(*args: str, log: Path) -> Node:
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [RAY, "start", "--block", f"--node-ip-address={NODE_IP}", "--disable-usage-stats",
             # Nodes on one machine must not share a port: each gets its own of every kind.
             f"--node-manager-port={port}", f"--object-manager-port={free_port()}",
             f"--dashboard-agent-listen-port={free_port()}",
             f"--dashboard-agent-grpc-port={free_port()}",
             f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
             *args],
            env={**os.environ, **ENV, **NODE_ENV}, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Node(proc, port)


@contextmanager
def cluster(tmp_path: Path) -> Iterator[tuple[str, list[Node]]]:
    """A head (0 CPUs) and two worker nodes (2 CPUs each) on loopback; this process is
    connected as the driver. Every node is killed at the end, whatever happened."""
    port = free_port()
    address = f"{NODE_IP}:{port}"
    nodes = [start_node("--head", f"--port={port}", "--num-cpus=0",
                        "--include-dashboard=false", log=tmp_path / "head.log")]
    try:
        deadline = time.monotonic() + 90
        # Connect once `ray start` says the head is up: ray.init() against a head still
        # starting can block for minutes.
        while "Ray runtime started" not in (tmp_path / "head.log").read_text():
            assert time.monotonic() < deadline, "the head did not start"
            assert nodes[0].process.poll() is None, (tmp_path / "head.log").read_text()
            time.sleep(0.5)
        ray.init(address=address, _node_ip_address=NODE_IP, logging_level="WARNING")
        for i in (1, 2):  # one after the other: two raylets starting at once on two
            # busy cores can miss Ray's start-up deadline
            nodes.append(start_node(f"--address={address}", "--num-cpus=2",
                                    log=tmp_path / f"worker{i}.log"))
            while sum(n["Alive"] for n in ray.nodes()) < i + 1:
                assert nodes[-1].process.poll() is None, (
                    tmp_path / f"worker{i}.log").read_text()
                assert time.monotonic() < deadline + 60 * i, "a worker node did not join"
                time.sleep(0.5)
        addresses = {n["NodeManagerAddress"] for n in ray.nodes()}
        assert addresses == {NODE_IP}, f"a node is not on loopback: {addresses}"
        print(f"a head and two worker nodes on {NODE_IP}, in a network namespace with "
              "loopback only", flush=True)
        yield address, nodes
    finally:
        ray.shutdown()
        for node in reversed(nodes):
            node.kill()


def survive_node_loss(address: str, nodes: list[Node], tmp_path: Path) -> str:
    by_port = {n["NodeManagerPort"]: n["NodeID"] for n in ray.nodes()}
    node_of = {by_port[node.node_manager_port]: node for node in nodes[1:]}
    lost: list[str] = []

    def kill_a_busy_node(ctl: Controller) -> None:
        ex = ctl.executor
        assert isinstance(ex, RayExecutor)
        if not lost:
            busy = [node for pid, node, b in ex.slot_actors() if b and node in node_of]
            if busy:
                node_of[busy[0]].kill()
                lost.append(busy[0])

    result = run(
        "firepbt.tasks.sleep:SleepTask", algorithm=PBT(population=4), steps=60, interval=10,
        store=str(tmp_path / "run.db"), executor="ray", ray_address=address, workers=2,
        resources_per_member={"cpu": 1}, on_event=kill_a_busy_node,
    )
    assert lost, "no actor was busy on a worker node after a result"
    assert result.status() == "finished"
    assert check_store(result.store) == []
    errors = [f.error or "" for f in result.failures()]
    assert errors and all("Ray actor died" in e for e in errors), errors
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert lost[0] not in alive
    return (f"survived the loss of node {lost[0][:12]}: {len(errors)} failed segment(s), "
            "retried; the store is clean")


def main(tmp: str) -> int:
    os.environ.update(ENV)
    with cluster(Path(tmp)) as (address, nodes):
        print(survive_node_loss(address, nodes, Path(tmp)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
