"""The Redis backend on a real three-node Redis Cluster: hash tags, redirections, wrong URLs.

The backend contract itself runs over the cluster too (the `redis-cluster` case of the `backend`
fixtures in test_backend_file.py and test_backend_token_buckets.py).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from redis.exceptions import AskError, MovedError
from redis_server import RedisCluster, RedisServer, redis_cluster, redis_server  # noqa: F401
from test_backend_file import admitted, dead_pid, deferred, hammer, hold_and_kill
from test_workers_xdist import (
    assert_no_window_went_over,
    run_two_at_once,
    strict_emulator,  # noqa: F401 - fixture
    summary_totals,
)

from pytest_llm_budget.backends import open_backend
from pytest_llm_budget.backends.redis import BackendUnavailable, RedisBackend
from pytest_llm_budget.emulator import Emulator
from pytest_llm_budget.limiting.admission import Limits
from pytest_llm_budget.limiting.token_bucket import TokenBucketLimits

T0 = 1_000_000.0
LIMITS = Limits(tokens=1000, window=60.0, margin=0.5)


@pytest.fixture
def rc(redis_cluster: RedisCluster) -> Iterator[RedisBackend]:  # noqa: F811
    """A backend on the session's cluster with a fresh key prefix."""
    b = RedisBackend.from_url(redis_cluster.url, prefix=f"c-{uuid.uuid4().hex[:8]}")
    yield b
    b.close()


def node_of(b: RedisBackend, key: str) -> int:
    """The port of the primary that holds `key`'s slot (as the client's slot map says)."""
    return int(b.client.nodes_manager.get_node_from_slot(b.client.keyslot(key)).port)


def buckets_on_every_node(b: RedisBackend, cluster: RedisCluster) -> dict[int, str]:
    """One bucket name per node, found by trying names until each node holds one."""
    found: dict[int, str] = {}
    for i in range(1000):
        found.setdefault(node_of(b, b.key(f"openai:model-{i}")), f"openai:model-{i}")
        if len(found) == len(cluster.nodes):
            return found
    raise AssertionError(f"1000 buckets all on {sorted(found)}")


def plain(port: int) -> Any:
    import redis

    return redis.Redis(port=port, decode_responses=True)


def test_every_key_of_a_bucket_shares_its_slot(rc: RedisBackend) -> None:
    bucket = "openai:gpt-5"
    admitted(rc.admit(bucket, LIMITS, "a", 10, T0, "1"))
    tb = TokenBucketLimits(tokens=1000, window=6.0, requests=5, output=600)
    admitted(rc.admit(bucket, tb, "b", 10, T0, "1"))
    rc.learn_limits(bucket, "gpt-5", {"tokens": 6000}, T0)
    rc.announce_budget(bucket, 850, T0, 60.0)
    rc.cost_hold("run", "h1", 5, None, T0)
    keys = sorted(rc.client.keys(f"{rc.prefix}:*", target_nodes=rc.client.ALL_NODES))
    tag = "{openai:gpt-5}"
    assert keys == sorted([
        f"{rc.prefix}:{tag}:state", f"{rc.prefix}:{tag}:tb", f"{rc.prefix}:{tag}:limits",
        f"{rc.prefix}:{tag}:budgets", f"{rc.prefix}:cost:{{run}}",
    ])
    slots = {rc.client.keyslot(k) for k in keys if tag in k}
    assert slots == {rc.client.keyslot(rc.key(bucket))}
    assert rc.key(bucket) == f"{rc.prefix}:{tag}:state"


def test_buckets_spread_over_the_nodes_and_stay_independent(
    rc: RedisBackend, redis_cluster: RedisCluster  # noqa: F811
) -> None:
    buckets = buckets_on_every_node(rc, redis_cluster)
    for port, bucket in buckets.items():
        admitted(rc.admit(bucket, LIMITS, "a", 900, T0, "1"))
        deferred(rc.admit(bucket, LIMITS, "b", 900, T0, "1"), "tokens")
        assert plain(port).exists(rc.key(bucket)) == 1  # written on the node that owns it
    assert {rc.snapshot(b, LIMITS, T0).used_tokens for b in buckets.values()} == {900}


