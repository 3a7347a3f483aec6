# SPDX-License-Identifier: MIT
"""The near cache ([cache] near_cache_bytes): hot plain-key values kept in
kcached's memory and invalidated by Redis's client-side caching.

Every correctness rule is checked by an outside actor, and after each the
next read through kcached must return Redis's current value:

  * redis-cli SET / DEL / FLUSHDB / FLUSHALL on the primary;
  * CLIENT KILL of the subscriber (the redirect breaks) or of the tracking
    connection: kcached flushes and reads from Redis until tracking is back;
  * a frozen path to Redis (a relay stopped with SIGSTOP): the heartbeat
    through the subscriber is missed and kcached stops serving from memory;
  * an invalidation that arrives while the fill's GET is out (the relay holds
    the GET's reply): the reply is served but not cached;
  * a key expiring in Redis, also when the fill's reply was slow: the entry
    never outlives the key;
  * a lagging replica with read_from=replica: fills come from the primary;
  * the primary changes (admin reload to another Redis);
  * namespace, tag and pattern invalidations, admin flush and this kcached's
    own writes evict at once, also with the invalidations held in the relay.

Also: hits are really served from memory (Redis's commandstats do not move),
{"near": false} bypasses it, and memory stays within near_cache_bytes.

The relay (RELAY_SRC) is a separate Python process so that SIGSTOP freezes
it: kcached's primary (or a replica's replication link) points at it. On
"hold" it keeps the bytes Redis sends on every connection but the
subscriber's (the one that sent SUBSCRIBE) until "release"; on "hold-sub"
the subscriber's only (invalidations are late).
"""

import os
import re
import select
import signal
import subprocess
import sys
import time

import pytest

from conftest import T, admin_json, node_of, wait_replica_link, wait_until

NEAR_BYTES = 1 << 20
HB_MS = 100  # [cache] near_heartbeat_ms where the heartbeat is what is tested

# failure_threshold high: a frozen or held path must be noticed by the near
# cache's heartbeat, not by the backend marking the primary down first.
NEAR_INI = {"cache": {"near_cache_bytes": NEAR_BYTES, "near_heartbeat_ms": HB_MS},
            "health": {"failure_threshold": 100}}


def near_ini(**cache):
    ini = {s: dict(kv) for s, kv in NEAR_INI.items()}
    ini["cache"].update(cache)
    return ini


def rkey(key):
    return b"kc:" + (key.encode() if isinstance(key, str) else key)


# --------------------------------------------------------------------------
# Helpers.
# --------------------------------------------------------------------------

def near(c):
    """The RPC stats "near" map."""
    err, res = c.call("stats")
    assert err is None, f"stats: {err!r}"
    return res["near"]


def wait_active(c, timeout=5):
    wait_until(lambda: near(c)["active"], timeout, "near cache active (tracking established)")


def poll(pred, timeout, what):
    """wait_until without swallowing assertion errors raised by pred."""
    deadline = time.monotonic() + T(timeout)
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {T(timeout):.2f}s waiting for {what}")
        time.sleep(0.005)


def get(c, key, opts=None):
    err, res = c.call("get", key) if opts is None else c.call("get", key, opts)
    assert err is None, f"get {key!r}: {err!r}"
    return res


def warm(c, key, expect, timeout=5):
    """Reads key until one read is served from memory (near hits grow); every
    answer on the way must be expect."""
    def hit():
        h = near(c)["hits"]
        v = get(c, key)
        assert v == expect, f"get {key!r} answered {v!r}, want {expect!r}"
        return near(c)["hits"] > h
    poll(hit, timeout, f"a near-cache hit on {key!r}")


def cmd_calls(r, name):
    """calls of one command in Redis's INFO commandstats (0 before the first)."""
    info = r.cmd("INFO", "commandstats").decode()
    m = re.search(rf"^cmdstat_{name}:calls=(\d+)", info, re.M)
    return int(m.group(1)) if m else 0


def redis_cli(r, *args):
    """An outside actor: one redis-cli process against Redis r."""
    argv = [a.decode() if isinstance(a, bytes) else str(a) for a in args]
    out = subprocess.run(["redis-cli", "-p", str(r.port)] + argv,
                         capture_output=True, timeout=T(10))
    assert out.returncode == 0, out
    return out.stdout.strip()


