# SPDX-License-Identifier: MIT
"""get_or_set / fill / release: one loader per cold key, within one kcached
and across two kcached sharing one Redis; leases passing on when the holder
disconnects, releases or lets the lease expire; writes during a load revoking
the lease; the stale window. Every test inspects Redis directly, under a
key_prefix full of glob characters (app*[1]:)."""

import time

import pytest

from conftest import (Inflight, T, assert_healthy, cache_stats, data_key, err_code,
                      gen_key, meta_base, stored_payload, wait_until)

PREFIX = "app*[1]:"
INI = {"cache": {"key_prefix": PREFIX}}


@pytest.fixture
def kcd(harness, redis):
    return harness.kcached(redis, ini=INI)


def totals(c):
    return cache_stats(c)["totals"]


def rkey(key):
    return data_key(PREFIX, key)


def lease_of(res):
    assert isinstance(res, dict) and set(res) == {"lease"}, f"expected a lease, got {res!r}"
    assert isinstance(res["lease"], str) and res["lease"], res
    return res["lease"]


def split_answers(answers):
    """(leases, values, errors) of Inflight.answered() entries."""
    leases, values, errors = [], [], []
    for c, m, tag, err, res in answers:
        if err is not None:
            errors.append((tag, err))
        elif isinstance(res, dict) and "lease" in res and "value" not in res:
            leases.append((c, m, tag, res["lease"]))
        else:
            values.append((tag, res))
    return leases, values, errors


def start_waiters(conns, key, n, opts=None, fl=None):
    """n get_or_set for key spread over conns; returns the Inflight."""
    fl = fl or Inflight()
    for i in range(n):
        params = (key,) if opts is None else (key, opts)
        fl.send(conns[i % len(conns)], "get_or_set", *params, tag=i)
    return fl


# --------------------------------------------------------------------------
# Stampedes.
# --------------------------------------------------------------------------

def test_stampede_one_lease_99_coalesced(kcd, redis):
    conns = [kcd.client() for _ in range(20)]
    st = kcd.client()
    fl = start_waiters(conns, "cold", 100)
    # The holder fills only once every other request is waiting on kcached.
    wait_until(lambda: totals(st)["waits_coalesced"] >= 99, 10, "99 waits coalesced")
    fl.wait_answered(1, 5, "the lease answer")
    fl.pump(0.05)
    leases, values, errors = split_answers(fl.answered())
    assert not errors, errors
    assert not values, f"answered before the fill: {values!r}"
    assert len(leases) == 1, f"{len(leases)} leases: {leases!r}"
    holder, _, _, token = leases[0]
    t = totals(st)
    assert t["leases_granted"] == 1 and t["waits_coalesced"] == 99, t
    value = b"loaded-" + b"x" * 100
    assert holder.call("fill", "cold", token, value) == (None, True)
    answers = fl.wait_all(5)
    leases, values, errors = split_answers(answers)
    assert not errors, errors
    assert len(leases) == 1
    assert len(values) == 99
    assert all(res == {"value": value} for _, res in values), values[:3]
    assert stored_payload(redis.cmd("GET", rkey("cold"))) == value
    t = totals(st)
    assert (t["leases_granted"], t["waits_coalesced"], t["fills"], t["fills_rejected"]) == \
        (1, 99, 1, 0), t
    # Warm now: a plain hit, no lease.
    assert st.call("get_or_set", "cold") == (None, {"value": value})


