"""Real Redis servers for tests and benchmarks: a standalone server and a cluster.

Every server listens on 127.0.0.1 only, on a port found free at start (a port may already
be taken), keeps its files in one temporary directory, and is stopped by :meth:`RedisRig.stop`
— also when the process that started it dies, since each server is asked to exit with its
parent.

    with RedisRig() as rig:
        url = rig.start_standalone()           # "redis://127.0.0.1:<port>/0"
        locked = rig.start_standalone(password="s3cret")  # "redis://:s3cret@127.0.0.1:<port>/0"
        cluster = rig.start_cluster()          # "redis+cluster://127.0.0.1:<p1>,…"
        node = rig.kill_primary("fg:{gpt-4.1}:tb")   # SIGKILL; its replica takes over
        rig.restart(node)                      # back, as a replica
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["RedisNode", "RedisRig", "RedisRigError"]


class RedisRigError(RuntimeError):
    """A Redis server of the rig could not be started or did not become ready."""


@dataclasses.dataclass
class RedisNode:
    port: int
    directory: Path
    cluster: bool
    process: subprocess.Popen[bytes] | None = None
    #: ``requirepass`` (None: no AUTH).
    password: str | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def _exit_with_parent() -> None:
    """Run in the child before exec: die when the parent dies (Linux), so no server outlives
    a test run that was killed."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _search_range() -> range:
    """Where to look for free ports: below the kernel's ephemeral range (a cluster node's bus
    port, 10000 above, too), so that no outgoing connection is handed a chosen port between
    the check and the server's bind. Where that leaves too little room, 20000-55000."""
    try:
        ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except OSError:  # not Linux: its usual start, which macOS's 49152 is above
        ephemeral = 32768
    return range(10000, ephemeral - 10000) if ephemeral - 20000 >= 1000 else range(20000, 55000)


def free_port(*, with_bus: bool = False, taken: set[int] | None = None) -> int:
    """A loopback port that is free now (and, for cluster nodes, its bus port + 10000)."""
    taken = taken if taken is not None else set()
    rng = random.Random()
    ports = _search_range()
    for _ in range(500):
        port = rng.choice(ports)
        if port in taken or (port + 10000) in taken:
            continue
        if _port_free(port) and (not with_bus or _port_free(port + 10000)):
            taken.add(port)
            return port
    raise RedisRigError(f"no free loopback port found in {ports.start}-{ports.stop - 1}")


