# SPDX-License-Identifier: MIT
"""The Python client (client/python/kcache) against a real kcached and Redis:
every method, errors, pipelining, deadlines, reconnects, fork, the asyncio
client, and the lease protocol of get_or_set with concurrent callers."""

import asyncio
import os
import signal
import socket
import sys
import threading
import time
import traceback

import msgpack
import pytest

from conftest import T, data_key, stored_payload, wait_until

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "client",
                                "python"))
import kcache  # noqa: E402


@pytest.fixture
def client(kcd):
    c = kcache.Client(kcd.sock, timeout=T(2))
    yield c
    c.close()


def run(coro):
    return asyncio.run(coro)


# --------------------------------------------------------------------------
# Methods.
# --------------------------------------------------------------------------

def test_every_method(kcd, redis, client):
    c = client
    assert c.ping() == "pong"
    h = c.hello()
    assert h["server"] == "kcached" and h["protocol"] == 1
    assert "get_or_set" in h["methods"] and h["limits"]["max_batch_keys"] > 0

    assert c.set("k1", b"v1") is True
    assert c.set("k2", "v2", ttl=100) is True
    assert c.set(b"k3", bytearray(b"v3"), ttl_ms=50000) is True
    assert c.get("k1") == b"v1" and c.get(b"k2") == b"v2" and c.get("k3") == b"v3"
    assert c.get("missing") is None
    assert 90 <= c.ttl("k2") <= 100 and c.ttl("missing") == -2
    assert 40 <= c.ttl("k3") <= 50
    assert stored_payload(redis.cmd("GET", "kc:k1")) == b"v1"

    assert c.mset({"m1": b"a", "m2": "b"}, ttl=60) is True
    assert c.mget(["m1", "nope", "m2"]) == [b"a", None, b"b"]
    assert c.mget([]) == []
    assert c.exists("m1", "m2", "m1", "nope") == 3
    assert c.exists(["m1", "nope"]) == 1
    assert c.expire("m1", 5) is True and c.expire("nope", 5) is False
    assert 1 <= c.ttl("m1") <= 5
    assert c.delete("m1", "m2", "nope") == 2
    assert c.delete([]) == 0
    assert c.get("m1") is None

    # namespaces, schema tags, consistency
    assert c.set("u", b"in-ns", ns="users", schema="v1", ttl=60) is True
    assert c.get("u") is None
    assert c.get("u", ns="users") == b"in-ns"
    assert c.get("u", ns="users", schema="v1", consistency="primary") == b"in-ns"
    assert c.get("u", ns="users", schema="v2") is None  # another tag reads as a miss
    assert c.exists("u", ns="users") == 1
    assert c.ttl("u", ns="users") > 0
    assert c.mget(["u"], ns="users", schema="v1") == [b"in-ns"]
    assert c.delete("u", ns="users") == 1

    # stale window
    assert c.set("st", b"x", ttl=1, stale_ttl=60) is True
    assert c.ttl("st") > 50

    # hashes
    assert c.hset("h", {"f1": b"1", b"f2": "2"}, ttl=60) is True
    assert c.hget("h", "f1") == b"1" and c.hget("h", "zz") is None
    assert c.hgetall("h") == {b"f1": b"1", b"f2": b"2"}
    assert c.hgetall("nohash") == {}
    assert c.hdel("h", "f1", "zz") == 1
    assert c.hgetall("h") == {b"f2": b"2"}
    assert c.hset("hs", {"f": b"1"}, ns="n", schema="s1") is True
    assert c.hget("hs", "f", ns="n", schema="s1") == b"1"
    assert c.hget("hs", "f", ns="n", schema="s2") is None

    # invalidation
    c.set("t1", b"1", tags=["red"])
    c.mset({"t2": b"2", "t3": b"3"}, tags="blue")
    assert c.invalidate_tags("red", "blue") == 3
    assert c.get("t2") is None
    c.mset({"p:1": b"1", "p:2": b"2", "q:1": b"3"})
    assert c.invalidate_pattern("p:*") == 2
    assert c.get("q:1") == b"3"
    assert c.invalidate_keys("q:1", "nope") == 1
    c.set("g", b"1", ns="flush")
    gen = c.invalidate_namespace("flush")
    assert isinstance(gen, int) and gen > 0
    assert c.get("g", ns="flush") is None
    assert c.invalidate(keys=["x"]) == {"deleted": 0}
    assert "generation" in c.invalidate(namespace="flush")
    with pytest.raises(TypeError):
        c.invalidate(keys=["x"], pattern="y")

    # leases, low level
    r = c.get_or_set_begin("lk", ns="l")
    assert r.value is None and isinstance(r.lease, str) and r.stale is False
    assert c.fill("lk", r.lease, b"filled", ns="l", ttl=60, tags=["lt"]) is True
    assert c.get_or_set_begin("lk", ns="l") == kcache.GetOrSetResult(b"filled", None, False)
    r = c.get_or_set_begin("lk2")
    assert c.release("lk2", r.lease) is True
    assert c.release("lk2", r.lease) is False
    r = c.get_or_set_begin("hk", field="f")
    assert c.fill("hk", r.lease, b"fv", field="f") is True
    assert c.hget("hk", "f") == b"fv"

    st = c.stats()
    assert st["totals"]["hits"] > 0 and "users" in st["namespaces"]
    assert c.call("ping", read=True) == "pong"


