# SPDX-License-Identifier: MIT
"""Backends: a primary and replicas as real redis-server processes, pools,
read routing, failover of reads, node health and replica lag, checked through
client answers and the admin socket's per-node counters (`backends`).

The reads under load come from tests/conftest.py's ReadLoad: 10 connections
on one selector thread, every answer checked against the value pre-set; a
"failed read" is an error, a wrong value, a lost connection or no answer.

Every wait polls with a deadline of ten times the bound the configuration
implies (BOUND_* below, in seconds; wait_until scales them by
KCACHE_TEST_TIME_SCALE)."""

import time

import pytest

from conftest import (T, TIME_SCALE, ReadLoad, Topology, admin_json, err_code, node_of,
                      wait_replica_link, wait_until)
from fakeredis import LOADING, FakeRedis

CMD_TIMEOUT_MS = 500
INTERVAL_MS = 100           # [health] interval_ms: probes and lag heartbeats
HEALTH_TIMEOUT_MS = 250
RECONNECT_MAX_MS = 200
FAILURE_THRESHOLD = 3
RECOVERY_THRESHOLD = 2
MAX_LAG_MS = 300

# A node that stops answering is down after failure_threshold failed probes
# (one per interval, each failing after timeout_ms) or request timeouts.
BOUND_DOWN = (FAILURE_THRESHOLD * (INTERVAL_MS + HEALTH_TIMEOUT_MS) + CMD_TIMEOUT_MS) / 1000
# A node that answers again is up after a reconnect (backoff at most
# reconnect_max_ms) and recovery_threshold good probes.
BOUND_UP = (RECONNECT_MAX_MS + RECOVERY_THRESHOLD * (INTERVAL_MS + HEALTH_TIMEOUT_MS)) / 1000
# A replica falls out of rotation once its heartbeat is max_replica_lag_ms old,
# seen at the next heartbeat read.
BOUND_LAG = (MAX_LAG_MS + 2 * INTERVAL_MS) / 1000


def scaled_ms(ms):
    return int(ms * TIME_SCALE)


def backend_ini(extra=None):
    sections = {
        "redis": {"command_timeout_ms": scaled_ms(CMD_TIMEOUT_MS),
                  "connect_timeout_ms": scaled_ms(CMD_TIMEOUT_MS),
                  "reconnect_max_ms": RECONNECT_MAX_MS,
                  "max_replica_lag_ms": scaled_ms(1000)},
        "health": {"interval_ms": INTERVAL_MS, "timeout_ms": scaled_ms(HEALTH_TIMEOUT_MS),
                   "failure_threshold": FAILURE_THRESHOLD,
                   "recovery_threshold": RECOVERY_THRESHOLD},
        # debug logs every request: too much under a read load.
        "log": {"level": "info"},
    }
    for sec, kv in (extra or {}).items():
        sections.setdefault(sec, {}).update(kv)
    return sections


def background(elapsed_s):
    """The most commands kcached may send a node by itself in elapsed_s: one
    health probe and one heartbeat read per interval (if "requests" counts
    them), plus one of each in progress."""
    return 2 * (int(elapsed_s * 1000 / INTERVAL_MS) + 2)


class Counter:
    """A node's "requests" counter since a snapshot, and how much of it can
    only be client reads (above what kcached sends by itself)."""

    def __init__(self, topo, k, r):
        self.topo, self.k, self.port = topo, k, r.port
        self.t0 = time.monotonic()
        self.n0 = topo.node(k, r)["requests"]

    def delta(self):
        return self.topo.node(self.k, self.port)["requests"] - self.n0

    def reads(self):
        return self.delta() - background(time.monotonic() - self.t0)


def wait_in_rotation(topo, k, nodes, timeout=None):
    """Polls until the primary and every redis-server in nodes are up and
    (replicas) in rotation; returns the backends answer."""
    def ready():
        b = topo.backends(k)
        if node_of(b, topo.primary.port)["state"] != "up":
            return None
        for r in nodes:
            n = node_of(b, r.port)
            if n["state"] != "up" or not n["in_rotation"]:
                return None
        return b
    return wait_until(ready, timeout or 10 * (BOUND_UP + BOUND_LAG),
                      "primary up and replicas in rotation")


