"""The HTTP side: a threaded stdlib server around EmulatorCore, and the `Emulator` handle."""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .config import EmulatorConfig
from .core import EmulatorCore
from .faults import parse_fault
from .records import RequestRecord
from .wire import Answer, Request

__all__ = ["Emulator", "EmulatorServer"]


class EmulatorServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with daemon threads, a deep backlog and tracked connections."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], core: EmulatorCore) -> None:
        self.core = core
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up on an idle keep-alive connection is normal, not an error."""
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)

    def close_connections(self) -> None:
        """Shut every open client socket (idle keep-alive ones included) so threads exit."""
        with self.conn_lock:
            conns = list(self.connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    """Moves bytes between the socket and EmulatorCore."""

    protocol_version = "HTTP/1.1"
    server_version = "llm-budget-emulator/0.1"
    timeout = 120
    # Headers and body leave in separate writes: with Nagle's algorithm on, the body waits for
    # the client's delayed ACK, ~40 ms a response.
    disable_nagle_algorithm = True
    server: EmulatorServer

    def setup(self) -> None:
        super().setup()
        with self.server.conn_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.conn_lock:
            self.server.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the stdlib's per-request stderr line (the request log has it all)."""

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        request = Request(
            method=self.command,
            path=split.path,
            query=dict(parse_qsl(split.query)),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        try:
            self._send(self.server.core.handle(request))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _send(self, answer: Answer) -> None:
        self.send_response(answer.status)
        for name, value in answer.headers:
            self.send_header(name, value)
        if answer.events is None:
            body = answer.body
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            if answer.drop_after is not None:
                self.wfile.write(body[: len(body) // 2])
                self._drop()
                return
            self.wfile.write(body)
            return
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for index, event in enumerate(answer.events):
            if answer.drop_after is not None and index >= answer.drop_after:
                self._drop()
                return
            if answer.event_delay and index:
                time.sleep(answer.event_delay)
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def _drop(self) -> None:
        """Close the socket mid-response, as a dropped connection does."""
        self.wfile.flush()
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


class Emulator:
    """A running (or ready-to-run) provider emulator; `start()` it or use it as a context manager.

    >>> with Emulator(EmulatorConfig(window=2, openai=LimitSpec(tpm=10_000))) as emu:
    ...     client = openai.OpenAI(api_key="sk-test", base_url=emu.openai_base_url)
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        **changes: Any,
    ) -> None:
        base = config or EmulatorConfig()
        self.core = EmulatorCore(base.updated(changes) if changes else base, clock)
        self._server: EmulatorServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Emulator:
        """Bind (port 0 = a free port) and serve in a daemon thread; returns self."""
        if self._server is not None:
            return self
        cfg = self.core.config
        server = EmulatorServer((cfg.host, cfg.port), self.core)
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"llm-budget-emulator:{server.server_address[1]}",
            daemon=True,
        )
        self._server, self._thread = server, thread
        self.core.bound_port = int(server.server_address[1])
        thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close connections and the log file (idempotent, never hangs)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.close_connections()
            server.server_close()
            self.core.bound_port = None
        if thread is not None:
            thread.join(timeout=5)
        self.core.log.close()

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted (the CLI's loop)."""
        self.start()
        try:
            while self._thread is not None and self._thread.is_alive():
                self._thread.join(0.5)
        finally:
            self.stop()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- addresses -----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True between start() and stop()."""
        return self._server is not None

    @property
    def port(self) -> int:
        """The bound port (after start())."""
        if self._server is None:
            raise RuntimeError("emulator not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """`http://HOST:PORT`."""
        host = self.core.config.host
        host = "127.0.0.1" if host in ("", "0.0.0.0") else host
        return f"http://{host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """What `openai.OpenAI(base_url=...)` takes: `http://HOST:PORT/v1`."""
        return f"{self.url}/v1"

    @property
    def gemini_base_url(self) -> str:
        """What google-genai's `HttpOptions(base_url=...)` takes (the root URL)."""
        return f"{self.url}/"

    @property
    def azure_endpoint(self) -> str:
        """What `openai.AzureOpenAI(azure_endpoint=...)` takes: the root (the SDK adds /openai)."""
        return self.url

    @property
    def vertex_base_url(self) -> str:
        """What google-genai's `HttpOptions(base_url=...)` takes with `vertexai=True`."""
        return f"{self.url}/"

    @property
    def anthropic_base_url(self) -> str:
        """What `anthropic.Anthropic(base_url=...)` takes: the root (the SDK adds /v1/messages)."""
        return self.url

    # --- state ---------------------------------------------------------------------------------

    @property
    def config(self) -> EmulatorConfig:
        """The configuration in force."""
        return self.core.config

    @property
    def log(self) -> list[RequestRecord]:
        """A snapshot of the request records, oldest first."""
        return self.core.log.records()

    def stats(self) -> dict[str, Any]:
        """Same as GET /__emulator/stats: totals, per vendor, per bucket (with the proofs)."""
        return self.core.stats()

    def configure(self, config: EmulatorConfig | None = None, **changes: Any) -> EmulatorConfig:
        """Change settings at run time: a whole config and/or keys as POST /__emulator/config."""
        if config is not None:
            self.core.configure(config)
        return self.core.configure(changes) if changes else self.core.config

    def reset(self) -> None:
        """Forget windows, records, stats and queued faults."""
        self.core.reset()

    def queue_fault(self, spec: str, count: int | None = None) -> None:
        """Apply a fault (x-emulator-fault syntax) to the next `count` API requests."""
        self.core.faults.push(parse_fault(spec), count)