def test_stale_value_and_refresh(kcd, client):
    c = client
    c.set("sv", b"old", ttl_ms=100, stale_ttl=60)
    time.sleep(T(0.25))
    r = c.get_or_set_begin("sv")
    assert r.stale and r.value == b"old" and r.lease
    assert c.get_or_set_begin("sv") == kcache.GetOrSetResult(b"old", None, True)
    assert c.fill("sv", r.lease, b"new", ttl=60) is True
    assert c.get_or_set("sv", lambda: b"unused") == b"new"


def test_errors(kcd, redis, client, tmp_path):
    c = client
    with pytest.raises(kcache.BadRequest) as ei:
        c.get("\0nul")
    assert ei.value.code == "BAD_REQUEST" and ei.value.http_status == 400 and ei.value.message
    assert isinstance(ei.value, kcache.KcacheError)
    with pytest.raises(kcache.BadRequest):
        c.set("k", b"v", ttl=0)
    with pytest.raises(kcache.TooLarge) as ei:
        c.get("x" * 2000)
    assert ei.value.code == "TOO_LARGE"
    with pytest.raises(kcache.NoMethod):
        c.call("no_such_method")
    with pytest.raises(kcache.LeaseInvalid):
        c.fill("k", "123", b"v")
    with pytest.raises(TypeError):
        c.get(42)
    with pytest.raises(TypeError):
        c.set("k", 42)
    # an error leaves the connection usable
    assert c.ping() == "pong"

    nosock = kcache.Client(str(tmp_path / "nothing.sock"), timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(kcache.ConnectionError) as ei:
        nosock.get("k")
    assert ei.value.code == "CONNECTION" and time.monotonic() - t0 < T(0.5)

    redis.stop()

    def unavailable():
        try:
            c.get("k")
        except kcache.Unavailable as e:
            return e
        except kcache.KcacheError:
            return None
    e = wait_until(unavailable, 10, "UNAVAILABLE with Redis down")
    assert e.code == "UNAVAILABLE" and e.http_status == 503


def test_default_socket_from_env(kcd, monkeypatch):
    monkeypatch.setenv("KCACHE_SOCKET", kcd.sock)
    c = kcache.Client()
    assert c.socket_path == kcd.sock and c.ping() == "pong"
    c.close()
    monkeypatch.delenv("KCACHE_SOCKET")
    assert kcache.Client().socket_path == "/run/kcache/kcached.sock"


# --------------------------------------------------------------------------
# Pipelining.
# --------------------------------------------------------------------------

def test_pipeline_1000(kcd, client):
    c = client
    with c.pipeline() as p:
        for i in range(500):
            p.set(f"p{i}", b"v%d" % i, ttl=60)
        for i in range(500):
            p.get(f"p{i}")
        assert len(p) == 1000
        t0 = time.monotonic()
        res = p.execute()
        dt = time.monotonic() - t0
    assert res[:500] == [True] * 500
    assert res[500:] == [b"v%d" % i for i in range(500)]
    assert dt < T(2)
    # chaining, mixed methods, an error left in place
    res = (c.pipeline().get("p1").mget(["p2", "zz"]).exists("p3").get("\0bad").ping()
           .execute(raise_on_error=False))
    assert res[:3] == [b"v1", [b"v2", None], 1] and res[4] == "pong"
    assert isinstance(res[3], kcache.BadRequest)
    p = c.pipeline()
    p.get("p1")
    p.get("\0bad")
    with pytest.raises(kcache.BadRequest):
        p.execute()
    assert c.pipeline().execute() == []


def test_pipeline_large_values_do_not_deadlock(kcd, client):
    # Replies pile up while the requests are still being written: the client
    # must read them meanwhile or both sides block.
    c = client
    big = b"x" * 200_000
    c.set("big", big, ttl=60)
    p = c.pipeline()
    for _ in range(60):
        p.get("big")
    res = p.execute(timeout=T(10))
    assert len(res) == 60 and all(r == big for r in res)


def test_threads_share_one_client(kcd, client):
    c = client
    errors = []

    def worker(n):
        try:
            for i in range(150):
                key = f"t{n}:{i}"
                assert c.set(key, key) is True
                assert c.get(key) == key.encode()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))
    ts = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(T(30))
    assert not errors, errors[:3]