def wait_state(topo, k, r, state, timeout):
    return wait_until(lambda: (n := topo.node(k, r))["state"] == state and n, timeout,
                      f"{r.name if hasattr(r, 'name') else r} state {state}")


def assert_no_late_replies(k):
    b = admin_json(k, "backends")
    assert b["replies_after_deadline"] == 0, b
    s = admin_json(k, "stats")
    assert s["replies_after_deadline"] == 0, s


def check_load(load):
    assert not load.failures and not load.anomalies, load.describe_failures()


@pytest.fixture
def topo(harness):
    return Topology(harness)


# --------------------------------------------------------------------------
# The admin view.
# --------------------------------------------------------------------------

NODE_FIELDS = {"name", "role", "addr", "state", "since", "in_rotation", "pool_size", "connected",
               "inflight", "max_inflight", "requests", "replies", "errors", "timeouts",
               "errors_by_class", "latency_ewma_us", "latency_p99_us", "lag_ms", "state_changes",
               "probes", "probe_failures"}


def test_backends_describes_every_node(harness, topo):
    k = topo.kcached(ini=backend_ini({"redis": {"pool_size": 3, "replica_pool_size": 2}}))
    b = wait_in_rotation(topo, k, topo.replicas)
    assert b["read_from"] == "replica"
    assert b["primary"] == f"127.0.0.1:{topo.primary.port}"
    assert b["sentinel"] is None
    assert b["replies_after_deadline"] == 0
    assert len(b["nodes"]) == 3, b
    now = time.time()
    for n in b["nodes"]:
        assert NODE_FIELDS <= set(n), f"missing {NODE_FIELDS - set(n)} in {n!r}"
        # Unix seconds of the last state change: a moment ago, to the ms.
        assert now - 60 < n["since"] <= now + 1, (now, n)
        assert set(n["errors_by_class"]) >= {"conn", "timeout", "node", "readonly", "app"}, n
    p = node_of(b, topo.primary.port)
    assert p["role"] == "primary" and p["pool_size"] == 3
    assert p["name"] == f"primary 127.0.0.1:{topo.primary.port}"
    for r in topo.replicas:
        n = node_of(b, r.port)
        assert n["role"] == "replica" and n["pool_size"] == 2
    # Every pool connection opens.
    wait_until(lambda: all(n["connected"] == n["pool_size"] for n in topo.backends(k)["nodes"]),
               10 * BOUND_UP, "every pool connection connected")
    # Every node is probed, every interval_ms.
    wait_until(lambda: all(n["probes"] >= 3 for n in topo.backends(k)["nodes"]),
               10 * 4 * INTERVAL_MS / 1000, "3 probes of every node")
    # The replicas' lag is measured by the heartbeat.
    wait_until(lambda: all(node_of(topo.backends(k), r.port)["lag_ms"] is not None
                           for r in topo.replicas), 10 * BOUND_LAG, "replica lag measured")


# --------------------------------------------------------------------------
# 1, 2: a replica killed or frozen under read load: no failed read.
# --------------------------------------------------------------------------

def test_replica_killed_under_read_load(harness, topo):
    k = topo.kcached(ini=backend_ini())
    keys = topo.preset(k)
    wait_in_rotation(topo, k, topo.replicas)
    victim, other = topo.replicas
    with ReadLoad(k.sock, keys, conns=10) as load:
        load.wait_ok(200)
        vc = Counter(topo, k, victim)
        wait_until(lambda: vc.reads() >= 50, 10, "the victim replica to serve reads")
        oc = Counter(topo, k, other)
        t_kill = load.mark("kill -9 replica")
        victim.stop()

        # Keep reading for a few seconds after the kill, until kcached has
        # also marked the node down.
        def settled():
            return (time.monotonic() - t_kill >= 3 and load.ok_since(t_kill) >= 500
                    and topo.node(k, victim)["state"] == "down")
        wait_until(settled, 3 + 10 * BOUND_DOWN, "3 s of reads after the kill, node down")
        assert oc.reads() > 0
    load.stop()
    check_load(load)
    assert k.alive()
    assert_no_late_replies(k)