def client_list(r):
    out = []
    for line in r.cmd("CLIENT", "LIST").decode().splitlines():
        out.append(dict(f.split("=", 1) for f in line.split() if "=" in f))
    return out


def subscriber_ids(r):
    """Ids of the connections subscribed to __redis__:invalidate: the ones
    kcached's tracking connection redirects its invalidations to (other
    kcached subscribers, e.g. for namespace notices, are not)."""
    clients = client_list(r)
    subs = {int(c["id"]) for c in clients
            if int(c.get("sub", 0)) > 0 or int(c.get("psub", 0)) > 0 or c.get("cmd") == "subscribe"}
    return sorted({int(c["redir"]) for c in clients if "t" in c.get("flags", "")} & subs)


def tracking_ids(r):
    """Ids of the connections with CLIENT TRACKING on (flag t)."""
    return [int(c["id"]) for c in client_list(r) if "t" in c.get("flags", "")]


RELAY_SRC = r'''
import socket, sys, threading
up_port = int(sys.argv[1])
cond = threading.Condition()
state = {"hold": ""}  # "others": all but the subscriber; "sub": the subscriber only

def pump(src, dst, conn, upward):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            if upward:
                if b"SUBSCRIBE" in data.upper():
                    conn["sub"] = True
            else:
                with cond:
                    while state["hold"] == ("sub" if conn["sub"] else "others"):
                        cond.wait()
            dst.sendall(data)
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

def serve(ls):
    while True:
        c, _ = ls.accept()
        try:
            u = socket.create_connection(("127.0.0.1", up_port))
        except OSError:
            c.close()
            continue
        for s in (c, u):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = {"sub": False}
        threading.Thread(target=pump, args=(c, u, conn, True), daemon=True).start()
        threading.Thread(target=pump, args=(u, c, conn, False), daemon=True).start()

ls = socket.socket()
ls.bind(("127.0.0.1", 0))
ls.listen(128)
threading.Thread(target=serve, args=(ls,), daemon=True).start()
print("ready", ls.getsockname()[1], flush=True)
for line in sys.stdin:
    cmd = line.strip()
    with cond:
        state["hold"] = {"hold": "others", "hold-sub": "sub"}.get(cmd, "")
        cond.notify_all()
    print("ok", cmd, flush=True)
'''