# --------------------------------------------------------------------------
# Deadlines, late replies, reconnects, fork.
# --------------------------------------------------------------------------

def test_deadline_with_kcached_stopped(kcd, client):
    c = kcache.Client(kcd.sock, timeout=0.3)
    c.set("a", b"A")
    c.set("b", b"B")
    kcd.freeze()
    try:
        t0 = time.monotonic()
        with pytest.raises(kcache.Timeout) as ei:
            c.get("a")
        dt = time.monotonic() - t0
        assert ei.value.local and ei.value.code == "TIMEOUT" and ei.value.http_status == 504
        assert 0.3 <= dt < 0.3 + T(0.5)
        t0 = time.monotonic()
        with pytest.raises(kcache.Timeout):
            c.get("a", timeout=0.1)  # per-call override
        assert 0.1 <= time.monotonic() - t0 < 0.1 + T(0.5)
        # a write times out the same way
        with pytest.raises(kcache.Timeout):
            c.set("a", b"A2", timeout=0.1)
    finally:
        kcd.thaw()
    # The late replies of the abandoned gets are discarded, never taken as the
    # answer of a later request.
    assert c.get("b", timeout=T(2)) == b"B"
    assert c.get("a", timeout=T(2)) == b"A2"


def test_get_or_set_deadline_follows_wait_ms(kcd):
    c = kcache.Client(kcd.sock, timeout=0.2)
    holder = kcache.Client(kcd.sock, timeout=T(2))
    r = holder.get_or_set_begin("slow")
    assert r.lease
    t0 = time.monotonic()
    # kcached waits wait_ms for the holder, then answers TIMEOUT: the client's
    # deadline (0.2 s) is stretched to wait_ms + 1 s to let it.
    with pytest.raises(kcache.Timeout) as ei:
        c.get_or_set_begin("slow", wait_ms=500)
    assert not ei.value.local
    assert 0.45 <= time.monotonic() - t0 < T(1.5)
    holder.release("slow", r.lease)