def test_replica_frozen_under_read_load(harness, topo):
    max_inflight = 50
    k = topo.kcached(ini=backend_ini({"redis": {"max_inflight_per_node": max_inflight}}))
    keys = topo.preset(k)
    wait_in_rotation(topo, k, topo.replicas)
    victim = topo.replicas[0]
    # One read in flight per connection: healthy nodes stay far below the cap
    # (a node past it is marked down, by design), while on the frozen node
    # the reads that timed out there, probes and heartbeats would pile up
    # without it.
    with ReadLoad(k.sock, keys, conns=10) as load:
        load.wait_ok(200)
        vc = Counter(topo, k, victim)
        wait_until(lambda: vc.reads() >= 50, 10, "the victim replica to serve reads")
        t_freeze = load.mark("SIGSTOP replica")
        victim.freeze()
        try:
            wait_state(topo, k, victim, "down", 10 * BOUND_DOWN)
            # Frozen for 10 s in all, reads going on.
            wait_until(lambda: time.monotonic() - t_freeze >= 10, 10 + 10 * BOUND_DOWN,
                       "10 s frozen")
            assert load.ok_since(t_freeze) > 0
            n = topo.node(k, victim)
            assert not n["in_rotation"], n
        finally:
            victim.thaw()
        load.mark("SIGCONT replica")
        wait_until(lambda: (n := topo.node(k, victim))["state"] == "up" and n["in_rotation"],
                   10 * (BOUND_UP + BOUND_LAG), "the thawed replica back in rotation")
        vc = Counter(topo, k, victim)
        wait_until(lambda: vc.reads() >= 50, 10, "the thawed replica to serve reads again")
    load.stop()
    check_load(load)
    n = topo.node(k, victim)
    assert n["max_inflight"] <= max_inflight, n
    assert_no_late_replies(k)


# --------------------------------------------------------------------------
# 3: replicas dead, primary dead.
# --------------------------------------------------------------------------

def test_both_replicas_dead_primary_serves_reads(harness, topo):
    k = topo.kcached(ini=backend_ini())
    keys = topo.preset(k)
    wait_in_rotation(topo, k, topo.replicas)
    for r in topo.replicas:
        r.stop()
    for r in topo.replicas:
        wait_state(topo, k, r, "down", 10 * BOUND_DOWN)
    pc = Counter(topo, k, topo.primary)
    c = k.client()
    for key, v in list(keys.items())[:100]:
        assert c.call("get", key) == (None, v), key
    assert pc.delta() >= 100
    assert k.alive()