class Relay:
    """The test's TCP relay in front of a Redis port (see RELAY_SRC)."""

    def __init__(self, tmp, up_port):
        path = os.path.join(tmp, "relay.py")
        with open(path, "w") as f:
            f.write(RELAY_SRC)
        self.proc = subprocess.Popen([sys.executable, path, str(up_port)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.buf = b""
        line = self._line()
        assert line.startswith("ready "), line
        self.port = int(line.split()[1])

    def _line(self, timeout=10):
        deadline = time.monotonic() + T(timeout)
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            r, _, _ = select.select([fd], [], [], max(0, left))
            assert r, "the relay does not answer"
            data = os.read(fd, 4096)
            assert data, "the relay exited"
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def _cmd(self, cmd):
        self.proc.stdin.write(cmd.encode() + b"\n")
        self.proc.stdin.flush()
        assert self._line() == "ok " + cmd

    def hold(self):
        """Redis's bytes to everyone but the subscriber wait in the relay."""
        self._cmd("hold")

    def hold_sub(self):
        """Redis's bytes to the subscriber (invalidations, heartbeats) wait in the relay."""
        self._cmd("hold-sub")

    def release(self):
        self._cmd("release")

    def _states(self):
        out = []
        for t in os.listdir(f"/proc/{self.proc.pid}/task"):
            with open(f"/proc/{self.proc.pid}/task/{t}/stat") as f:
                out.append(f.read().rsplit(")", 1)[1].split()[0])
        return out

    def freeze(self):
        """SIGSTOP, and wait until every thread has stopped: on a loaded
        machine a thread may forward bytes for a while after kill() returns."""
        os.kill(self.proc.pid, signal.SIGSTOP)
        wait_until(lambda: all(s == "T" for s in self._states()), 5, "the relay to stop")

    def thaw(self):
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)  # ends a stopped process too
        self.proc.wait(timeout=T(10))


@pytest.fixture
def relays(harness):
    started = []

    def start(up_port):
        r = Relay(harness.tmp, up_port)
        started.append(r)
        return r
    yield start
    for r in started:
        r.stop()


@pytest.fixture
def kn(harness, redis):
    """kcached with the near cache on, tracking established."""
    k = harness.kcached(redis, ini=NEAR_INI)
    wait_active(k.client())
    return k


@pytest.fixture
def c(kn):
    return kn.client()


# --------------------------------------------------------------------------
# Configuration, hits, bypass, stats.
# --------------------------------------------------------------------------

def test_off_by_default(harness, redis):
    k = harness.kcached(redis)
    c = k.client()
    assert c.ok("set", "a", b"1") is True
    for _ in range(5):
        assert get(c, "a") == b"1"
    st = near(c)
    assert st["active"] is False and st["hits"] == 0 and st["entries"] == 0, st
    adm = admin_json(k, "stats")["cache"]["near"]
    assert adm["enabled"] is False and adm["capacity_bytes"] == 0, adm
    assert subscriber_ids(redis) == [] and tracking_ids(redis) == []


def test_hits_served_from_memory(kn, c, redis):
    assert c.ok("set", "hot", b"value") is True
    warm(c, "hot", b"value")
    st0, calls0 = near(c), cmd_calls(redis, "get")
    for _ in range(50):
        assert get(c, "hot") == b"value"
    st1 = near(c)
    assert st1["hits"] - st0["hits"] == 50, (st0, st1)
    assert cmd_calls(redis, "get") == calls0, "hits went to Redis"
    assert st1["entries"] >= 1 and 0 < st1["bytes"] <= NEAR_BYTES, st1
    # The admin socket's JSON has the same counters, and the configuration.
    adm = admin_json(kn, "stats")["cache"]["near"]
    assert adm["enabled"] is True and adm["active"] is True, adm
    assert adm["capacity_bytes"] == NEAR_BYTES, adm
    assert adm["hits"] >= st1["hits"] and adm["entries"] == st1["entries"], (adm, st1)
    for f in ("misses", "evictions", "invalidations", "flushes", "bytes", "fills",
              "fills_dropped"):
        assert isinstance(adm[f], int), (f, adm)


def test_near_false_and_consistency_bypass(kn, c, redis):
    assert c.ok("set", "b", b"v") is True
    warm(c, "b", b"v")
    h0, calls0 = near(c)["hits"], cmd_calls(redis, "get")
    for _ in range(20):
        assert get(c, "b", {"near": False}) == b"v"
    for _ in range(5):
        assert get(c, "b", {"consistency": "primary"}) == b"v"
    assert cmd_calls(redis, "get") - calls0 == 25
    assert near(c)["hits"] == h0
    # {"near": false} reads Redis whatever the memory holds.
    redis_cli(redis, "SET", rkey("b"), "w")
    assert get(c, "b", {"near": False}) == b"w"


# --------------------------------------------------------------------------
# Outside writers on the primary.
# --------------------------------------------------------------------------

def test_hits_serve_compressed_schema_tagged_and_foreign_values(kn, c, redis):
    """The near cache keeps values decoded: a compressed value comes back
    whole from memory, a schema tag is still checked on every hit, and a
    value another client wrote (no envelope) is served as it is."""
    big = b"abcd" * 4096  # 16 KiB, stored compressed
    assert c.ok("set", "z", big, {"schema": "v1"}) is True
    assert len(redis.cmd("GET", rkey("z"))) < len(big) // 4, "stored uncompressed"
    warm(c, "z", big)
    h = near(c)["hits"]
    assert get(c, "z", {"schema": "v1"}) == big
    assert get(c, "z", {"schema": "v2"}) is None  # another model: a miss
    assert get(c, "z") == big
    assert near(c)["hits"] == h + 3, "served from Redis, not from memory"
    redis_cli(redis, "SET", rkey("foreign"), "plain-bytes")
    warm(c, "foreign", b"plain-bytes")
    assert get(c, "foreign", {"schema": "v1"}) is None


def test_outside_set_del_flushdb_flushall(kn, c, redis):
    assert c.ok("set", "k", b"v1") is True
    for i in range(5):
        warm(c, "k", b"v1" if i == 0 else b"x%d" % (i - 1))
        redis_cli(redis, "SET", rkey("k"), "x%d" % i)
        # The invalidation travels on its own connection: it may land just
        # after redis-cli's answer, so the read polls (no stale value for long).
        poll(lambda: get(c, "k") == b"x%d" % i, 5, f"k to read x{i}")
    warm(c, "k", b"x4")
    redis_cli(redis, "DEL", rkey("k"))
    poll(lambda: get(c, "k") is None, 5, "k to read as deleted")

    for cmd in ("FLUSHDB", "FLUSHALL"):
        keys = [f"f{i}" for i in range(5)]
        for key in keys:
            assert c.ok("set", key, key.encode()) is True
        for key in keys:
            warm(c, key, key.encode())
        st0 = near(c)
        assert st0["entries"] >= 5, st0
        assert redis_cli(redis, cmd) == b"OK"
        for key in keys:
            poll(lambda: get(c, key) is None, 5, f"{key} after {cmd}")
        st1 = near(c)
        assert st1["flushes"] > st0["flushes"] and st1["invalidations"] > st0["invalidations"]
        assert st1["active"] is True, st1


def test_own_writes_never_followed_by_stale_read(kn, c, redis):
    other = kn.client()
    assert c.ok("set", "w", b"v0") is True
    for i in range(1, 21):
        warm(c, "w", b"v%d" % (i - 1))
        assert c.ok("set", "w", b"v%d" % i) is True
        assert get(c, "w") == b"v%d" % i
        assert get(other, "w") == b"v%d" % i
    warm(c, "w", b"v20")
    assert c.ok("mset", {"w": b"m", "w2": b"m2"}) is True
    assert get(other, "w") == b"m"
    warm(c, "w", b"m")
    assert c.ok("del", ["w"]) == 1
    assert get(other, "w") is None
    assert c.ok("set", "w", b"e") is True
    warm(c, "w", b"e")
    assert c.ok("invalidate", {"keys": ["w"]}) == {"deleted": 1}
    assert get(other, "w") is None
    # A lease fill (get_or_set, then fill) is a write of this kcached too.
    assert c.ok("set", "w", b"f0", {"ttl_ms": 200}) is True
    warm(c, "w", b"f0")
    poll(lambda: redis.cmd("EXISTS", rkey("w")) == 0, 5, "w to expire in Redis")
    res = c.ok("get_or_set", "w")
    assert "lease" in res, res
    assert c.ok("fill", "w", res["lease"], b"f1") is True
    assert get(other, "w") == b"f1"


def test_invalidations_and_flush_evict_at_once(kn, c, redis):
    assert c.ok("set", "tagged", b"t", {"tags": ["tg"]}) is True
    assert c.ok("set", "plain", b"p") is True
    warm(c, "tagged", b"t")
    warm(c, "plain", b"p")
    f0 = near(c)["flushes"]
    res = c.ok("invalidate", {"tags": ["tg"]})
    assert res == {"deleted": 1}, res
    st = near(c)
    # Flushed when sent and again before the answer (a miss read in between
    # may have planted an old value).
    assert st["flushes"] >= f0 + 2 and st["entries"] == 0, st
    assert get(c, "tagged") is None
    assert get(c, "plain") == b"p"

    warm(c, "plain", b"p")
    f0 = near(c)["flushes"]
    assert c.ok("invalidate", {"pattern": "pla*"}) == {"deleted": 1}
    st = near(c)
    assert st["flushes"] >= f0 + 2 and st["entries"] == 0, st
    assert get(c, "plain") is None

    assert c.ok("set", "plain", b"p2") is True
    warm(c, "plain", b"p2")
    f0 = near(c)["flushes"]
    assert "generation" in c.ok("invalidate", {"namespace": "nsx"})
    st = near(c)
    assert st["flushes"] > f0 and st["entries"] == 0, st

    warm(c, "plain", b"p2")
    f0 = near(c)["flushes"]
    assert kn.admin("flush nsx").startswith("ok"), "admin flush"
    st = near(c)
    assert st["flushes"] > f0 and st["entries"] == 0, st
    assert get(c, "plain") == b"p2"


def test_own_writes_evict_without_waiting_for_tracking(harness, redis, relays):
    """With the invalidations held back, only kcached's own eviction keeps
    a write of this kcached from being followed by a stale read."""
    relay = relays(redis.port)
    # The hold lasts over a second (expire): the heartbeat must not miss meanwhile.
    k = harness.kcached(redis_port=relay.port, ini=near_ini(near_heartbeat_ms=2500))
    c = k.client()
    wait_active(c, 10)
    assert c.ok("set", "a", b"v1") is True
    assert c.ok("set", "t", b"tv", {"tags": ["tg"]}) is True
    assert c.ok("set", "p", b"pv") is True
    warm(c, "a", b"v1")
    warm(c, "t", b"tv")
    warm(c, "p", b"pv")
    relay.hold_sub()
    try:
        assert c.ok("set", "a", b"v2") is True
        assert get(c, "a") == b"v2"
        warm(c, "a", b"v2")
        assert c.ok("mset", {"a": b"v3"}) is True
        assert get(c, "a") == b"v3"
        warm(c, "a", b"v3")
        assert c.ok("del", ["a"]) == 1
        assert get(c, "a") is None
        assert c.ok("set", "a", b"v4", {"ttl": 100}) is True
        warm(c, "a", b"v4")
        assert c.ok("expire", "a", 1) is True  # the entry said 100 s
        gone_at = time.monotonic() + 1.005
        poll(lambda: time.monotonic() > gone_at, 5, "a to expire in Redis")
        assert get(c, "a") is None
        assert c.ok("invalidate", {"tags": ["tg"]}) == {"deleted": 1}
        assert get(c, "t") is None
        assert c.ok("invalidate", {"pattern": "p*"}) == {"deleted": 1}
        assert get(c, "p") is None
        assert near(c)["active"] is True, "the hold outlasted the heartbeat: test too slow"
    finally:
        relay.release()


def lazy_expiry_redis(harness):
    """A Redis that deletes an expired key only when it is touched: no
    invalidation comes at expiry, so only the entry's own PTTL bound can
    keep kcached from serving it."""
    r = harness.redis(extra_args=["--enable-debug-command", "yes"])
    assert r.cmd("DEBUG", "SET-ACTIVE-EXPIRE", "0") == "OK"
    return r


def test_entry_never_outlives_redis_expiry(harness):
    redis = lazy_expiry_redis(harness)
    k = harness.kcached(redis, ini=NEAR_INI)
    c = k.client()
    wait_active(c)
    assert c.ok("set", "exp", b"soon", {"ttl_ms": 300}) is True
    expired_at = time.monotonic() + 0.300 + 0.005  # Redis's expiry, at the latest
    warm(c, "exp", b"soon")
    n_after, seen_nil = 0, False
    while n_after < 20:
        assert time.monotonic() < expired_at + T(5)
        after = time.monotonic() > expired_at
        v = get(c, "exp")
        if after:
            assert v is None, "kcached served the cached value after the key expired in Redis"
            n_after += 1
        elif seen_nil:
            assert v is None, "the value came back after a nil"
        else:
            assert v in (b"soon", None), v
        seen_nil = seen_nil or v is None
    assert redis.cmd("GET", rkey("exp")) is None


def test_near_cache_ttl_bounds_trust(harness, redis):
    k = harness.kcached(redis, ini=near_ini(near_cache_ttl_ms=200))
    c = k.client()
    wait_active(c)
    assert c.ok("set", "t", b"v") is True
    warm(c, "t", b"v")
    f0 = near(c)["fills"]
    # No invalidation comes, yet the entry is read from Redis again after 200 ms.
    poll(lambda: get(c, "t") == b"v" and near(c)["fills"] > f0, 3,
         "a refill after near_cache_ttl_ms")


def test_memory_bounded_with_evictions(harness, redis):
    cap = 64 * 1024
    k = harness.kcached(redis, ini=near_ini(near_cache_bytes=cap))
    c = k.client()
    wait_active(c)
    n, val = 2000, b"x" * 200
    args = []
    for i in range(n):
        args += [rkey("m%05d" % i), val + b"%05d" % i]
    assert redis.cmd("MSET", *args) == "OK"
    for rnd in range(2):
        ids = [(i, c.request("get", ["m%05d" % i])) for i in range(n)]
        for i, msgid in ids:
            err, res = c.recv_response(msgid)
            assert err is None and res == val + b"%05d" % i, (i, err, res)
    st = near(c)
    assert st["bytes"] <= cap, st
    assert st["evictions"] > 0 and st["entries"] > 0, st
    assert st["entries"] * 200 < cap, st
    adm = admin_json(k, "stats")["cache"]["near"]
    assert adm["bytes"] <= adm["capacity_bytes"] == cap, adm


# --------------------------------------------------------------------------
# Tracking breaks: killed connections, a frozen path, the primary changes.
# --------------------------------------------------------------------------

@pytest.mark.parametrize("victim", ["subscriber", "tracking"])
def test_killed_connection_flushes_then_tracking_returns(kn, c, redis, victim):
    assert c.ok("set", "kk", b"v1") is True
    warm(c, "kk", b"v1")
    ids = subscriber_ids(redis) if victim == "subscriber" else tracking_ids(redis)
    assert len(ids) == 1, client_list(redis)
    f0 = near(c)["flushes"]
    assert redis_cli(redis, "CLIENT", "KILL", "ID", ids[0]) == b"1"
    redis_cli(redis, "SET", rkey("kk"), "v2")
    assert get(c, "kk") == b"v2"
    assert near(c)["flushes"] > f0
    # Tracking comes back on new connections, and works.
    wait_active(c)
    new = subscriber_ids(redis) if victim == "subscriber" else tracking_ids(redis)
    assert len(new) == 1 and new != ids, (ids, new)
    warm(c, "kk", b"v2")
    redis_cli(redis, "SET", rkey("kk"), "v3")
    assert get(c, "kk") == b"v3"


def test_frozen_subscriber_path_heartbeat(harness, redis, relays):
    relay = relays(redis.port)
    k = harness.kcached(redis_port=relay.port, ini=NEAR_INI)
    c = k.client()
    wait_active(c)
    assert c.ok("set", "fz", b"v1") is True
    warm(c, "fz", b"v1")
    relay.freeze()
    try:
        # The invalidation of this write waits in the frozen relay.
        assert redis.cmd("SET", rkey("fz"), "v2") == "OK"
        t0 = time.monotonic()
        poll(lambda: near(c)["active"] is False, 3, "near cache inactive after heartbeat misses")
        took = time.monotonic() - t0
        st = near(c)
        assert st["entries"] == 0, st
        assert "heartbeat missed" in k.log_text(), "flushed for another reason than the heartbeat"
        assert took < T(2.0), f"noticed after {took:.3f}s with near_heartbeat_ms {HB_MS}"
    finally:
        relay.thaw()
    # Resumed: reads answer the current value (after errors while the pool recovers).
    answers = []

    def current():
        err, res = c.call("get", "fz")
        answers.append((err, res))
        return err is None
    poll(current, 10, "a read through the thawed relay")
    assert all(res == b"v2" for err, res in answers if err is None), answers
    wait_active(c, 10)
    warm(c, "fz", b"v2")


def test_primary_change_flushes(harness):
    a, b = harness.redis(), harness.redis()
    a.cmd("SET", rkey("pc"), "on-a")
    b.cmd("SET", rkey("pc"), "on-b")
    k = harness.kcached(a, ini=NEAR_INI)
    c = k.client()
    wait_active(c)
    warm(c, "pc", b"on-a")
    k.sections["redis"]["primary"] = f"127.0.0.1:{b.port}"
    k.write_ini()
    answer = k.admin("reload")
    assert answer.startswith("ok"), answer
    # Until the new primary is connected reads may fail; none may answer on-a.
    answers = []

    def read():
        answers.append(c.call("get", "pc"))
        return answers[-1][0] is None
    poll(read, 5, "a read from the new primary")
    assert all(res == b"on-b" for err, res in answers if err is None), \
        f"served the old primary's value after the primary changed: {answers}"
    wait_active(c)
    warm(c, "pc", b"on-b")
    redis_cli(b, "SET", rkey("pc"), "on-b2")
    assert get(c, "pc") == b"on-b2"


# --------------------------------------------------------------------------
# Fills: races, expiry, replicas.
# --------------------------------------------------------------------------

def held_get(c, redis, relay, key):
    """Sends get key with Redis's replies held in the relay; returns its
    msgid once Redis has executed the fill's MULTI ... EXEC."""
    e0 = cmd_calls(redis, "exec")
    relay.hold()
    msgid = c.request("get", [key])
    poll(lambda: cmd_calls(redis, "exec") > e0, 5, "Redis to execute the fill")
    return msgid


# A held reply must not look like a dead primary: heartbeat and command
# timeouts well above the hold.
SLOW_INI = near_ini(near_heartbeat_ms=1000)


def test_fill_race_invalidation_during_get(harness, redis, relays):
    relay = relays(redis.port)
    k = harness.kcached(redis_port=relay.port, ini=SLOW_INI)
    c = k.client()
    wait_active(c)
    assert redis.cmd("SET", rkey("race"), "old") == "OK"
    st0 = near(c)
    msgid = held_get(c, redis, relay, "race")
    try:
        assert redis.cmd("SET", rkey("race"), "new") == "OK"
        poll(lambda: near(c)["invalidations"] > st0["invalidations"], 5,
             "the invalidation to reach kcached while the GET's reply is held")
    finally:
        relay.release()
    assert c.recv_response(msgid) == (None, b"old")  # served ...
    st1 = near(c)
    assert st1["fills_dropped"] > st0["fills_dropped"], st1  # ... not kept
    assert get(c, "race") == b"new"
    warm(c, "race", b"new")


def test_slow_fill_never_outlives_redis_expiry(harness, relays):
    redis = lazy_expiry_redis(harness)
    relay = relays(redis.port)
    k = harness.kcached(redis_port=relay.port, ini=SLOW_INI)
    c = k.client()
    wait_active(c)
    assert redis.cmd("SET", rkey("sx"), "short", "PX", 700) == "OK"
    expired_at = time.monotonic() + 0.700 + 0.005
    msgid = held_get(c, redis, relay, "sx")
    try:
        # The fill's PTTL (about 700) is measured at the GET; its reply
        # reaches kcached 400 ms later.
        poll(lambda: time.monotonic() > expired_at - 0.3, 5, "time to pass")
    finally:
        relay.release()
    assert c.recv_response(msgid) == (None, b"short")
    poll(lambda: time.monotonic() > expired_at, 5, "the key's expiry in Redis")
    assert get(c, "sx") is None, \
        "near entry outlived the key: its expiry counts from the reply, not from the GET"
    assert redis.cmd("GET", rkey("sx")) is None


def test_lagging_replica_never_planted(harness, relays):
    primary = harness.redis()
    relay = relays(primary.port)
    replica = harness.redis(replicaof=relay.port)
    wait_replica_link(replica)
    k = harness.kcached(primary, ini={
        **near_ini(),
        "redis": {"replicas": f"127.0.0.1:{replica.port}", "read_from": "replica",
                  "max_replica_lag_ms": 600000}})
    c = k.client()
    wait_active(c)
    wait_until(lambda: node_of(admin_json(k, "backends"), replica.port)["in_rotation"], 10,
               "the replica in kcached's read rotation")
    assert primary.cmd("SET", rkey("lag"), "v1") == "OK"
    wait_until(lambda: replica.cmd("GET", rkey("lag")) == b"v1", 5, "replication of v1")
    relay.freeze()  # replication stops: the replica lags
    try:
        assert primary.cmd("SET", rkey("lag"), "v2") == "OK"
        assert replica.cmd("GET", rkey("lag")) == b"v1", "the replica does not lag"
        assert get(c, "lag", {"near": False}) == b"v1", "reads do not go to the lagging replica"
        warm(c, "lag", b"v2")
        for _ in range(10):
            assert get(c, "lag") == b"v2"
        assert replica.cmd("GET", rkey("lag")) == b"v1"
    finally:
        relay.thaw()