def test_stampede_across_two_kcached(harness, redis):
    a = harness.kcached(redis, ini=INI)
    b = harness.kcached(redis, ini=INI)
    conns = [a.client() for _ in range(10)] + [b.client() for _ in range(10)]
    sa, sb = a.client(), b.client()
    fl = Inflight()
    # Interleaved: both daemons race for the one lease in Redis.
    for i in range(100):
        fl.send(conns[(i % 2) * 10 + (i // 2) % 10], "get_or_set", "cold2",
                tag=("a" if i % 2 == 0 else "b", i))

    def counts():
        ta, tb = totals(sa), totals(sb)
        return ta["waits_coalesced"], tb["waits_coalesced"], ta["leases_granted"], \
            tb["leases_granted"]

    # Spec: the daemon without the lease coalesces all its requests behind the
    # remote lease and counts them as waits_coalesced: 49 + 50 = 99. Every
    # request has arrived once 98 are counted; the 99th is then checked
    # without waiting long (the waiters' own wait is 5 s).
    wait_until(lambda: sum(counts()[:2]) >= 98, 3, "98 waits coalesced over both daemons")
    problem = None
    try:
        wait_until(lambda: sum(counts()[:2]) >= 99, 1 / max(1.0, T(1)),
                   "99 waits coalesced over both daemons")
    except AssertionError as e:
        problem = (f"{e}; (waits_coalesced a, b, leases_granted a, b) = {counts()}: the daemon "
                   "without the lease does not count the request that found the remote lease")
    fl.wait_answered(1, 5, "the lease answer")
    fl.pump(0.05)
    leases, values, errors = split_answers(fl.answered())
    assert not errors and not values, (problem, errors, values)
    assert len(leases) == 1, (problem, leases)
    wa, wb, la, lb = counts()
    assert la + lb == 1, (problem, counts())
    holder_conn, _, holder_tag, token = leases[0]
    # Both daemons report waiters before the fill.
    assert wa > 0 and wb > 0, (problem, counts())
    value = b"filled-across-daemons"
    assert holder_conn.call("fill", "cold2", token, value) == (None, True)
    t_fill = time.monotonic()
    leases, values, errors = split_answers(fl.wait_all(10))
    t_done = time.monotonic() - t_fill
    by_daemon = {}
    for tag, err in errors:
        by_daemon.setdefault(tag[0], []).append(err.get("code"))
    assert not errors, (f"{problem}; after the fill on {holder_tag[0]}, {len(errors)} waiters "
                        f"failed ({ {d: sorted(set(v)) for d, v in by_daemon.items()} } by daemon, "
                        f"{t_done:.2f}s after the fill): {errors[:2]!r}")
    assert len(leases) == 1, leases
    assert len(values) == 99 and all(res == {"value": value} for _, res in values), values[:5]
    assert t_done < 1, f"the waiters were answered {t_done:.2f}s after the fill"
    assert counts()[2] + counts()[3] == 1, counts()
    assert stored_payload(redis.cmd("GET", rkey("cold2"))) == value
    assert problem is None, problem


# --------------------------------------------------------------------------
# A lease passes on to exactly one waiter.
# --------------------------------------------------------------------------

def _lease_then_waiters(kcd, key, n_waiters=6, opts=None):
    holder = kcd.client()
    st = kcd.client()
    params = (key,) if opts is None else (key, opts)
    tok = lease_of(holder.ok("get_or_set", *params))
    conns = [kcd.client() for _ in range(3)]
    fl = start_waiters(conns, key, n_waiters, opts)
    wait_until(lambda: totals(st)["waits_coalesced"] >= n_waiters, 5, "waiters coalesced")
    fl.pump(0.02)
    assert fl.answered() == [], f"waiters answered while the lease is held: {fl.answered()!r}"
    return holder, st, tok, fl


def _one_waiter_takes_over(kcd, redis, st, old_tok, fl, key, n_waiters=6):
    """Exactly one waiter gets a new lease; its fill answers the others."""
    fl.wait_answered(1, 5, "a waiter to get the lease")
    fl.pump(0.05)
    leases, values, errors = split_answers(fl.answered())
    assert not errors and not values, (errors, values)
    assert len(leases) == 1, leases
    conn, _, _, tok2 = leases[0]
    assert tok2 != old_tok
    # The old token is worth nothing now.
    err, _ = st.call("fill", key, old_tok, b"late")
    assert err_code(err) == "LEASE_INVALID", err
    assert conn.call("fill", key, tok2, b"second-loader") == (None, True)
    leases, values, errors = split_answers(fl.wait_all(5))
    assert not errors, errors
    assert len(leases) == 1, f"more than one waiter got the lease: {leases!r}"
    assert len(values) == n_waiters - 1
    assert all(res == {"value": b"second-loader"} for _, res in values), values
    assert stored_payload(redis.cmd("GET", rkey(key))) == b"second-loader"
    assert totals(st)["leases_granted"] == 2


def test_holder_disconnect_passes_lease(kcd, redis):
    holder, st, tok, fl = _lease_then_waiters(kcd, "kd")
    holder.close()
    _one_waiter_takes_over(kcd, redis, st, tok, fl, "kd")


def test_holder_release_passes_lease(kcd, redis):
    holder, st, tok, fl = _lease_then_waiters(kcd, "kr")
    assert holder.call("release", "kr", tok) == (None, True)
    _one_waiter_takes_over(kcd, redis, st, tok, fl, "kr")
    # Released twice / someone else's token: false, not an error.
    assert holder.call("release", "kr", tok) == (None, False)


def test_lease_expiry_passes_lease(kcd, redis):
    t0 = time.monotonic()
    holder, st, tok, fl = _lease_then_waiters(kcd, "ke", opts={"lease_ms": 300})
    fl.wait_answered(1, 5, "a waiter to get the expired lease")
    elapsed = time.monotonic() - t0
    assert elapsed >= 0.28, f"lease passed on after {elapsed:.3f}s, before its 300 ms"
    _one_waiter_takes_over(kcd, redis, st, tok, fl, "ke")


def test_remote_waiter_takes_over_when_holder_disconnects(harness, redis):
    """The holder on kcached A goes away: A releases the lease in Redis and
    publishes it; the waiter on kcached B gets the lease at once, long before
    the lease's PTTL (3 s) would make B look again."""
    a = harness.kcached(redis, ini=INI)
    b = harness.kcached(redis, ini=INI)
    holder, cb = a.client(), b.client()
    tok = lease_of(holder.ok("get_or_set", "rk", {"lease_ms": 3000}))
    fl = Inflight()
    fl.send(cb, "get_or_set", "rk", {"wait_ms": 2500})
    fl.send(cb, "get_or_set", "rk", {"wait_ms": 2500})
    wait_until(lambda: totals(cb)["waits_coalesced"] >= 1, 5, "the second waiter on b")
    t0 = time.monotonic()
    holder.close()
    try:
        fl.wait_answered(1, 1.5, "b's waiter to get the released lease")
    except AssertionError as e:
        fl.wait_all(5)
        raise AssertionError(f"{e}; answers: {[a[3:] for a in fl.answered()]!r} after "
                             f"{time.monotonic() - t0:.2f}s") from None
    leases, values, errors = split_answers(fl.answered())
    assert not errors and len(leases) == 1 and leases[0][3] != tok, (leases, errors)
    assert leases[0][0].call("fill", "rk", leases[0][3], b"from-b") == (None, True)
    _, values, errors = split_answers(fl.wait_all(5))
    assert not errors and values == [(None, {"value": b"from-b"})], (errors, values)


def test_refused_fill_wakes_remote_waiter_at_once(harness, redis):
    """A tag invalidation revokes the holder's lease on kcached A; its fill is
    refused and drops the lease, and the refusal is published: the waiter on
    kcached B gets the lease at once, not after the lease's 20 s PTTL (its
    wait_ms of 10 s would answer TIMEOUT first)."""
    a = harness.kcached(redis, ini=INI)
    b = harness.kcached(redis, ini=INI)
    # Both subscribed to the lease notices first (a subscription coming up
    # makes waiters look again, which would hide the missing notice).
    chan = meta_base(PREFIX) + b"events"
    wait_until(lambda: redis.cmd("PUBSUB", "NUMSUB", chan)[1] == 2, 5, "both subscribed")
    holder, cb = a.client(), b.client()
    tok = lease_of(holder.ok("get_or_set", "fr", {"lease_ms": 20000}))
    fl = Inflight()
    fl.send(cb, "get_or_set", "fr", {"wait_ms": 10000})
    wait_until(lambda: totals(b.client())["waits_coalesced"] >= 1, 5, "b's waiter")
    assert holder.ok("invalidate", {"tags": ["unrelated"]}) is not None
    err, _ = holder.call("fill", "fr", tok, b"too-late")
    assert err_code(err) == "LEASE_INVALID", err
    fl.wait_answered(1, T(3), "b's waiter to get the lease after the refused fill")
    leases, values, errors = split_answers(fl.answered())
    assert not errors and not values and len(leases) == 1, (leases, values, errors)
    assert cb.call("fill", "fr", leases[0][3], b"from-b") == (None, True)
    assert holder.call("get_or_set", "fr") == (None, {"value": b"from-b"})


def test_waiter_coalesces_after_namespaced_request_on_its_connection(kcd, redis):
    """A get_or_set without ns on a connection whose previous request carried
    an ns must join the local entry (no script of its own in Redis): the
    request slot is reused, and nothing of the old ns may leak into the key's
    identity. (Seen in the soak: a second entry for the same key, whose waiters
    could miss the holder's fill notice.)"""
    holder = kcd.client()
    tok = lease_of(holder.ok("get_or_set", "nc"))
    w = kcd.client()
    for _ in range(3):
        w.ok("get", "other", {"ns": "a-long-tenant-name"})
    assert redis.cmd("CONFIG", "RESETSTAT") == "OK"
    fl = Inflight()
    fl.send(w, "get_or_set", "nc", {"wait_ms": 5000})
    wait_until(lambda: totals(kcd.client())["waits_coalesced"] >= 1, 5, "the waiter")
    info = redis.cmd("INFO", "commandstats")
    info = info.decode() if isinstance(info, bytes) else info
    assert "cmdstat_eval" not in info, f"the waiter ran its own script in Redis:\n{info}"
    assert holder.call("fill", "nc", tok, b"v1") == (None, True)
    _, values, errors = split_answers(fl.wait_all(5))
    assert not errors and values == [(None, {"value": b"v1"})], (errors, values)


def test_waiter_times_out_with_wait_ms(kcd):
    """wait_ms bounds the wait for another loader (here 300 ms, well under
    command_timeout_ms and the holder's 30 s lease)."""
    holder = kcd.client()
    tok = lease_of(holder.ok("get_or_set", "kt", {"lease_ms": 30000}))
    w = kcd.client()
    t0 = time.monotonic()
    err, res = w.call("get_or_set", "kt", {"wait_ms": 300}, timeout=40)
    elapsed = time.monotonic() - t0
    assert err_code(err) == "TIMEOUT", (err, res)
    assert elapsed >= 0.29, f"TIMEOUT after {elapsed:.3f}s, before wait_ms"
    assert elapsed < 0.3 + T(0.7), f"TIMEOUT after {elapsed:.3f}s for wait_ms 300"
    assert holder.call("fill", "kt", tok, b"v") == (None, True)
    assert w.call("get_or_set", "kt") == (None, {"value": b"v"})


def test_release_unknown_token_and_bad_tokens(kcd):
    c = kcd.client()
    assert c.call("release", "nolease", "0123456789abcdef") == (None, False)
    err, _ = c.call("fill", "nolease", "0123456789abcdef", b"v")
    assert err_code(err) == "LEASE_INVALID"
    assert c.call("get", "nolease") == (None, None)
    for bad in ("", "has space", 5):
        err, _ = c.call("fill", "nolease", bad, b"v")
        assert err_code(err) == "BAD_REQUEST", (bad, err)


# --------------------------------------------------------------------------
# Writes during a load revoke the lease.
# --------------------------------------------------------------------------

@pytest.mark.parametrize("ns", [None, "tenant"])
def test_write_through_second_kcached_revokes_lease(harness, redis, ns):
    a = harness.kcached(redis, ini=INI)
    b = harness.kcached(redis, ini=INI)
    ca, cb = a.client(), b.client()
    opts = {} if ns is None else {"ns": ns}
    tok = lease_of(ca.ok("get_or_set", "wk", opts))
    # Local waiters on the loading daemon.
    fl = start_waiters([a.client(), a.client()], "wk", 3, opts)
    wait_until(lambda: totals(ca)["waits_coalesced"] >= 3, 5, "waiters")
    assert cb.call("set", "wk", b"other", opts) == (None, True)
    err, res = ca.call("fill", "wk", tok, b"loaded", opts)
    assert err_code(err) == "LEASE_INVALID", (err, res)
    assert ca.call("get", "wk", opts) == (None, b"other")
    assert cb.call("get", "wk", opts) == (None, b"other")
    assert totals(ca)["fills_rejected"] == 1
    # The waiters are answered with what Redis holds now.
    _, values, errors = split_answers(fl.wait_all(5))
    assert not errors and values == [(i, {"value": b"other"}) for i in range(3)], (errors, values)


def test_plain_redis_set_revokes_lease(kcd, redis):
    c = kcd.client()
    tok = lease_of(c.ok("get_or_set", "pk"))
    assert redis.cmd("SET", rkey("pk"), b"foreign") == "OK"
    err, _ = c.call("fill", "pk", tok, b"loaded")
    assert err_code(err) == "LEASE_INVALID", err
    assert redis.cmd("GET", rkey("pk")) == b"foreign"
    assert c.call("get", "pk") == (None, b"foreign")


@pytest.mark.parametrize("write", ["set", "mset", "del", "expire", "invalidate_keys"])
def test_local_writes_revoke_lease(kcd, redis, write):
    c, w = kcd.client(), kcd.client()
    if write == "expire":
        assert c.call("set", "lw", b"old", {"ttl_ms": 1}) == (None, True)
        wait_until(lambda: c.call("get", "lw") == (None, None), 5, "lw to expire")
    tok = lease_of(c.ok("get_or_set", "lw"))
    if write == "set":
        w.ok("set", "lw", b"w")
    elif write == "mset":
        w.ok("mset", {"lw": b"w", "lw2": b"w2"})
    elif write == "del":
        w.ok("del", ["lw"])
    elif write == "expire":
        w.ok("expire", "lw", 100)
    else:
        w.ok("invalidate", {"keys": ["lw"]})
    err, _ = c.call("fill", "lw", tok, b"loaded")
    assert err_code(err) == "LEASE_INVALID", (write, err)
    assert stored_payload(redis.cmd("GET", rkey("lw"))) == (b"w" if "set" in write else None)


# --------------------------------------------------------------------------
# Schema and stale window.
# --------------------------------------------------------------------------

def test_get_or_set_new_schema_over_old_value(kcd, redis):
    c = kcd.client()
    assert c.call("set", "sk", b"old-shape", {"schema": "v1"}) == (None, True)
    assert c.call("get_or_set", "sk", {"schema": "v1"}) == (None, {"value": b"old-shape"})
    tok = lease_of(c.ok("get_or_set", "sk", {"schema": "v2"}))
    assert c.call("fill", "sk", tok, b"new-shape", {"schema": "v2"}) == (None, True)
    assert c.call("get_or_set", "sk", {"schema": "v2"}) == (None, {"value": b"new-shape"})
    assert c.call("get", "sk", {"schema": "v1"}) == (None, None)
    assert c.call("get", "sk") == (None, b"new-shape")
    assert totals(c)["schema_mismatch"] >= 2


def test_stale_window(kcd, redis):
    c, c2 = kcd.client(), kcd.client()
    assert c.call("set", "st", b"v1", {"ttl_ms": 300, "stale_ttl_ms": 3000}) == (None, True)
    t0 = time.monotonic()
    first = None
    deadline = time.monotonic() + T(3)
    while time.monotonic() < deadline:
        res = c.ok("get_or_set", "st")
        if res != {"value": b"v1"}:
            first = res
            break
        time.sleep(0.02)
    elapsed = time.monotonic() - t0
    assert first is not None, "get_or_set never served the value stale"
    assert elapsed >= 0.25, f"stale after {elapsed:.3f}s, before the 300 ms ttl"
    assert set(first) == {"value", "stale", "lease"}, first
    assert first["value"] == b"v1" and first["stale"] is True
    # A second caller gets the stale value at once, without a lease.
    assert c2.call("get_or_set", "st") == (None, {"value": b"v1", "stale": True})
    assert c.call("fill", "st", first["lease"], b"v2", {"ttl": 60}) == (None, True)
    assert c2.call("get_or_set", "st") == (None, {"value": b"v2"})
    assert c.call("get", "st") == (None, b"v2")
    t = totals(c)
    assert t["stale_served"] >= 2 and t["fills"] == 1, t
    ttl = redis.cmd("PTTL", rkey("st"))
    assert 50_000 < ttl <= 60_000, ttl


def test_get_or_set_with_field(kcd, redis):
    c = kcd.client()
    opts = {"ns": "h", "field": "f1", "schema": "s"}
    tok = lease_of(c.ok("get_or_set", "hk", opts))
    w = kcd.client()
    fl = start_waiters([w], "hk", 2, opts)
    wait_until(lambda: totals(c)["waits_coalesced"] >= 2, 5, "field waiters")
    assert c.call("fill", "hk", tok, b"fv", opts) == (None, True)
    _, values, errors = split_answers(fl.wait_all(5))
    assert not errors and values == [(0, {"value": b"fv"}), (1, {"value": b"fv"})], values
    assert c.call("hget", "hk", "f1", {"ns": "h", "schema": "s"}) == (None, b"fv")
    assert c.call("get_or_set", "hk", opts) == (None, {"value": b"fv"})
    # Another field of the same hash is still cold.
    lease_of(c.ok("get_or_set", "hk", {"ns": "h", "field": "f2"}))
    g = redis.cmd("GET", gen_key(PREFIX, "h"))
    dk = data_key(PREFIX, "hk", "h", g)
    assert stored_payload(redis.cmd("HGET", dk, "f1")) == b"fv"
    assert redis.cmd("PTTL", dk) > 0
    assert_healthy(kcd)