def test_reconnect_after_restart(kcd, client):
    c = client
    assert c.set("r", b"1") is True
    conn = c._conn
    kcd.restart()
    # the connection kcached closed is noticed before the next request goes out
    assert c.get("r") == b"1"
    assert c._conn is not conn
    conn = c._conn
    kcd.restart()
    assert c.set("r", b"2") is True  # a write too: not a byte of it had gone out
    assert c._conn is not conn
    kcd.kill()
    with pytest.raises(kcache.ConnectionError):
        c.get("r")
    kcd.start()
    assert c.get("r") == b"2"


class FakeKcached:
    """A Unix-socket server that answers like kcached, except that the first
    request of the first connection makes it close the connection unanswered."""

    def __init__(self, path):
        self.path = path
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(path)
        self.srv.listen(8)
        self.seen = []
        self.conns = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            try:
                s, _ = self.srv.accept()
            except OSError:
                return
            self.conns += 1
            first = self.conns == 1
            u = msgpack.Unpacker(raw=False)
            with s:
                while True:
                    data = s.recv(65536)
                    if not data:
                        break
                    u.feed(data)
                    for req in u:
                        self.seen.append(req[2])
                        if first:
                            break
                        res = b"val" if req[2] == "get" else True
                        s.sendall(msgpack.packb([1, req[1], None, res], use_bin_type=True))
                    if first:
                        break

    def close(self):
        self.srv.close()


def test_reads_retried_writes_not(tmp_path):
    f = FakeKcached(str(tmp_path / "r.sock"))
    try:
        c = kcache.Client(f.path, timeout=T(2))
        assert c.get("k") == b"val"  # lost with its connection, sent again
        assert f.seen == ["get", "get"]
    finally:
        f.close()
    f = FakeKcached(str(tmp_path / "w.sock"))
    try:
        c = kcache.Client(f.path, timeout=T(2))
        with pytest.raises(kcache.ConnectionError):
            c.set("k", b"v")  # may have been applied: never sent twice
        assert f.seen == ["set"]
        assert c.set("k", b"v") is True  # the next call reconnects
    finally:
        f.close()


def _wait_child(pid, timeout=10):
    deadline = time.monotonic() + T(timeout)
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError("forked child did not exit")


def test_fork(kcd, client):
    c = client
    a = kcache.AsyncClient(kcd.sock, timeout=T(2))
    assert c.set("parent", b"P") is True
    parent_conn = c._conn
    parent_fd = parent_conn.sock.fileno()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            ok = (c.get("parent") == b"P" and c._conn is not parent_conn
                  and c._conn.pid == os.getpid() and c.set("child", b"C") is True
                  and asyncio.run(a.get("parent")) == b"P")
            code = 0 if ok else 3
        except BaseException:  # noqa: BLE001 - the child reports through its status
            traceback.print_exc()
            code = 2
        finally:
            os._exit(code)
    assert _wait_child(pid) == 0
    # The parent's connection is untouched and still works.
    assert c._conn is parent_conn and parent_conn.sock.fileno() == parent_fd
    assert c.get("child") == b"C"
    assert run(a.get("child")) == b"C"


# --------------------------------------------------------------------------
# asyncio.
# --------------------------------------------------------------------------

