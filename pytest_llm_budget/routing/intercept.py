"""Route LLM requests of clients the code under test builds itself, by patching httpx2 (and httpx).

`install(session)` replaces `HTTPTransport.handle_request` and
`AsyncHTTPTransport.handle_async_request` of `httpx2` and of legacy `httpx` with
`routed_handle_request` / `routed_handle_async_request` functions that send requests to an LLM
host through the session's `Router` (error mode: answer the app's SDK with the final 429).
Neither library is imported here: a module already imported is patched at once, one imported
later is patched right after its own import by a small `sys.meta_path` finder. `uninstall()`
restores the original methods and removes the finder. Installs nest (a stack of sessions;
the newest one routes), so a library user or a test can route into its own session for a while.

A request is never routed twice: the plugin's own transports mark their inner send
(`router.in_routed_send()`), and the patched methods then pass it straight on.

The connection pools below the transports (`httpcore.ConnectionPool.handle_request`, the async
twin, and httpcore2's) are patched too: that is where a routed request pays its budget gate
(`router.Gate`), so a mock that answers above the pool (respx, pytest-httpx, vcrpy, ...) is
never paced. The pool methods keep their names and `(self, request)` signature, because respx
patches over them and calls them for requests it passes through.

google-genai's async client sends through aiohttp whenever aiohttp is importable; while routing
is installed, `BaseApiClient._use_aiohttp` answers False so that it uses its (routed) httpx client.

`install(session, apps=False)` (`--llm-route fixtures`) patches the same methods but routes no
app-built client: the pools still gate the plugin's own clients, so a mock or a cassette that
answers them is never paid for either.

Cassettes (`vcr_httpx.py`) put vcr's httpx stubs over these patched transport methods while a
cassette is open, so recorded calls go through the budget and replayed ones never reach a pool.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from pytest_llm_budget.routing.traffic import classify

if TYPE_CHECKING:
    from pytest_llm_budget.routing.router import Router
    from pytest_llm_budget.session import BudgetSession

__all__ = [
    "ORIGINALS",
    "active_session",
    "install",
    "patched_methods",
    "uninstall",
]

_TRANSPORTS = ("httpx2", "httpx")
_POOLS = ("httpcore2", "httpcore")
_GENAI = "google.genai._api_client"
_MODULES = (*_TRANSPORTS, *_POOLS, _GENAI)
#: Connection failures that prove no byte of the request reached the provider.
_UNSENT = ("ConnectError", "ConnectTimeout", "PoolTimeout", "UnsupportedProtocol", "ProxyError")

#: (module name, class name, method name) -> the method before `install()` patched it.
ORIGINALS: dict[tuple[str, str, str], Callable[..., Any]] = {}

_lock = threading.RLock()
_stack: list[tuple[BudgetSession, tuple[str, ...], bool]] = []
_finder: _PatchOnImport | None = None


# -- which requests ------------------------------------------------------------------------------
def _router_for_request(request: Any) -> Router | None:
    """The active router when this request should be routed, else None."""
    # Imported here, not at module level: installing at session start stays cheap, and this
    # only runs once httpx2/httpx (far heavier) are in use.
    from pytest_llm_budget.routing.router import in_routed_send, router_for

    if in_routed_send():
        return None
    with _lock:
        if not _stack:
            return None
        session, hosts, apps = _stack[-1]
    if not apps:
        return None
    url = request.url
    if not classify(url.host, url.port, url.path, hosts).llm_host:
        return None
    return router_for(session, raise_errors=False)


# -- the patched methods -------------------------------------------------------------------------
def patched_methods(
    original_sync: Callable[..., Any], original_async: Callable[..., Any]
) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """`(routed_handle_request, routed_handle_async_request)` around the given originals."""

    from pytest_llm_budget.routing.router import is_pooled

    def routed_handle_request(self: Any, request: Any) -> Any:
        router = _router_for_request(request)
        if router is None:
            return original_sync(self, request)
        return router.handle(request, lambda r: original_sync(self, r), pooled=is_pooled(self))

    async def routed_handle_async_request(self: Any, request: Any) -> Any:
        router = _router_for_request(request)
        if router is None:
            return await original_async(self, request)

        async def send(r: Any) -> Any:
            return await original_async(self, r)

        return await router.ahandle(request, send, pooled=is_pooled(self))

    routed_handle_request.__wrapped__ = original_sync  # type: ignore[attr-defined]
    routed_handle_async_request.__wrapped__ = original_async  # type: ignore[attr-defined]
    return routed_handle_request, routed_handle_async_request


def gated_methods(
    module: ModuleType, original_sync: Callable[..., Any], original_async: Callable[..., Any]
) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """A connection pool's `(handle_request, handle_async_request)` that pay a pending gate."""
    from pytest_llm_budget.routing.router import pending_gate

    unsent = tuple(getattr(module, name) for name in _UNSENT if hasattr(module, name))

    def handle_request(self: Any, request: Any) -> Any:
        gate = pending_gate()
        if gate is None:
            return original_sync(self, request)
        gate.pay()
        gate.trace(request)
        try:
            return original_sync(self, request)
        except unsent:
            gate.unsent()
            raise

    async def handle_async_request(self: Any, request: Any) -> Any:
        gate = pending_gate()
        if gate is None:
            return await original_async(self, request)
        await gate.apay()
        gate.trace(request, is_async=True)
        try:
            return await original_async(self, request)
        except unsent:
            gate.unsent()
            raise

    handle_request.__wrapped__ = original_sync  # type: ignore[attr-defined]
    handle_async_request.__wrapped__ = original_async  # type: ignore[attr-defined]
    return handle_request, handle_async_request