class RedisRig:
    """Starts and stops real Redis servers on loopback for tests and benchmarks."""

    def __init__(self, root: Path | str | None = None, *, server: str = "redis-server") -> None:
        found = shutil.which(server)
        if found is None:
            raise RedisRigError(
                f"{server!r} is not installed; install it with `apt-get install -y redis-server` "
                "(make test does this for you)"
            )
        self.server = found
        self.cli = shutil.which("redis-cli") or "redis-cli"
        self._own_root = root is None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="fleetgate-redis-"))
        self.nodes: list[RedisNode] = []
        self._taken: set[int] = set()

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> RedisRig:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def _launch(self, node: RedisNode) -> None:
        node.directory.mkdir(parents=True, exist_ok=True)
        args = [
            self.server,
            "--port", str(node.port),
            "--bind", "127.0.0.1",
            "--dir", str(node.directory),
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--logfile", str(node.directory / "redis.log"),
        ]
        if node.password is not None:
            args += ["--requirepass", node.password]
        if node.cluster:
            args += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "1000",
                "--cluster-replica-validity-factor", "0",
            ]
        node.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=_exit_with_parent if sys.platform.startswith("linux") else None,
        )
        self._wait_ready(node)

    def _wait_ready(self, node: RedisNode, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if node.process is not None and node.process.poll() is not None:
                log = node.directory / "redis.log"
                tail = log.read_text(errors="replace")[-800:] if log.exists() else ""
                raise RedisRigError(f"redis-server on port {node.port} exited at start:\n{tail}")
            if self._command(node.port, "PING", check=False, password=node.password) == "PONG":
                return
            time.sleep(0.02)
        raise RedisRigError(f"redis-server on port {node.port} did not answer PING within {timeout}s")

    def _command(self, port: int, *args: str, check: bool = True, password: str | None = None) -> str:
        env = {**os.environ, "REDISCLI_AUTH": password} if password is not None else None  # not on the command line
        done = subprocess.run(
            [self.cli, "-h", "127.0.0.1", "-p", str(port), *args],
            capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL, env=env,
        )
        if check and done.returncode != 0:
            raise RedisRigError(f"redis-cli -p {port} {' '.join(args)} failed: {done.stderr.strip() or done.stdout.strip()}")
        return done.stdout.strip()

    def start_standalone(self, *, password: str | None = None) -> str:
        """Start a standalone server (that asks clients for `password`, when given); returns
        its URL (with the password in it)."""
        node = RedisNode(free_port(taken=self._taken), self.root / f"standalone-{len(self.nodes)}", cluster=False,
                         password=password)
        self.nodes.append(node)
        self._launch(node)
        auth = f":{password}@" if password is not None else ""
        return f"redis://{auth}127.0.0.1:{node.port}/0"

    def start_cluster(self, primaries: int = 3, replicas: int = 1) -> str:
        """Start a cluster of `primaries` primaries with `replicas` replicas each; returns a
        ``redis+cluster://`` URL naming every node."""
        nodes = [
            RedisNode(free_port(with_bus=True, taken=self._taken), self.root / f"cluster-{i}", cluster=True)
            for i in range(primaries * (1 + replicas))
        ]
        self.nodes.extend(nodes)
        for node in nodes:
            self._launch(node)
        self._command(
            nodes[0].port, "--cluster", "create", *(n.address for n in nodes),
            "--cluster-replicas", str(replicas), "--cluster-yes",
        )
        self.wait_cluster_ok()
        return "redis+cluster://" + ",".join(n.address for n in nodes)

    @property
    def cluster_nodes(self) -> list[RedisNode]:
        return [n for n in self.nodes if n.cluster]

    def wait_cluster_ok(self, timeout: float = 30.0) -> None:
        """Wait until every live cluster node reports a healthy cluster with all slots served."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = [n for n in self.cluster_nodes if n.alive]
            if live and all(self._cluster_healthy(n.port) for n in live):
                return
            time.sleep(0.1)
        raise RedisRigError(f"the cluster did not become healthy within {timeout}s")

    def _cluster_healthy(self, port: int) -> bool:
        info = self._command(port, "CLUSTER", "INFO", check=False)
        if "cluster_state:ok" not in info or "cluster_slots_ok:16384" not in info:
            return False
        # Every slot must be owned by a primary that is up.
        for line in self._command(port, "CLUSTER", "NODES", check=False).splitlines():
            fields = line.split()
            if len(fields) > 8 and "master" in fields[2] and "fail" in fields[2]:
                return False
        return True

    def primary_for(self, key: str) -> RedisNode:
        """The live node that serves `key`'s slot."""
        live = next(n for n in self.cluster_nodes if n.alive)
        slot = int(self._command(live.port, "CLUSTER", "KEYSLOT", key))
        for line in self._command(live.port, "CLUSTER", "NODES").splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
            for span in fields[8:]:
                if span.startswith("["):
                    continue
                low, _, high = span.partition("-")
                if int(low) <= slot <= int(high or low):
                    return next(n for n in self.cluster_nodes if n.port == port)
        raise RedisRigError(f"no primary serves slot {slot} of {key!r}")

    def kill_primary(self, key: str = "fleetgate") -> RedisNode:
        """SIGKILL the primary serving `key`'s slot (its replica takes over within seconds;
        wait with :meth:`wait_cluster_ok`)."""
        node = self.primary_for(key)
        assert node.process is not None
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(timeout=10)
        return node

    def stop_node(self, node: RedisNode) -> None:
        """Stop one server, as an outage would (:meth:`restart` starts it again)."""
        if node.process is not None and node.alive:
            node.process.terminate()
            node.process.wait(timeout=10)

    def restart(self, node: RedisNode) -> None:
        """Start a killed node again; a cluster node rejoins (as a replica after failover)."""
        if node.alive:
            return
        self._launch(node)
        if node.cluster:
            self.wait_cluster_ok()

    def stop(self) -> None:
        """Stop every server this rig started and remove its files."""
        for node in self.nodes:
            if node.alive:
                assert node.process is not None
                node.process.terminate()
        for node in self.nodes:
            if node.process is not None:
                try:
                    node.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    node.process.kill()
                    node.process.wait(timeout=10)
        self.nodes.clear()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)


def _main(argv: list[str]) -> int:
    """``python -m fleetgate.testing.redis [-- command …]``: start a standalone server and
    a cluster, print their URLs (and export them as FLEETGATE_TEST_REDIS_URL and
    FLEETGATE_TEST_CLUSTER_URL to the command), run the command, stop everything."""
    command = argv[argv.index("--") + 1 :] if "--" in argv else []
    with RedisRig() as rig:
        env = dict(os.environ)
        env["FLEETGATE_TEST_REDIS_URL"] = rig.start_standalone()
        env["FLEETGATE_TEST_CLUSTER_URL"] = rig.start_cluster()
        print(f"standalone: {env['FLEETGATE_TEST_REDIS_URL']}\ncluster:    {env['FLEETGATE_TEST_CLUSTER_URL']}", flush=True)
        if not command:
            print("serving until interrupted (Ctrl-C)", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
            return 0
        return subprocess.call(command, env=env)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
