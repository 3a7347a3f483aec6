# SPDX-License-Identifier: MIT
"""kcached's life: Redis down or frozen, draining on SIGTERM, the socket file."""

import os
import signal
import socket
import time

import pytest

from conftest import (stored_payload, Inflight, RpcClient, T, admin_json, assert_healthy, err_code, free_port,
                      pack, wait_until)


def connect_fails(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except OSError:
        return True
    finally:
        s.close()
    return False


def test_redis_down_at_start_then_up(harness):
    port = free_port()
    k = harness.kcached(redis_port=port, ini={"redis": {"command_timeout_ms": 5000,
                                                        "connect_timeout_ms": 5000}})
    pid = k.pid
    c = k.client()
    # kcached answers itself without Redis.
    assert c.call("ping") == (None, "pong")
    assert c.ok("hello")["server"] == "kcached"
    for method, params in (("get", ["k"]), ("set", ["k", b"v"]), ("mget", [["a", "b"]]),
                           ("del", [["a"]]), ("ttl", ["k"])):
        t0 = time.monotonic()
        err, res = c.call(method, *params, timeout=10)
        dt = time.monotonic() - t0
        assert err_code(err) == "UNAVAILABLE", (method, err, res)
        # "At once": far sooner than command_timeout_ms (5 s).
        assert dt < T(2.0), f"{method}: UNAVAILABLE took {dt:.3f}s"
    harness.redis(port=port)
    wait_until(lambda: c.call("set", "k", b"v", timeout=5) == (None, True), 10,
               "kcached to reconnect to the new Redis")
    assert c.call("get", "k") == (None, b"v")
    assert k.pid == pid and k.alive()
    assert_healthy(k)


def test_redis_dies_then_comes_back(harness, redis):
    k = harness.kcached(redis, ini={"redis": {"command_timeout_ms": 5000}})
    c = k.client()
    c.ok("set", "k", b"v")
    port = redis.port
    redis.stop()

    def unavailable():
        t0 = time.monotonic()
        err, _ = c.call("get", "k", timeout=10)
        return err_code(err) == "UNAVAILABLE" and time.monotonic() - t0 < T(2.0)
    wait_until(unavailable, 5, "UNAVAILABLE (fast) while Redis is down")
    assert c.call("ping") == (None, "pong")
    harness.redis(port=port)
    wait_until(lambda: c.call("set", "k2", b"v2", timeout=5) == (None, True), 10,
               "kcached to reconnect")
    assert c.call("get", "k2") == (None, b"v2")
    assert k.alive()


def test_redis_frozen_timeout_then_recovers(harness, redis):
    k = harness.kcached(redis, ini={"redis": {"command_timeout_ms": 300}})
    c = k.client()
    c.ok("set", "f", b"frozen")
    redis.freeze()
    try:
        t0 = time.monotonic()
        err, res = c.call("get", "f", timeout=10)
        dt = time.monotonic() - t0
        assert err_code(err) == "TIMEOUT", (err, res)
        assert dt >= 0.25, f"TIMEOUT after {dt:.3f}s, before command_timeout_ms"
        assert dt < 0.3 + T(1.0), f"TIMEOUT after {dt:.3f}s"
        # Local methods do not wait for Redis.
        assert c.call("ping", timeout=1) == (None, "pong")
    finally:
        redis.thaw()
    wait_until(lambda: c.call("get", "f", timeout=5) == (None, b"frozen"), 10,
               "get to work again after SIGCONT")
    # A late reply from Redis is never delivered as the answer of another request.
    c.ok("set", "g", b"other")
    assert c.call("get", "g") == (None, b"other")
    assert c.call("get", "f") == (None, b"frozen")
    assert_healthy(k)


def test_deadlines_of_staggered_requests_and_other_timeouts(harness, redis):
    """Requests that started at different times against a frozen Redis each
    time out at their own command_timeout_ms, in order; a get_or_set with a
    shorter wait_ms (its own timer) in between times out first; none earlier
    than its deadline."""
    k = harness.kcached(redis, ini={"redis": {"command_timeout_ms": 600}})
    c1, c2, c3 = k.client(), k.client(), k.client()
    holder = k.client()
    assert "lease" in holder.ok("get_or_set", "held", {"lease_ms": 60000})
    redis.freeze()
    try:
        fl, sent_at = Inflight(), {}
        for i in range(3):
            fl.send(c1, "get", f"a{i}", tag=("a", i))
            sent_at[("a", i)] = time.monotonic()
        wait_until(lambda: admin_json(k, "stats")["inflight"] >= 3, 5, "3 requests in flight")
        time.sleep(0.2)  # the second batch starts 0.2 s later: its deadlines too
        for i in range(3):
            fl.send(c2, "get", f"b{i}", tag=("b", i))
            sent_at[("b", i)] = time.monotonic()
        # Waits locally on the lease (no Redis): only its wait_ms ends it.
        fl.send(c3, "get_or_set", "held", {"wait_ms": 300}, tag=("w", 0))
        sent_at[("w", 0)] = time.monotonic()
        took = {}
        deadline = time.monotonic() + 10
        while len(took) < len(sent_at) and time.monotonic() < deadline:
            for _, _, tag, err, _ in fl.pump(0.002).answered():
                if tag not in took:
                    took[tag] = (time.monotonic() - sent_at[tag], err_code(err))
        assert len(took) == len(sent_at), f"unanswered: {set(sent_at) - set(took)}"
        for tag, (dt, code) in took.items():
            want = 0.3 if tag[0] == "w" else 0.6
            assert code == "TIMEOUT", (tag, code)
            assert dt >= want - 0.01, f"{tag} timed out after {dt:.3f}s, before {want}s"
            assert dt < want + T(0.5), f"{tag} timed out after {dt:.3f}s for {want}s"
    finally:
        redis.thaw()
    assert c1.call("ping") == (None, "pong")
    assert_healthy(k)


def test_drain_answers_in_flight_request(harness, redis):
    k = harness.kcached(redis, ini={"server": {"drain_timeout_ms": int(20000 * T(1))},
                                    "redis": {"command_timeout_ms": int(20000 * T(1))}})
    c = k.client()
    c.ok("set", "d", b"drained")
    redis.freeze()
    msgid = c.request("get", ["d"])
    # A local request after it proves that kcached has read the get.
    assert c.call("ping") == (None, "pong")
    k.signal(signal.SIGTERM)
    wait_until(lambda: not os.path.exists(k.sock), 1, "socket file removed after SIGTERM")
    assert connect_fails(k.sock)
    assert k.alive(), "kcached exited with a request in flight"
    redis.thaw()
    assert c.recv_response(msgid, timeout=10) == (None, b"drained")
    assert c.is_closed(timeout=5)
    assert k.wait_exit(10) == 0


def test_drain_answers_500_pipelined_requests(harness, redis):
    """SIGTERM with 500 requests pipelined before the signal: all 500 answered
    (each exactly once, all successful), exit 0, socket removed."""
    n = 500
    k = harness.kcached(redis, ini={
        "server": {"drain_timeout_ms": int(60000 * T(1))},
        "redis": {"command_timeout_ms": int(10000 * T(1))},
        # No probe may fail while Redis is frozen: a node marked down fails
        # what it has in flight, and this test is about the drain.
        "health": {"interval_ms": 60000, "timeout_ms": 60000}})
    c = k.client()
    preset = {f"pre:{i}": b"value-%d" % i for i in range(n // 2)}
    for key, v in preset.items():
        c.ok("set", key, v)
    expected = {}  # msgid -> result
    batch = []
    for i in range(n):
        msgid = 100000 + i
        if i % 2 == 0:
            batch.append(pack([0, msgid, "set", [f"new:{i}", b"new-%d" % i]]))
            expected[msgid] = True
        else:
            key = f"pre:{i // 2}"
            batch.append(pack([0, msgid, "get", [key]]))
            expected[msgid] = preset[key]
    redis.freeze()
    try:
        c.send_raw(b"".join(batch))
        wait_until(lambda: admin_json(k, "stats")["inflight"] >= n, 10,
                   f"{n} requests in flight (admin stats)")
        k.signal(signal.SIGTERM)
        wait_until(lambda: not os.path.exists(k.sock), 5, "socket file removed after SIGTERM")
        assert connect_fails(k.sock)
        assert k.alive(), "kcached exited with requests in flight"
    finally:
        redis.thaw()
    got = {}
    while len(got) < n:
        obj = c.recv_obj(timeout=10)
        assert isinstance(obj, list) and len(obj) == 4 and obj[0] == 1, f"not a response: {obj!r}"
        _, msgid, err, res = obj
        assert msgid in expected, f"response to an unknown msgid {msgid}"
        assert msgid not in got, f"second response to msgid {msgid}: {err!r} {res!r}"
        got[msgid] = (err, res)
    bad = {m: r for m, r in got.items() if r != (None, expected[m])}
    assert not bad, f"{len(bad)} of {n} requests failed, e.g. {list(bad.items())[:5]}"
    # Nothing more (no duplicate), then kcached closes the connection and exits.
    assert c.is_closed(timeout=10)
    assert not c.stash and not c.others, (c.stash, c.others)
    assert k.wait_exit(10) == 0
    assert not os.path.exists(k.sock)
    assert stored_payload(redis.cmd("GET", b"kc:new:0")) == b"new-0"


def test_drain_timeout_answers_unavailable(harness, redis):
    k = harness.kcached(redis, ini={"server": {"drain_timeout_ms": 300},
                                    "redis": {"command_timeout_ms": int(20000 * T(1))}})
    c = k.client()
    c.ok("set", "d", b"v")
    redis.freeze()
    msgid = c.request("get", ["d"])
    assert c.call("ping") == (None, "pong")
    t0 = time.monotonic()
    k.signal(signal.SIGTERM)
    err, res = c.recv_response(msgid, timeout=10)
    dt = time.monotonic() - t0
    assert err_code(err) == "UNAVAILABLE", (err, res)
    assert dt < 0.3 + T(2.0), f"in-flight request answered after {dt:.3f}s"
    assert k.wait_exit(10) == 0
    assert not os.path.exists(k.sock)


def test_drain_idle_connections_exit_at_once(harness, redis):
    k = harness.kcached(redis, ini={"server": {"drain_timeout_ms": 30000}})
    idle = [k.client() for _ in range(5)]
    for c in idle:
        assert c.call("ping") == (None, "pong")
    t0 = time.monotonic()
    k.signal(signal.SIGTERM)
    assert k.wait_exit(10) == 0
    assert time.monotonic() - t0 < T(3.0), "idle connections held the drain"
    for c in idle:
        assert c.is_closed(timeout=1)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_exit_zero_and_socket_removed(kcd, sig):
    assert os.path.exists(kcd.sock)
    kcd.signal(sig)
    assert kcd.wait_exit(10) == 0
    assert not os.path.exists(kcd.sock)


def test_stale_socket_file_removed(harness, redis):
    path = os.path.join(harness.tmp, "stale.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()  # the file stays, nobody listens
    assert os.path.exists(path) and connect_fails(path)
    k = harness.kcached(redis, sock=path)
    assert_healthy(k)


def test_second_kcached_on_live_socket_refuses(harness, redis):
    k1 = harness.kcached(redis)
    k2 = harness.kcached(redis, sock=k1.sock, start=False)
    k2.start(wait=False)
    rc = k2.wait_exit(10)
    assert rc == 1, f"second kcached exit status {rc}"
    assert "in use" in k2.log_text(), k2.log_text()
    assert os.path.exists(k1.sock)
    assert_healthy(k1)


def test_restart_same_socket(harness, redis):
    k = harness.kcached(redis)
    c = k.client()
    c.ok("set", "persist", b"v")
    old = k.pid
    k.restart()
    assert k.pid != old
    assert_healthy(k)
    assert k.client().call("get", "persist") == (None, b"v")


def test_sigkill_leaves_stale_socket_then_restart(harness, redis):
    k = harness.kcached(redis)
    k.kill()
    assert os.path.exists(k.sock)  # nobody removed it
    k.start()
    assert_healthy(k)


def test_frozen_kcached_then_continue(kcd):
    c = kcd.client()
    kcd.freeze()
    try:
        msgid = c.request("ping", [])
        with pytest.raises(TimeoutError):
            c.recv_response(msgid, timeout=0.3)
    finally:
        kcd.thaw()
    assert c.recv_response(msgid) == (None, "pong")
    assert_healthy(kcd)


def test_with_replica(harness, redis, replica):
    k = harness.kcached(redis, ini={"redis": {"replicas": f"127.0.0.1:{replica.port}"}})
    c = k.client()
    c.ok("set", "r", b"replicated")
    assert stored_payload(redis.cmd("GET", b"kc:r")) == b"replicated"
    wait_until(lambda: stored_payload(replica.cmd("GET", b"kc:r")) == b"replicated", 5, "replication")
    # Reads may go to the replica; once replicated they see the value.
    wait_until(lambda: c.call("get", "r") == (None, b"replicated"), 5, "get")
    assert c.call("mget", ["r", "nope"]) == (None, [b"replicated", None])
    assert_healthy(k)


def test_replica_down_reads_still_work(harness, redis, replica):
    k = harness.kcached(redis, ini={"redis": {"replicas": f"127.0.0.1:{replica.port}"}})
    c = k.client()
    c.ok("set", "r", b"v")
    replica.stop()
    # With the replica gone, reads are served by the primary (after at most a
    # few failures while kcached notices).
    wait_until(lambda: c.call("get", "r") == (None, b"v"), 5, "get served without replica")
    for _ in range(20):
        assert c.call("get", "r") == (None, b"v")


def test_many_connects_and_disconnects(kcd):
    for i in range(300):
        with RpcClient(kcd.sock) as c:
            if i % 10 == 0:
                assert c.call("ping") == (None, "pong")
    assert_healthy(kcd)


def test_first_request_right_after_start_is_served(harness, redis):
    """The socket appears only when kcached is ready: with Redis up, a request
    sent the moment the socket accepts must be served, not UNAVAILABLE (the
    harness, and applications, rely on this)."""
    k = harness.kcached(redis, start=False)
    bad = []
    for i in range(10):
        k.start(wait=False)
        deadline = time.monotonic() + T(10)
        while True:
            assert time.monotonic() < deadline, "kcached socket never accepted"
            assert k.alive(), k.log_text()
            try:
                c = RpcClient(k.sock)
                break
            except OSError:
                time.sleep(0.001)
        with c:
            # Sent together with the first bytes on the socket.
            c.send_raw(b"".join([
                pack([0, 1, "set", [f"early{i}", b"v"]]),
                pack([0, 2, "get", [f"early{i}"]])]))
            r1 = c.recv_response(1)
            r2 = c.recv_response(2)
        if r1 != (None, True) or r2 != (None, b"v"):
            bad.append((i, r1, r2))
        assert k.terminate() == 0
    assert not bad, f"requests right after start were not served: {bad}"


def test_primary_given_by_host_name(harness, redis):
    """A name (as a Kubernetes service would be) is resolved off the loop; for
    "localhost" getaddrinfo may answer ::1 first while Redis listens on
    127.0.0.1 only, so kcached must move on to the next address."""
    k = harness.kcached(redis, ini={"redis": {"primary": f"localhost:{redis.port}"}})
    c = k.client()
    wait_until(lambda: c.call("set", "named", b"v") == (None, True), 10,
               "kcached to reach Redis by host name")
    assert c.call("get", "named") == (None, b"v")


def test_unresolvable_primary_is_unavailable_not_a_hang(harness):
    k = harness.kcached(ini={"redis": {"primary": "no-such-host.invalid:6379",
                                       "command_timeout_ms": 5000}})
    c = k.client()
    t0 = time.monotonic()
    err, _ = c.call("get", "k", timeout=10)
    assert err_code(err) == "UNAVAILABLE"
    assert time.monotonic() - t0 < T(2.0)
    assert c.call("ping") == (None, "pong")


def test_systemd_ready_notification(harness, redis):
    """Type=notify: READY=1 arrives on $NOTIFY_SOCKET once the socket listens
    (so a request then is served), STOPPING=1 when the drain starts."""
    import socket as _socket
    path = os.path.join(harness.tmp, "notify.sock")
    n = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
    n.bind(path)
    n.settimeout(T(10))
    k = harness.kcached(redis, env={"NOTIFY_SOCKET": path}, start=False)
    k.start(wait=False)
    assert n.recv(256) == b"READY=1"
    with k.client() as c:
        assert c.call("set", "r", b"v") == (None, True)
    os.kill(k.pid, signal.SIGTERM)
    assert n.recv(256) == b"STOPPING=1"
    assert k.wait_exit(T(10)) == 0
    n.close()
