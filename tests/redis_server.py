"""Start a real, throwaway redis-server on a free loopback port, for tests and benchmarks."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from services import require

__all__ = [
    "RedisCluster",
    "RedisServer",
    "free_cluster_port",
    "free_port",
    "redis_cluster",
    "redis_server",
    "running_cluster",
    "running_redis",
]

def free_port() -> int:
    """A TCP port nobody listens on right now (bind to port 0 and give it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000, so at most 65535) is free too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair (port, port + 10000) for a cluster node")


class RedisServer:
    """One redis-server process: no persistence, its own directory, stopped by `stop()`."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        password: str | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.exe = require("redis-server", "apt-get install redis-server")
        self.dir = Path(directory)
        self.password = password
        self.extra = extra
        self.pick_port = free_cluster_port if extra else free_port
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """`redis://[:password@]127.0.0.1:port/0`."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Launch on a free port and wait (bounded) until it answers PING."""
        for _ in range(3):  # another process may grab the port between free_port() and bind
            self.port = self.pick_port()
            args = [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no", "--dir", str(self.dir), "--daemonize", "no"]
            if self.password:
                args += ["--requirepass", self.password]
            args += [a.replace("{port}", str(self.port)) for a in self.extra]
            log = open(self.dir / f"redis-{self.port}.log", "wb")  # noqa: SIM115 - kept open
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
            log.close()
            if self._wait_ready(timeout):
                return self
            self.stop()
        raise RuntimeError(f"redis-server did not start; see logs in {self.dir}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            if self.ping():
                return True
            time.sleep(0.02)
        return False

    def ping(self) -> bool:
        """Whether the server answers a raw RESP PING (any reply, even NOAUTH, counts)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return bool(s.recv(64))
        except OSError:
            return False

    def stop(self) -> None:
        """Terminate, then kill if it lingers; safe to call twice."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL the server (a crash, as far as clients can tell)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=5)
            self.proc = None


@contextmanager
def running_redis(
    directory: str | os.PathLike[str] | None = None, password: str | None = None
) -> Iterator[RedisServer]:
    """A started RedisServer for the block's duration."""
    with tempfile.TemporaryDirectory(prefix="llm-budget-redis-") as tmp:
        server = RedisServer(directory or tmp, password=password).start()
        try:
            yield server
        finally:
            server.stop()


class RedisCluster:
    """Three cluster-enabled redis-server primaries, no replicas, joined by redis-cli --cluster."""

    def __init__(
        self, directory: str | os.PathLike[str], nodes: int = 3, node_timeout_ms: int = 5000
    ) -> None:
        self.cli = require("redis-cli", "apt-get install redis-tools")
        self.dir = Path(directory)
        extra = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes-{port}.conf",
                 "--cluster-node-timeout", str(node_timeout_ms))
        self.nodes = [RedisServer(self.dir, extra=extra) for _ in range(nodes)]

    @property
    def url(self) -> str:
        """`redis+cluster://127.0.0.1:port` of the first node (the client finds the others)."""
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self, timeout: float = 20.0) -> RedisCluster:
        """Start the nodes, assign the slots, wait until every node says cluster_state:ok."""
        try:
            for node in self.nodes:
                node.start()
            addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
            created = subprocess.run(
                [self.cli, "--cluster", "create", *addresses, "--cluster-replicas", "0",
                 "--cluster-yes"], capture_output=True, text=True, timeout=timeout,
            )
            if created.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-2000:]}"
                                   f"{created.stderr[-2000:]}")
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if all(self._state_ok(node) for node in self.nodes):
                    return self
                time.sleep(0.05)
            raise RuntimeError(f"the redis cluster did not reach cluster_state:ok; see {self.dir}")
        except BaseException:
            self.stop()
            raise

    def _state_ok(self, node: RedisServer) -> bool:
        out = subprocess.run([self.cli, "-p", str(node.port), "cluster", "info"],
                             capture_output=True, text=True, timeout=5).stdout
        return "cluster_state:ok" in out

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()


@contextmanager
def running_cluster(directory: str | os.PathLike[str] | None = None) -> Iterator[RedisCluster]:
    """A started three-node RedisCluster for the block's duration."""
    with tempfile.TemporaryDirectory(prefix="llm-budget-cluster-") as tmp:
        cluster = RedisCluster(directory or tmp).start()
        try:
            yield cluster
        finally:
            cluster.stop()


try:
    import pytest
except ImportError:  # the benchmark imports this module without pytest
    pass
else:

    @pytest.fixture(scope="session")
    def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
        """A redis-server for the whole session (skips, or fails under CI, when not installed)."""
        require("redis-server", "apt-get install redis-server")
        with running_redis(tmp_path_factory.mktemp("redis")) as server:
            yield server

    @pytest.fixture(scope="session")
    def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
        """A three-node Redis Cluster for the session (skips, or fails under CI, without it)."""
        require("redis-server", "apt-get install redis-server")
        with running_cluster(tmp_path_factory.mktemp("cluster")) as cluster:
            yield cluster