def test_primary_dead_writes_fail_fast_reads_continue(harness, topo):
    k = topo.kcached(ini=backend_ini())
    keys = topo.preset(k)
    wait_in_rotation(topo, k, topo.replicas)
    c = k.client()
    writes = [("set", ["w", b"v"]), ("del", [["w"]]), ("mset", [{"w1": b"a", "w2": b"b"}]),
              ("expire", ["w", 100])]
    deadline_s = scaled_ms(CMD_TIMEOUT_MS) / 1000
    with ReadLoad(k.sock, keys, conns=10) as load:
        load.wait_ok(200)
        rcs = [Counter(topo, k, r) for r in topo.replicas]
        t_kill = load.mark("kill -9 primary")
        topo.primary.stop()
        seen, bad = [], []

        # (wait_until retries a predicate that raises: collect, assert after.)
        def write_round():
            for method, params in writes:
                t0 = time.monotonic()
                err, res = c.call(method, *params, timeout=10)
                dt = time.monotonic() - t0
                seen.append((method, err_code(err), round(dt, 3)))
                # An error, within the request deadline (plus this process's overhead).
                if err_code(err) not in ("UNAVAILABLE", "TIMEOUT") or dt > deadline_s + T(0.3):
                    bad.append((method, err, res, round(dt, 3)))
            return (time.monotonic() - t_kill >= 3
                    and topo.node(k, topo.primary)["state"] == "down")
        wait_until(write_round, 3 + 10 * BOUND_DOWN, "3 s of writes, primary down")
        assert not bad, f"writes with the primary dead: {bad[:10]} (all: {seen[:20]})"
        codes = sorted({code for _, code, _ in seen})
        print(f"{len(seen)} writes with the primary dead: {codes}, slowest answer "
              f"{max(dt for _, _, dt in seen) * 1e3:.1f} ms (deadline {deadline_s * 1e3:.0f} ms)")
        load.wait_ok(500, since=t_kill)
        assert all(rc.reads() > 0 for rc in rcs), "reads did not continue on both replicas"
    load.stop()
    check_load(load)
    assert_no_late_replies(k)


# --------------------------------------------------------------------------
# 4: a node restarted on the same port is used again.
# --------------------------------------------------------------------------

def test_restarted_replica_is_used_again(harness, topo):
    k = topo.kcached(ini=backend_ini())
    keys = topo.preset(k)
    wait_in_rotation(topo, k, topo.replicas)
    pid = k.pid
    victim = topo.replicas[0]
    victim.stop()
    wait_state(topo, k, victim, "down", 10 * BOUND_DOWN)
    victim.fixed_port = victim.port
    victim.start()
    wait_replica_link(victim)
    wait_until(lambda: (n := topo.node(k, victim))["state"] == "up" and n["in_rotation"],
               10 * (BOUND_UP + BOUND_LAG), "the restarted replica up and in rotation")
    vc = Counter(topo, k, victim)
    c = k.client()
    items = list(keys.items())

    wrong = []

    def used():
        for key, v in items[:50]:
            got = c.call("get", key)
            if got != (None, v):
                wrong.append((key, got))
        return vc.reads() >= 10
    wait_until(used, 10, "reads on the restarted replica")
    assert not wrong, wrong[:10]
    assert k.alive() and k.pid == pid


# --------------------------------------------------------------------------
# 5: a lagging replica leaves rotation and comes back.
# --------------------------------------------------------------------------

def test_lagging_replica_leaves_and_rejoins_rotation(harness, topo):
    k = topo.kcached(ini=backend_ini({"redis": {"max_replica_lag_ms": MAX_LAG_MS}}))
    keys = topo.preset(k, n=20)
    wait_in_rotation(topo, k, topo.replicas)
    wait_until(lambda: all(node_of(topo.backends(k), r.port)["lag_ms"] is not None
                           for r in topo.replicas), 10 * BOUND_LAG, "replica lag measured")
    lagger, other = topo.replicas
    # Cut its link: its copy of the heartbeat stops advancing.
    assert lagger.cmd("REPLICAOF", "NO", "ONE") == "OK"
    wait_until(lambda: ((n := topo.node(k, lagger))["in_rotation"] is False
                        and n["lag_ms"] is not None and n["lag_ms"] > MAX_LAG_MS),
               10 * BOUND_LAG, "the lagging replica out of rotation with lag_ms > 300")
    assert node_of(topo.backends(k), other.port)["in_rotation"], "the other replica left too"
    # Out of rotation: client reads go elsewhere.
    lc = Counter(topo, k, lagger)
    c = k.client()
    for key, v in keys.items():
        assert c.call("get", key) == (None, v), key
    for key, v in keys.items():
        assert c.call("get", key) == (None, v), key
    assert lc.reads() <= 0, f"{lc.delta()} requests to the out-of-rotation replica"
    assert lagger.cmd("REPLICAOF", "127.0.0.1", str(topo.primary.port)) == "OK"
    wait_replica_link(lagger)
    wait_until(lambda: topo.node(k, lagger)["in_rotation"] is True, 10,
               "the replica back in rotation once caught up")