def test_async_methods(kcd):
    async def main():
        async with kcache.AsyncClient(kcd.sock, timeout=T(2)) as a:
            assert await a.ping() == "pong"
            assert (await a.hello())["protocol"] == 1
            assert await a.set("ak", b"v", ttl=60, ns="an") is True
            assert await a.get("ak", ns="an") == b"v"
            assert await a.mset({"x": b"1", "y": b"2"}) is True
            assert await a.mget(["x", "y", "z"]) == [b"1", b"2", None]
            assert await a.exists("x", "y") == 2
            assert await a.ttl("x") > 0 and await a.expire("x", 30) is True
            assert await a.delete("x") == 1
            assert await a.hset("h", {"f": b"v"}) is True
            assert await a.hget("h", "f") == b"v"
            assert await a.hgetall("h") == {b"f": b"v"}
            assert await a.hdel("h", "f") == 1
            r = await a.get_or_set_begin("l")
            assert await a.fill("l", r.lease, b"L") is True
            assert await a.get_or_set("l", lambda: b"no") == b"L"
            r = await a.get_or_set_begin("l2")
            assert await a.release("l2", r.lease) is True
            await a.set("t", b"1", tags=["tt"])
            assert await a.invalidate_tags("tt") == 1
            assert await a.invalidate_keys("y") == 1
            assert await a.invalidate_pattern("nothing*") == 0
            assert await a.invalidate_namespace("an") > 0
            assert "totals" in await a.stats()
            with pytest.raises(kcache.BadRequest):
                await a.get("\0x")
            p = a.pipeline()
            for i in range(1000):
                p.set(f"ap{i}", b"%d" % i)
            assert await p.execute() == [True] * 1000
            async with a.pipeline() as p:
                p.get("ap7").get("\0bad")
                res = await p.execute(raise_on_error=False)
            assert res[0] == b"7" and isinstance(res[1], kcache.BadRequest)
    run(main())


def test_async_100_concurrent_gets_one_connection(kcd, client):
    client.mset({f"c{i}": b"v%d" % i for i in range(100)})

    async def main():
        a = kcache.AsyncClient(kcd.sock, timeout=T(2))
        assert await a.ping() == "pong"
        conn = a._conn
        res = await asyncio.gather(*[a.get(f"c{i}") for i in range(100)])
        assert res == [b"v%d" % i for i in range(100)]
        assert a._conn is conn  # one connection carried all of them
        # many in flight at once, each matched by msgid
        kcd.freeze()
        try:
            tasks = [asyncio.ensure_future(a.get(f"c{i}")) for i in range(100)]
            await asyncio.sleep(0.05)
            assert len(conn.pending) == 100
        finally:
            kcd.thaw()
        assert await asyncio.gather(*tasks) == [b"v%d" % i for i in range(100)]
        a.close()
    run(main())


def test_async_deadline_and_reconnect(kcd):
    async def main():
        a = kcache.AsyncClient(kcd.sock, timeout=0.3)
        await a.set("d", b"D")
        kcd.freeze()
        try:
            t0 = time.monotonic()
            with pytest.raises(kcache.Timeout) as ei:
                await a.get("d")
            assert ei.value.local and 0.3 <= time.monotonic() - t0 < 0.3 + T(0.5)
            with pytest.raises(kcache.Timeout):
                await a.get("d", timeout=0.1)
        finally:
            kcd.thaw()
        assert await a.get("d", timeout=T(2)) == b"D"
        await asyncio.get_running_loop().run_in_executor(None, kcd.restart)
        assert await a.get("d", timeout=T(2)) == b"D"
        a.close()
    run(main())
    # a client used from another event loop connects anew on that loop
    a = kcache.AsyncClient(kcd.sock, timeout=T(2))
    assert run(a.get("d")) == b"D"
    assert run(a.get("d")) == b"D"


# --------------------------------------------------------------------------
# get_or_set: the lease protocol with concurrent callers.
# --------------------------------------------------------------------------

def test_get_or_set_one_loader_among_threads(kcd, client):
    loads = []
    gate = threading.Event()

    def loader():
        loads.append(threading.get_ident())
        gate.wait(T(2))
        return b"loaded"
    results = []
    # half share one client (one connection), half have their own
    clients = [client] * 5 + [kcache.Client(kcd.sock, timeout=T(2)) for _ in range(5)]

    def caller(c):
        results.append(c.get_or_set("hot", loader, ttl=60, ns="g"))
    ts = [threading.Thread(target=caller, args=(c,)) for c in clients]
    for t in ts:
        t.start()
    wait_until(lambda: loads, 5, "a loader to start")
    time.sleep(0.1)
    gate.set()
    for t in ts:
        t.join(T(10))
    assert results == [b"loaded"] * 10
    assert len(loads) == 1
    assert client.get("hot", ns="g") == b"loaded"
    st = client.stats()["namespaces"]["g"]
    assert st["leases_granted"] == 1 and st["waits_coalesced"] >= 1