def test_learned_limits_and_leases_on_the_cluster(
    rc: RedisBackend, redis_cluster: RedisCluster  # noqa: F811
) -> None:
    other = RedisBackend.from_url(redis_cluster.url, prefix=rc.prefix)  # a second host
    try:
        for bucket in buckets_on_every_node(rc, redis_cluster).values():
            assert rc.learn_limits(bucket, "gpt-5", {"tokens": 6000}, T0) == {}
            assert other.learn_limits(bucket, "gpt-5", {"requests": 50}, T0) == {
                "gpt-5": {"tokens": 6000}
            }
            assert other.learned_limits(bucket, T0) == {"gpt-5": {"tokens": 6000, "requests": 50}}
            one = Limits(tokens=10**6, window=60.0, concurrency=1)
            admitted(rc.admit(bucket, one, "dead", 1, T0, f"{dead_pid()}:gw1"))
            admitted(other.admit(bucket, one, "next", 1, T0 + 1, f"{os.getpid()}:gw0"))  # reaped
            deferred(rc.admit(bucket, one, "held", 1, T0 + 2, f"{os.getpid()}:gw0"), "concurrency")
    finally:
        other.close()


def test_a_slot_migrating_mid_run_is_followed_through_ask_and_moved(
    rc: RedisBackend, redis_cluster: RedisCluster  # noqa: F811
) -> None:
    """ASK while the bucket's slot is being moved to another node, MOVED once it has moved."""
    bucket = f"migrating-{uuid.uuid4().hex[:6]}"
    key = rc.key(bucket)
    admitted(rc.admit(bucket, LIMITS, "a", 100, T0, "1"))
    slot = rc.client.keyslot(key)
    source = plain(node_of(rc, key))
    target_port = next(n.port for n in redis_cluster.nodes if n.port != node_of(rc, key))
    target = plain(target_port)
    source_id, target_id = source.execute_command("CLUSTER MYID"), target.execute_command(
        "CLUSTER MYID"
    )
    target.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
    source.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
    source.execute_command("MIGRATE", "127.0.0.1", target_port, "", 0, 5000, "KEYS", key)
    with pytest.raises(AskError):  # what a plain client would get from now on
        source.get(key)
    admitted(rc.admit(bucket, LIMITS, "b", 100, T0 + 1, "1"))  # the source answers ASK
    for node in redis_cluster.nodes:
        plain(node.port).execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
    admitted(rc.admit(bucket, LIMITS, "c", 100, T0 + 2, "1"))  # the client's map is stale: MOVED
    snap = rc.snapshot(bucket, LIMITS, T0 + 2)
    assert (snap.used_tokens, snap.requests) == (300, 3)  # one state, carried along
    assert node_of(rc, key) == target_port
    assert target.exists(key) == 1
    with pytest.raises(MovedError):
        source.get(key)


def test_a_lost_node_fails_its_buckets_after_bounded_retries(tmp_path: Any) -> None:
    """A node gone for good: its buckets fail in one line after 3 tries; the others still work."""
    cluster = RedisCluster(tmp_path, node_timeout_ms=60_000).start()  # no CLUSTERDOWN yet
    try:
        b = RedisBackend.from_url(cluster.url, tries=3, backoff=0.1)
        buckets = buckets_on_every_node(b, cluster)
        dead = cluster.nodes[2]
        dead.kill()
        start = time.monotonic()
        with pytest.raises(BackendUnavailable, match=r"lost the llm-budget Redis at redis\+cluster"
                           r"://127\.0\.0\.1:\d+: admit on bucket .* failed 3 times"):
            b.admit(buckets[dead.port], LIMITS, "a", 10, T0, "1")
        assert 0.25 <= time.monotonic() - start < 30  # it did retry, and it did give up
        alive = next(name for port, name in buckets.items() if port != dead.port)
        admitted(b.admit(alive, LIMITS, "a", 10, T0, "1"))  # before the node timeout: served
        b.close()
    finally:
        cluster.stop()


