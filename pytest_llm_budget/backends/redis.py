"""Redis backend: each bucket's window is one key changed by one atomic Lua script, for many hosts.

Layout: `{prefix}:{bucket}:state` holds the bucket's `WindowState` as a MessagePack blob, read and
rewritten by `redis_window.lua` (a port of `window.py`, `admission.py` and `correction.py`) in a
single EVALSHA per operation, with a PX expiry so an abandoned bucket disappears. A token-bucket
bucket (Anthropic) is `{prefix}:{bucket}:tb`, changed by `redis_token_bucket.lua` (a port of
`token_bucket.py`) the same way. Only core commands and EVAL/EVALSHA are used, so Valkey works
too.

Redis Cluster (and Valkey cluster): `redis+cluster://host:port` (`rediss+cluster://` for TLS)
opens redis-py's cluster client, which follows MOVED / ASK redirections itself. Its keys carry the
bucket in braces as a hash tag (`llm-budget:{openai:gpt-5}:state`, `:tb`, `:limits`, `:budgets`),
so every key of one bucket lives in one slot; each script touches only the key passed in KEYS.
Plain `redis://` keeps the untagged names, so hosts on older versions still share the same keys.
A plain client pointed at a cluster node is refused at open with a message naming
`redis+cluster://`. A cluster that is down or resharding (CLUSTERDOWN, TRYAGAIN) is retried like
a lost connection.

Clock: by default the caller's `now` is used (the limiter's clock, which tests can fake), so hosts
sharing a bucket need NTP-synced clocks; `use_server_time=True` makes the scripts read Redis's
TIME instead and shifts pauses accordingly, for fleets with skewed clocks.

Dead workers: every lease records `hostname:owner` and is dropped after `lease_ttl` seconds (a
call lasting longer is exotic); besides, when an admit is deferred for concurrency, leases whose
owner runs on this host with a dead pid are reaped at once and the admit is tried again.

`redis` is imported only when a backend is opened.
"""

from __future__ import annotations

import json
import math
import socket
import time
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any

from pytest_llm_budget.backends.base import Backend, LimitRecord, budgets_seen, limit_record
from pytest_llm_budget.backends.ledger import IDLE_TTL, LedgerAnswer, LedgerState
from pytest_llm_budget.errors import BackendUnavailable
from pytest_llm_budget.limiting.admission import Admitted, Decision, Deferred, Limits
from pytest_llm_budget.limiting.token_bucket import (
    DIMENSIONS,
    DimensionSnapshot,
    TokenBucketLimits,
)
from pytest_llm_budget.limiting.window import WindowSnapshot
from pytest_llm_budget.redact import mask_url, redact

__all__ = ["CLUSTER_SCHEMES", "BackendUnavailable", "RedisBackend", "mask_url"]

#: URL schemes that open the cluster client, and the plain scheme each stands for.
CLUSTER_SCHEMES = {"redis+cluster://": "redis://", "rediss+cluster://": "rediss://"}