def _no_aiohttp(original: Callable[..., bool]) -> Callable[..., bool]:
    """google-genai asks whether to send async calls through aiohttp: never while apps are
    routed (its httpx client is routed, aiohttp is not)."""

    def use_aiohttp(self: Any) -> bool:
        return not _routes_apps() and original(self)

    return use_aiohttp


def _routes_apps() -> bool:
    with _lock:
        return bool(_stack) and _stack[-1][2]


def _patch(module: ModuleType) -> None:
    name = module.__name__
    if name == _GENAI:
        cls = getattr(module, "BaseApiClient", None)
        if cls is not None and hasattr(cls, "_use_aiohttp"):
            _replace(name, cls, "_use_aiohttp", _no_aiohttp)
        return
    pool = name in _POOLS
    sync_cls = module.ConnectionPool if pool else module.HTTPTransport
    async_cls = module.AsyncConnectionPool if pool else module.AsyncHTTPTransport
    if (name, sync_cls.__name__, "handle_request") in ORIGINALS:
        return
    originals = (sync_cls.handle_request, async_cls.handle_async_request)
    new_sync, new_async = gated_methods(module, *originals) if pool else patched_methods(*originals)
    _replace(name, sync_cls, "handle_request", lambda original: new_sync)
    _replace(name, async_cls, "handle_async_request", lambda original: new_async)


def _replace(
    module_name: str, cls: type, attr: str, make: Callable[[Callable[..., Any]], Any]
) -> None:
    """Set `cls.attr = make(original)`, remembering the original for `uninstall()`."""
    key = (module_name, cls.__name__, attr)
    if key in ORIGINALS:
        return
    original = cls.__dict__[attr]
    ORIGINALS[key] = original
    setattr(cls, attr, make(original))


def _unpatch_all() -> None:
    for (name, cls_name, attr), original in list(ORIGINALS.items()):
        module = sys.modules.get(name)
        if module is not None:
            setattr(getattr(module, cls_name), attr, original)
        del ORIGINALS[(name, cls_name, attr)]


class _PatchingLoader(importlib.abc.Loader):
    """Runs the real loader, then patches the freshly imported module."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        with _lock:
            if _stack:
                _patch(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """A meta-path finder that only wraps the loader of `httpx2` / `httpx` (no import here)."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _MODULES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _PatchingLoader(spec.loader)
        return spec


# -- install / uninstall -------------------------------------------------------------------------
def install(
    session: BudgetSession, *, hosts: Sequence[str] | None = None, apps: bool = True
) -> None:
    """Gate the connection pools for `session` and, with `apps`, route app-built clients' LLM
    requests into it, until the matching `uninstall()`."""
    global _finder
    with _lock:
        hosts = tuple(session.settings.hosts if hosts is None else hosts)
        _stack.append((session, hosts, apps))
        for name in _MODULES:
            module = sys.modules.get(name)
            if module is not None:
                _patch(module)
        if _finder is None:
            _finder = _PatchOnImport()
            sys.meta_path.insert(0, _finder)


def uninstall() -> None:
    """Undo the latest `install()`; the last one restores the original methods."""
    global _finder
    with _lock:
        if _stack:
            _stack.pop()
        if _stack:
            return
        _unpatch_all()
        if _finder is not None:
            if _finder in sys.meta_path:
                sys.meta_path.remove(_finder)
            _finder = None


def active_session() -> BudgetSession | None:
    """The session the newest `install()` routes into, or None."""
    with _lock:
        return _stack[-1][0] if _stack else None