# --------------------------------------------------------------------------
# 6: a replica answering -LOADING (a node-class error).
# --------------------------------------------------------------------------

def test_loading_replica_is_marked_down_reads_go_elsewhere(harness, request):
    fake = FakeRedis().start()  # +OK/+PONG to AUTH/SELECT/PING, -LOADING to the rest
    request.addfinalizer(fake.stop)
    topo = Topology(harness, n_replicas=1)
    k = topo.kcached(ini=backend_ini(), replica_ports=[topo.replicas[0].port, fake.port])
    keys = topo.preset(k)
    with ReadLoad(k.sock, keys, conns=10) as load:
        load.wait_ok(200)
        # The fake answers probes, so it may come back up and go down again:
        # poll often enough to see a "down" (it lasts recovery_threshold probes).
        wait_until(lambda: topo.node(k, fake.port)["state"] == "down", 10 * BOUND_DOWN,
                   "the -LOADING replica marked down", interval=0.005)
        t = time.monotonic()
        load.wait_ok(500, since=t)
    load.stop()
    check_load(load)
    n = topo.node(k, fake.port)
    assert n["state_changes"] >= 1, n
    assert k.alive()


def test_down_node_needs_recovery_probes_to_come_back(harness, request):
    """A node marked down is up again only after recovery_threshold probe
    successes in a row, one per interval_ms: a node that fails every command
    must not come back at reconnect speed (and flap)."""
    recovery = 3

    # Probes and kcached's own heartbeat reads succeed (the heartbeat is read
    # from the real primary: no lag, the fake stays in rotation); client
    # reads fail with -LOADING.
    topo = Topology(harness, n_replicas=1)

    def get(args):
        if not (args[1:2] and args[1].startswith(b"kcache:hb:")):
            return LOADING
        v = topo.primary.cmd("GET", args[1])
        return b"$-1\r\n" if v is None else b"$%d\r\n%s\r\n" % (len(v), v)
    fake = FakeRedis(replies={"GET": get}).start()
    request.addfinalizer(fake.stop)
    k = topo.kcached(ini=backend_ini({"health": {"recovery_threshold": recovery}}),
                     replica_ports=[topo.replicas[0].port, fake.port])
    keys = topo.preset(k, n=20)
    min_down = (recovery - 1) * INTERVAL_MS / 1000  # the first probe may be at once
    with ReadLoad(k.sock, keys, conns=10) as load:
        load.wait_ok(200)
        wait_until(lambda: topo.node(k, fake.port)["state_changes"] >= 1, 10 * BOUND_DOWN,
                   "the -LOADING replica marked down")
        assert fake.count("GET") > 0
        # Count state changes over a 2 s window of reads (a measurement, not a
        # wait): each down period lasts at least min_down, so there can be at
        # most one down-and-up cycle per min_down.
        t0, c0 = time.monotonic(), topo.node(k, fake.port)["state_changes"]
        wait_until(lambda: time.monotonic() - t0 >= 2, 10, "2 s of reads")
        t1, n = time.monotonic(), topo.node(k, fake.port)
    load.stop()
    check_load(load)
    changes = n["state_changes"] - c0
    limit = 2 * ((t1 - t0) / min_down + 1)
    assert changes <= limit, (f"{changes} state changes in {t1 - t0:.2f}s: faster than one "
                              f"down-up cycle per {recovery} probes {INTERVAL_MS} ms apart "
                              f"(at most {limit:.0f}); node: {n}")


# --------------------------------------------------------------------------
# -READONLY on a write: UNAVAILABLE, not retried.
# --------------------------------------------------------------------------