def test_get_or_set_one_loader_among_tasks(kcd):
    loads = []

    async def main():
        a = kcache.AsyncClient(kcd.sock, timeout=T(2))

        async def loader():
            loads.append(1)
            await asyncio.sleep(0.2)
            return "loaded"
        res = await asyncio.gather(*[a.get_or_set("hot-a", loader) for _ in range(20)])
        assert res == [b"loaded"] * 20
    run(main())
    assert len(loads) == 1


def test_get_or_set_loader_failure_hands_lease_on(kcd, client):
    started = threading.Event()
    second = []

    def failing():
        started.set()
        time.sleep(0.2)
        raise RuntimeError("database down")

    def waiter():
        c2 = kcache.Client(kcd.sock, timeout=T(2))
        second.append(c2.get_or_set("fl", lambda: b"from-waiter"))
    with pytest.raises(RuntimeError):
        t = threading.Thread(target=lambda: (started.wait(T(2)), waiter()))
        t.start()
        try:
            client.get_or_set("fl", failing)
        finally:
            t.join(T(5))
    # the release passed the lease to the waiter at once, which loaded it
    assert second == [b"from-waiter"]
    assert client.get("fl") == b"from-waiter"


def test_get_or_set_returns_loaded_value_when_fill_fails(kcd, client):
    def loader():
        # a write of the key meanwhile revokes the lease: the fill is refused
        other = kcache.Client(kcd.sock, timeout=T(2))
        other.set("rv", b"written")
        return b"loaded"
    assert client.get_or_set("rv", loader) == b"loaded"
    assert client.get("rv") == b"written"  # the older loaded value never overwrote it

    # a fill refused for another reason (value over max_value_bytes would be
    # TOO_LARGE; here: a bad ttl) still returns the value, and releases the lease
    assert client.get_or_set("bt", lambda: "v", ttl=-1) == b"v"
    assert client.get_or_set_begin("bt").lease  # nobody holds it any more


def test_abandoned_get_or_set_does_not_block_the_key(kcd):
    # A get_or_set given up by its caller may be granted the lease later: the
    # client must hand it on at once, not leave the key blocked for lease_ms.
    holder = kcache.Client(kcd.sock, timeout=T(2))
    third = kcache.Client(kcd.sock, timeout=T(2))

    # sync: the idle connection is closed at the deadline
    c = kcache.Client(kcd.sock, timeout=T(2))
    r = holder.get_or_set_begin("ab-sync")
    with pytest.raises(kcache.Timeout):
        c.get_or_set_begin("ab-sync", lease_ms=5000, timeout=0.2)
    holder.release("ab-sync", r.lease)
    t0 = time.monotonic()
    assert third.get_or_set_begin("ab-sync").lease
    assert time.monotonic() - t0 < T(1)
    assert c.ping() == "pong"  # and the client reconnects

    # asyncio: the late reply's lease is released when it arrives
    async def main():
        a = kcache.AsyncClient(kcd.sock, timeout=T(2))
        assert await a.ping() == "pong"
        r = holder.get_or_set_begin("ab-async")
        with pytest.raises(kcache.Timeout):
            await a.get_or_set_begin("ab-async", lease_ms=5000, timeout=0.2)
        holder.release("ab-async", r.lease)  # kcached hands the lease to `a`
        await asyncio.sleep(0.3)
        assert not a._conn.leases  # released
        a.close()
    run(main())
    t0 = time.monotonic()
    assert third.get_or_set_begin("ab-async").lease
    assert time.monotonic() - t0 < T(1)


def test_get_or_set_data_in_redis(kcd, redis, client):
    assert client.get_or_set("dr", lambda: b"payload", ttl=77) == b"payload"
    assert stored_payload(redis.cmd("GET", data_key("kc:", "dr"))) == b"payload"
    assert 70 <= redis.cmd("TTL", data_key("kc:", "dr")) <= 77