def test_a_plain_url_on_a_cluster_node_names_redis_cluster(
    redis_cluster: RedisCluster,  # noqa: F811
) -> None:
    port = redis_cluster.nodes[0].port
    with pytest.raises(BackendUnavailable) as info:
        open_backend(f"redis://127.0.0.1:{port}/0")
    assert f"use --llm-backend redis+cluster://127.0.0.1:{port}" in str(info.value)
    assert "MovedError" not in str(info.value)


def test_a_plain_client_redirected_by_a_cluster_says_so(
    rc: RedisBackend, redis_cluster: RedisCluster  # noqa: F811
) -> None:
    """Past the open-time check (INFO denied, say), a MOVED still becomes a clear error."""
    port = redis_cluster.nodes[0].port
    b = RedisBackend(plain(port), description=f"redis://127.0.0.1:{port}/0", prefix=rc.prefix)
    elsewhere = next(  # untagged keys: the state and the limits of a bucket hash apart
        name for name in (f"openai:model-{i}" for i in range(1000))
        if port not in (node_of(rc, b.key(name)), node_of(rc, b.limits_key(name)))
    )
    with pytest.raises(BackendUnavailable, match=rf"MovedError.*redis\+cluster://127\.0\.0\.1:{port}"):
        b.admit(elsewhere, LIMITS, "a", 10, T0, "1")
    with pytest.raises(BackendUnavailable, match=r"reading the limits.*redis\+cluster://"):
        b.learned_limits(elsewhere, T0)
    b.close()


def test_a_cluster_url_on_a_plain_redis_names_redis(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    url = f"redis+cluster://127.0.0.1:{redis_server.port}"
    with pytest.raises(BackendUnavailable) as info:
        RedisBackend.from_url(url)
    assert f"not a cluster node: use --llm-backend redis://127.0.0.1:{redis_server.port})" in str(
        info.value
    )


def test_a_cluster_url_with_a_password_is_masked() -> None:
    with pytest.raises(BackendUnavailable) as info:
        RedisBackend.from_url("redis+cluster://:s3cret@127.0.0.1:1", timeout=0.5)
    assert "s3cret" not in str(info.value)
    assert "redis+cluster://:***@127.0.0.1:1" in str(info.value)


def test_processes_sharing_a_cluster_never_overflow_the_window(
    redis_cluster: RedisCluster,  # noqa: F811
) -> None:
    hammer(redis_cluster.url)


def test_a_killed_lease_holder_on_the_cluster_does_not_block_the_others(
    redis_cluster: RedisCluster,  # noqa: F811
) -> None:
    bucket = f"kill-{uuid.uuid4().hex[:6]}"
    hold_and_kill(redis_cluster.url, bucket)
    b = RedisBackend.from_url(redis_cluster.url)
    limits = Limits(tokens=10**6, window=60.0, concurrency=1)
    assert b.snapshot(bucket, limits, time.time()).in_flight == 1  # the dead child's lease
    admitted(b.admit(bucket, limits, "next", 1, time.time(), f"{os.getpid()}:gw0"))
    b.client.delete(b.key(bucket))
    b.close()


def test_two_pytest_runs_share_one_cluster(
    pytester: pytest.Pytester,
    strict_emulator: Emulator,  # noqa: F811
    redis_cluster: RedisCluster,  # noqa: F811
) -> None:
    results = run_two_at_once(pytester, strict_emulator, redis_cluster.url)
    for result in results:
        assert result.returncode == 0, result.stdout
        assert "redis+cluster://127.0.0.1:" in result.stdout
        assert summary_totals(result.stdout) == {"calls": 20, "429s": 0}
    assert_no_window_went_over(strict_emulator, admitted=40)


def test_a_plain_url_on_a_cluster_node_is_a_usage_error(
    pytester: pytest.Pytester, redis_cluster: RedisCluster  # noqa: F811
) -> None:
    pytester.makepyfile("def test_x(): pass")
    port = redis_cluster.nodes[1].port
    result = pytester.runpytest_subprocess(f"--llm-backend=redis://:pw-9x@127.0.0.1:{port}/0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert f"use --llm-backend redis+cluster://:***@127.0.0.1:{port}" in err, err
    assert "pw-9x" not in err + result.stdout.str()