def _load_script(name: str = "redis_window.lua") -> str:
    """A Lua source shipped beside this module."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


class RedisBackend(Backend):
    """Windows in Redis (or Valkey), shared by every process and host that uses the same keys."""

    def __init__(
        self,
        client: Any,
        *,
        description: str,
        prefix: str = "llm-budget",
        use_server_time: bool = False,
        lease_ttl: float = 600.0,
        tries: int = 3,
        backoff: float = 0.2,
        hash_tags: bool = False,
    ) -> None:
        from redis.exceptions import ClusterDownError, RedisError, TryAgainError
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        if lease_ttl <= 0:
            raise ValueError("lease_ttl must be > 0")
        self.client = client
        self.description = description
        self.prefix = prefix
        self.use_server_time = use_server_time
        self.lease_ttl = lease_ttl
        self.tries = max(1, tries)
        self.backoff = backoff
        self.hash_tags = hash_tags
        self.host = socket.gethostname()
        self._transient: tuple[type[BaseException], ...] = (
            RedisConnectionError,
            RedisTimeoutError,
            ClusterDownError,
            TryAgainError,
        )
        self._refused: type[BaseException] = RedisError
        self._script = client.register_script(_load_script())
        self._ledger_script = client.register_script(_load_script("redis_ledger.lua"))
        self._limits_script = client.register_script(_LEARN_LIMITS)
        self._buckets_script = client.register_script(_load_script("redis_token_bucket.lua"))

    @classmethod
    def from_url(
        cls,
        url: str,
        prefix: str = "llm-budget",
        *,
        use_server_time: bool = False,
        lease_ttl: float = 600.0,
        timeout: float = 2.0,
        tries: int = 3,
        backoff: float = 0.2,
    ) -> RedisBackend:
        """Connect to `redis://[:password@]host:port/db` (or rediss://, unix://, redis+cluster://)."""
        description = mask_url(url)
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError as exc:
            raise BackendUnavailable(
                f"--llm-backend {description} needs the redis package: "
                "pip install 'pytest-llm-budget[redis]'"
            ) from exc
        cluster = url.startswith(tuple(CLUSTER_SCHEMES))
        client: Any
        try:
            if cluster:
                from redis.cluster import RedisCluster

                scheme = next(s for s in CLUSTER_SCHEMES if url.startswith(s))
                client = RedisCluster.from_url(
                    CLUSTER_SCHEMES[scheme] + url[len(scheme):],
                    socket_timeout=timeout,
                    socket_connect_timeout=timeout,
                    retry=Retry(NoBackoff(), 1),  # one reload of the slot map; then ours, below
                    decode_responses=True,
                )
            else:
                client = redis.Redis.from_url(
                    url,
                    socket_timeout=timeout,
                    socket_connect_timeout=timeout,
                    retry=Retry(NoBackoff(), 0),  # our own bounded retries, below
                    decode_responses=True,
                )
            client.ping()
        except (redis.RedisError, redis.exceptions.RedisClusterException, OSError,
                ValueError) as exc:
            hint = ""
            if cluster and "cluster mode is not enabled" in str(exc).lower():
                scheme = next(s for s in CLUSTER_SCHEMES if description.startswith(s))
                plain = CLUSTER_SCHEMES[scheme] + description[len(scheme):]
                hint = f" (not a cluster node: use --llm-backend {plain})"
            raise BackendUnavailable(
                f"cannot reach the llm-budget Redis at {description}: {_describe(exc)}{hint}"
            ) from exc
        if not cluster and _is_cluster_node(client):
            client.close()
            raise BackendUnavailable(
                f"the llm-budget Redis at {description} is a Redis Cluster node: use "
                f"--llm-backend {_as_cluster_url(description)} (the cluster client follows "
                "MOVED / ASK redirections to the node that holds each bucket)"
            )
        try:  # a full (maxmemory, noeviction) or read-only Redis refuses writes: say so now
            client.set(f"{prefix}:probe", "1", px=60_000)
            client.delete(f"{prefix}:probe")
        except (redis.RedisError, OSError) as exc:
            raise BackendUnavailable(
                f"cannot write to the llm-budget Redis at {description}: {_describe(exc)}"
            ) from exc
        return cls(
            client,
            description=description,
            prefix=prefix,
            use_server_time=use_server_time,
            lease_ttl=lease_ttl,
            tries=tries,
            backoff=backoff,
            hash_tags=cluster,
        )

    # -- plumbing --------------------------------------------------------------------------
    def bucket_key(self, bucket: str, suffix: str) -> str:
        """A key of `bucket`'s; on a cluster the bucket is its hash tag, so they share a slot."""
        name = f"{{{bucket}}}" if self.hash_tags else bucket
        return f"{self.prefix}:{name}:{suffix}"

    def key(self, bucket: str) -> str:
        """The Redis key holding a bucket's state."""
        return self.bucket_key(bucket, "state")

    def _run(self, op: str, bucket: str, limits: Limits, now: float, *args: object) -> Any:
        """Run one op of the script, retrying lost connections a bounded number of times."""
        argv = [
            op,
            repr(float(now)),
            "1" if self.use_server_time else "0",
            repr(float(limits.span)),
            repr(float(self.lease_ttl)),
            repr(float(limits.window)),
            *[repr(a) if isinstance(a, float) else str(a) for a in args],
        ]
        return self._call(self._script, self.key(bucket), argv, f"{op} on bucket {bucket!r}")

    def buckets_key(self, bucket: str) -> str:
        """The Redis key holding a token-bucket bucket's state."""
        return self.bucket_key(bucket, "tb")

    def _run_buckets(
        self, op: str, bucket: str, limits: TokenBucketLimits, now: float, *args: object
    ) -> Any:
        """Run one op of the token-bucket script."""
        argv = [
            op,
            repr(float(now)),
            "1" if self.use_server_time else "0",
            repr(float(limits.span)),
            repr(float(self.lease_ttl)),
            *[str(-1 if cap is None else int(cap)) for cap in limits.capacities()],
            "1" if limits.charge_max_tokens else "0",
            *[repr(a) if isinstance(a, float) else str(a) for a in args],
        ]
        return self._call(
            self._buckets_script, self.buckets_key(bucket), argv, f"{op} on bucket {bucket!r}"
        )

    def _call(self, script: Any, key: str, argv: list[str], what: str) -> Any:
        """Run a registered script, retrying lost connections a bounded number of times."""
        last: BaseException | None = None
        for attempt in range(self.tries):
            try:
                return script(keys=[key], args=argv)
            except self._transient as exc:
                last = exc
                if attempt + 1 < self.tries:
                    time.sleep(self.backoff * 2**attempt)
            except self._refused as exc:  # OOM (maxmemory), READONLY replica, NOPERM, ...
                raise self._refusal(what, exc) from None
        raise BackendUnavailable(
            f"lost the llm-budget Redis at {self.description}: {what} failed "
            f"{self.tries} times ({_describe(last)})"
        ) from last

    def _refusal(self, what: str, exc: BaseException) -> BackendUnavailable:
        """The error for a command Redis refused; a redirection names the cluster URL to use."""
        from redis.exceptions import AskError

        hint = ""
        if isinstance(exc, AskError) and not self.hash_tags:  # MovedError too: a plain client
            hint = f" (a Redis Cluster: use --llm-backend {_as_cluster_url(self.description)})"
        return BackendUnavailable(
            f"the llm-budget Redis at {self.description} refused {what}: {_describe(exc)}{hint}"
        )

    def _run_ledger(self, op: str, ledger: str, now: float, *args: object) -> Any:
        """Run one op of the cost-ledger script on `{prefix}:cost:{ledger}`."""
        argv = [op, repr(float(now)), repr(IDLE_TTL), *[str(a) for a in args]]
        tagged = f"{{{ledger}}}" if self.hash_tags else ledger
        key = f"{self.prefix}:cost:{tagged}"
        return self._call(self._ledger_script, key, argv, f"{op} on cost ledger {ledger!r}")

    # -- Backend ---------------------------------------------------------------------------
    def admit(
        self,
        bucket: str,
        limits: Limits,
        ticket: str,
        estimate: int,
        now: float,
        owner: str,
        uncertain: int = 0,
        output: int = 0,
    ) -> Decision:
        """Admit or defer in one script run; when blocked by dead local leases, reap and retry."""
        if isinstance(limits, TokenBucketLimits):
            return self._admit_buckets(bucket, limits, ticket, estimate, now, owner, uncertain,
                                       output)
        args = (
            ticket,
            int(estimate),
            f"{self.host}:{owner}",
            int(limits.tokens),
            -1 if limits.requests is None else int(limits.requests),
            -1 if limits.concurrency is None else int(limits.concurrency),
            float(limits.poll),
            float(limits.waiter_grace),
            int(uncertain),
        )
        return self._admit_reaping(
            lambda op, *rest: self._run(op, bucket, limits, now, *rest),
            args,
            lambda reply: Admitted(ticket, float(reply[1]), int(reply[2])),
        )

    def _admit_buckets(
        self, bucket: str, limits: TokenBucketLimits, ticket: str, estimate: int, now: float,
        owner: str, uncertain: int, output: int,
    ) -> Decision:
        args = (
            ticket,
            int(estimate),
            f"{self.host}:{owner}",
            int(uncertain),
            int(output),
            -1 if limits.concurrency is None else int(limits.concurrency),
            float(limits.poll),
            float(limits.waiter_grace),
        )
        return self._admit_reaping(
            lambda op, *rest: self._run_buckets(op, bucket, limits, now, *rest),
            args,
            lambda reply: Admitted(
                ticket, float(reply[1]), int(reply[2]), tuple(float(x) for x in reply[3:6])
            ),
        )

    def _admit_reaping(
        self,
        run: Callable[..., Any],
        args: tuple[object, ...],
        admitted: Callable[[Any], Admitted],
    ) -> Decision:
        """One admit script run; when blocked by dead local leases, reap them and try once more."""
        for attempt in range(2):
            reply = run("admit", *args)
            if str(reply[0]) == "1":
                return admitted(reply)
            decision = Deferred(float(reply[1]), str(reply[2]))
            if attempt or decision.reason != "concurrency":
                break
            dead = self._dead_local([str(o) for o in reply[3:]])
            if not (dead and run("reap", *dead)):
                break
        return decision

    def _dead_local(self, owners: list[str]) -> list[str]:
        """Owners (`host:pid[:worker]`) on this host whose process no longer exists."""
        from pytest_llm_budget.backends.file import owner_pid, pid_alive

        dead = []
        for owner in set(owners):
            host, _, rest = owner.partition(":")
            pid = owner_pid(rest) if host == self.host else None
            if pid is not None and not pid_alive(pid):
                dead.append(owner)
        return sorted(dead)

    def settle(self, bucket: str, limits: Limits, ticket: str, estimate: int, charge: int,
               now: float, refund: bool = False, output_tokens: int | None = None) -> int:
        if isinstance(limits, TokenBucketLimits):
            return int(self._run_buckets(
                "settle", bucket, limits, now, ticket, int(charge), "1" if refund else "0",
                "" if output_tokens is None else int(output_tokens),
                float(limits.factor_floor), float(limits.factor_cap),
            ))
        return int(self._run(
            "settle", bucket, limits, now, ticket, int(estimate), int(charge),
            "1" if refund else "0", float(limits.factor_floor), float(limits.factor_cap),
            int(limits.tokens),
        ))

    def cancel(self, bucket: str, limits: Limits, ticket: str, now: float) -> int:
        if isinstance(limits, TokenBucketLimits):
            return int(self._run_buckets("cancel", bucket, limits, now, ticket))
        return int(self._run("cancel", bucket, limits, now, ticket))

    def release(self, bucket: str, limits: Limits, ticket: str, now: float) -> None:
        if isinstance(limits, TokenBucketLimits):
            self._run_buckets("release", bucket, limits, now, ticket)
            return
        self._run("release", bucket, limits, now, ticket)

    def restamp(self, bucket: str, limits: Limits, ticket: str, now: float) -> None:
        if not isinstance(limits, TokenBucketLimits):  # a token bucket keeps no dated charges
            self._run("restamp", bucket, limits, now, ticket)

    def penalize(self, bucket: str, limits: Limits, ticket: str, tokens: int, pause_until: float,
                 now: float) -> None:
        if isinstance(limits, TokenBucketLimits):
            self._run_buckets("penalize", bucket, limits, now, int(tokens), float(pause_until))
            return
        self._run("penalize", bucket, limits, now, ticket, int(tokens), float(pause_until))

    def calibrate(self, bucket: str, limits: Limits, ticket: str, server_used: int,
                  now: float) -> int:
        return self.observe(bucket, limits, ticket, 0, server_used, now)

    def observe(self, bucket: str, limits: Limits, ticket: str, server_limit: int,
                server_used: int, now: float, reset_s: float | None = None,
                dimension: str = "tokens") -> int:
        if isinstance(limits, TokenBucketLimits):
            d = DIMENSIONS.index("input_tokens" if dimension == "tokens" else dimension)
            return int(self._run_buckets(
                "observe", bucket, limits, now, int(server_used), d + 1
            ))
        return int(self._run(
            "observe", bucket, limits, now, ticket, int(server_used), int(server_limit),
            float(limits.window), float(limits.factor_floor), float(limits.factor_cap),
            "" if reset_s is None else float(reset_s), int(limits.tokens),
        ))

    def snapshot(self, bucket: str, limits: Limits, now: float) -> WindowSnapshot:
        if isinstance(limits, TokenBucketLimits):
            return self._snapshot_buckets(bucket, limits, now)
        used, requests, in_flight, waiting, paused, factor = self._run(
            "snapshot", bucket, limits, now
        )
        return WindowSnapshot(
            used_tokens=int(used),
            requests=int(requests),
            in_flight=int(in_flight),
            waiting=int(waiting),
            paused_for=float(paused),
            factor=float(factor),
        )

    def limits_key(self, bucket: str) -> str:
        """The Redis key holding what the servers stated for a bucket (a JSON blob per model)."""
        return self.bucket_key(bucket, "limits")

    def learn_limits(
        self, bucket: str, model: str, figures: Mapping[str, int], now: float
    ) -> LimitRecord:
        """Merge the model's figures into its blob in one script run; returns the record before."""
        argv = [model, json.dumps({k: int(v) for k, v in figures.items()}), str(LIMITS_TTL)]
        what = f"learn_limits on bucket {bucket!r}"
        reply = self._call(self._limits_script, self.limits_key(bucket), argv, what)
        return _record(reply)

    def learned_limits(self, bucket: str, now: float) -> LimitRecord:
        last: BaseException | None = None
        for attempt in range(self.tries):
            try:
                return _record(self.client.hgetall(self.limits_key(bucket)))
            except self._transient as exc:
                last = exc
                if attempt + 1 < self.tries:
                    time.sleep(self.backoff * 2**attempt)
            except self._refused as exc:
                raise self._refusal(f"reading the limits of bucket {bucket!r}", exc) from None
        raise BackendUnavailable(
            f"lost the llm-budget Redis at {self.description}: reading the limits of bucket "
            f"{bucket!r} failed {self.tries} times ({_describe(last)})"
        ) from last

    def _snapshot_buckets(
        self, bucket: str, limits: TokenBucketLimits, now: float
    ) -> WindowSnapshot:
        in_flight, waiting, paused, factor, expected, *spent_raw = self._run_buckets(
            "snapshot", bucket, limits, now
        )
        spent = [float(x) for x in spent_raw]
        dims = {
            name: DimensionSnapshot(cap, spent[d], float(expected) if d == 2 else 0.0)
            for d, (name, cap) in enumerate(zip(DIMENSIONS, limits.capacities(), strict=True))
            if cap is not None
        }
        return WindowSnapshot(
            used_tokens=math.ceil(spent[1] - 1e-6),
            requests=math.ceil(spent[0] - 1e-6),
            in_flight=int(in_flight),
            waiting=int(waiting),
            paused_for=float(paused),
            factor=float(factor),
            dimensions=dims,
        )

    def cost_hold(
        self, ledger: str, hold_id: str, amount: int, cap: int | None, now: float
    ) -> LedgerAnswer:
        admitted, spent, held = self._run_ledger(
            "hold", ledger, now, hold_id, int(amount), -1 if cap is None else int(cap)
        )
        return LedgerAnswer(str(admitted) == "1", int(spent), int(held))

    def cost_settle(self, ledger: str, hold_id: str, actual: int, now: float) -> int:
        spent, _ = self._run_ledger("settle", ledger, now, hold_id, int(actual))
        return int(spent)

    def cost_state(self, ledger: str, now: float) -> LedgerState:
        spent, _, refused, touched, *pairs = self._run_ledger("state", ledger, now)
        holds = {str(pairs[i]): int(pairs[i + 1]) for i in range(0, len(pairs), 2)}
        return LedgerState(int(spent), holds, int(refused), float(touched))

    def announce_budget(self, bucket: str, tokens: int, now: float, ttl: float) -> list[int]:
        """Budgets in the hash `{prefix}:{bucket}:budgets` ({tokens: last seen}), with a TTL."""
        key = self.bucket_key(bucket, "budgets")
        try:
            pipe = self.client.pipeline()
            pipe.hset(key, str(tokens), repr(float(now)))
            pipe.hgetall(key)
            pipe.pexpire(key, int(ttl * 1000))
            _, raw, _ = pipe.execute()
        except self._refused as exc:
            raise self._refusal("a budget check", exc) from None
        budgets = budgets_seen(raw, tokens, now, ttl)
        return sorted(int(k) for k in budgets if int(k) != tokens)

    def close(self) -> None:
        """Close the connection pool."""
        self.client.close()


#: Seconds the stated limits stay in Redis after the last time one was learned (30 days).
LIMITS_TTL = 30 * 86400

#: KEYS[1] the bucket's limits hash; ARGV model, the figures (JSON), the TTL. Merges the figures
#: into the model's blob and returns the hash as it was before, as a flat field/value list.
_LEARN_LIMITS = """
local before = redis.call('HGETALL', KEYS[1])
local old = redis.call('HGET', KEYS[1], ARGV[1])
local figures = old and cjson.decode(old) or {}
for k, v in pairs(cjson.decode(ARGV[2])) do figures[k] = v end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(figures))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return before
"""


def _is_cluster_node(client: Any) -> bool:
    """Whether a plain client is connected to a cluster-enabled node (False when INFO is denied)."""
    try:
        return str(client.info("cluster").get("cluster_enabled", "0")) == "1"
    except Exception:  # INFO renamed or forbidden (a managed Redis): assume a plain one
        return False


def _as_cluster_url(description: str) -> str:
    """A (masked) plain Redis URL as its redis+cluster:// form, without a /db path."""
    for cluster, plain in CLUSTER_SCHEMES.items():
        if description.startswith(plain):
            rest = description[len(plain):]
            host = rest.split("/", 1)[0].split("?", 1)[0]
            return f"{cluster}{host}"
    return "redis+cluster://host:port"


def _record(reply: Any) -> LimitRecord:
    """A limits hash (a dict, or HGETALL's flat list from a script) as a LimitRecord."""
    if isinstance(reply, list):
        reply = {reply[i]: reply[i + 1] for i in range(0, len(reply) - 1, 2)}
    raw: dict[str, Any] = {}
    for model, blob in dict(reply or {}).items():
        try:
            raw[str(model)] = json.loads(blob)
        except (TypeError, ValueError):
            continue
    return limit_record(raw)


def _describe(exc: BaseException | None) -> str:
    """An exception as `Type: message`, for error texts."""
    if exc is None:
        return "no error recorded"
    return f"{type(exc).__name__}: {redact(str(exc))}"