def test_readonly_write_answers_unavailable(harness, request):
    fake = FakeRedis(default=b"$-1\r\n",
                     replies={"SET": b"-READONLY You can't write against a read only replica.\r\n"})
    fake.start()
    request.addfinalizer(fake.stop)
    k = harness.kcached(redis_port=fake.port, ini=backend_ini())
    c = k.client()
    t0 = time.monotonic()
    err, res = c.call("set", "rokey", b"v", timeout=10)
    dt = time.monotonic() - t0
    assert err_code(err) == "UNAVAILABLE", (err, res)
    assert dt <= scaled_ms(CMD_TIMEOUT_MS) / 1000 + T(0.3)
    # Writes are never retried.
    assert fake.count("SET", "kc:rokey") <= 1
    assert k.alive()


# --------------------------------------------------------------------------
# 8: read_from and the consistency option.
# --------------------------------------------------------------------------

def test_read_from_primary(harness, topo):
    k = topo.kcached(ini=backend_ini({"redis": {"read_from": "primary"}}))
    keys = topo.preset(k, n=50)
    b = wait_in_rotation(topo, k, topo.replicas)
    assert b["read_from"] == "primary"
    pc = Counter(topo, k, topo.primary)
    rcs = [Counter(topo, k, r) for r in topo.replicas]
    c = k.client()
    for _ in range(4):
        for key, v in keys.items():
            assert c.call("get", key) == (None, v), key
    assert pc.delta() >= 200
    for rc in rcs:
        assert rc.reads() <= 0, f"a replica got {rc.delta()} requests with read_from=primary"


def test_read_from_any(harness, topo):
    k = topo.kcached(ini=backend_ini({"redis": {"read_from": "any"}}))
    keys = topo.preset(k, n=50)
    wait_in_rotation(topo, k, topo.replicas)
    assert topo.backends(k)["read_from"] == "any"
    ctrs = [Counter(topo, k, r) for r in [topo.primary] + topo.replicas]
    c = k.client()
    for _ in range(6):
        for key, v in keys.items():
            assert c.call("get", key) == (None, v), key
    # 300 reads, ties round-robin: every node gets a fair share.
    for ctr in ctrs:
        assert ctr.reads() >= 30, f"node {ctr.port} got {ctr.delta()} of 300 reads"


def test_consistency_option(harness, topo):
    k = topo.kcached(ini=backend_ini())
    keys = topo.preset(k, n=50)
    wait_in_rotation(topo, k, topo.replicas)
    c = k.client()
    items = list(keys.items())

    # Default (read_from=replica): reads go to the replicas.
    pc = Counter(topo, k, topo.primary)
    rcs = [Counter(topo, k, r) for r in topo.replicas]
    for key, v in items:
        assert c.call("get", key) == (None, v), key
    assert pc.reads() <= 0, f"the primary got {pc.delta()} requests for replica reads"
    assert sum(rc.delta() for rc in rcs) >= 50

    # {"consistency": "primary"}: to the primary, for every read method.
    opt = {"consistency": "primary"}
    pc = Counter(topo, k, topo.primary)
    rcs = [Counter(topo, k, r) for r in topo.replicas]
    for key, v in items:
        assert c.call("get", key, opt) == (None, v), key
    assert c.call("mget", [items[0][0], "nope"], opt) == (None, [items[0][1], None])
    assert c.call("exists", [items[0][0], "nope"], opt) == (None, 1)
    err, ttl = c.call("ttl", items[0][0], opt)
    assert err is None and ttl > 0
    assert pc.delta() >= 53
    for rc in rcs:
        assert rc.reads() <= 0, f"a replica got {rc.delta()} requests for primary reads"

    # Anything else is a bad request, and so is the option on a write.
    for method, params in (("get", ["k"]), ("mget", [["k"]]), ("exists", [["k"]]), ("ttl", ["k"])):
        err, res = c.call(method, *params, {"consistency": "bogus"})
        assert err_code(err) == "BAD_REQUEST", (method, err, res)
    err, res = c.call("set", "k", b"v", opt)
    assert err_code(err) == "BAD_REQUEST", (err, res)
    # The connection is still fine.
    assert c.call("get", items[0][0]) == (None, items[0][1])

