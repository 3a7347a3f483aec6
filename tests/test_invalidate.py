# SPDX-License-Identifier: MIT
"""invalidate by keys, pattern, tags and namespace: what goes, what stays
(keys outside key_prefix, kcached's metadata, other namespaces), how fast a
second kcached sees it, that it revokes leases, and that a long pattern
invalidation does not hold up other clients. key_prefix is app*[1]: so that
an unescaped prefix in a SCAN pattern would match foreign keys."""

import time

import pytest

from conftest import (Inflight, assert_healthy, cache_stats, data_key, err_code, gen_key,
                      meta_base, stored_payload)

PREFIX = "app*[1]:"
INI = {"cache": {"key_prefix": PREFIX}, "server": {"max_batch_keys": 10000}}
BATCH = 10000


@pytest.fixture
def kcd(harness, redis):
    return harness.kcached(redis, ini=INI)


def rkey(key):
    return data_key(PREFIX, key)


def ns_rkey(redis, key, ns):
    g = redis.cmd("GET", gen_key(PREFIX, ns))
    assert g is not None, f"no generation for {ns!r}"
    return data_key(PREFIX, key, ns, g)


def all_keys(redis):
    out, cursor = [], b"0"
    while True:
        cursor, keys = redis.cmd("SCAN", cursor, "COUNT", 1000)
        out += keys
        if cursor == b"0":
            return out


def fill_many(c, n, prefix, opts=None, timeout=30):
    """Sets n keys prefix + index through kcached, BATCH keys per mset."""
    for start in range(0, n, BATCH):
        batch = {f"{prefix}{i:06d}": b"v%06d" % i for i in range(start, min(n, start + BATCH))}
        params = (batch,) if opts is None else (batch, opts)
        assert c.call("mset", *params, timeout=timeout) == (None, True)


# --------------------------------------------------------------------------
# Namespaces.
# --------------------------------------------------------------------------

def test_namespace_invalidation_seen_by_second_kcached_at_once(harness, redis):
    a = harness.kcached(redis, ini=INI)
    b = harness.kcached(redis, ini=INI)
    ca, cb = a.client(), b.client()
    o = {"ns": "catalog"}
    assert ca.call("mset", {"p1": b"one", "p2": b"two"}, o) == (None, True)
    assert cb.call("get", "p1", o) == (None, b"one")
    assert cb.call("mget", ["p1", "p2"], o) == (None, [b"one", b"two"])
    g0 = int(redis.cmd("GET", gen_key(PREFIX, "catalog")))
    err, res = ca.call("invalidate", {"namespace": "catalog"})
    assert err is None and set(res) == {"generation"}, (err, res)
    assert res["generation"] > g0
    assert int(redis.cmd("GET", gen_key(PREFIX, "catalog"))) == res["generation"]
    # The very next read through the other daemon misses (no ns_check_ms wait).
    assert cb.call("get", "p1", o) == (None, None)
    assert cb.call("mget", ["p1", "p2"], o) == (None, [None, None])
    assert cb.call("exists", ["p1", "p2"], o) == (None, 0)
    # Other namespaces and plain keys are untouched.
    assert ca.call("set", "p1", b"plain") == (None, True)
    assert ca.call("set", "p1", b"other-ns", {"ns": "other"}) == (None, True)
    assert ca.call("invalidate", {"namespace": "catalog"})[0] is None
    assert cb.call("get", "p1") == (None, b"plain")
    assert cb.call("get", "p1", {"ns": "other"}) == (None, b"other-ns")
    # Writes after the flush land in the new generation, seen by both.
    assert cb.call("set", "p1", b"fresh", o) == (None, True)
    assert ca.call("get", "p1", o) == (None, b"fresh")
    assert cache_stats(ca)["namespaces"]["catalog"]["invalidations"] == 2


def test_deleting_generation_key_does_not_resurrect(kcd, redis):
    c = kcd.client()
    o = {"ns": "res"}
    assert c.call("set", "k", b"before", o) == (None, True)
    assert c.ok("invalidate", {"namespace": "res"})["generation"]
    assert redis.cmd("DEL", gen_key(PREFIX, "res")) == 1
    assert c.call("get", "k", o) == (None, None)
    assert c.call("mget", ["k"], o) == (None, [None])
    assert c.call("exists", ["k"], o) == (None, 0)
    assert_healthy(kcd)


def test_recreated_generation_is_never_an_old_one(kcd, redis):
    """After the generation key is deleted, the next write creates a new one:
    it must differ from every generation used before, however fast the
    set / invalidate / delete / set sequence runs (within one millisecond)."""
    c = kcd.client()
    for i in range(20):
        ns = f"res{i}"
        o = {"ns": ns}
        assert c.call("set", "k", b"before", o) == (None, True)
        old_dk = ns_rkey(redis, "k", ns)
        assert c.ok("invalidate", {"namespace": ns})["generation"]
        assert redis.cmd("DEL", gen_key(PREFIX, ns)) == 1
        # A write recreates the generation: never one that was used before.
        assert c.call("set", "other", b"x", o) == (None, True)
        assert ns_rkey(redis, "k", ns) != old_dk, f"{ns}: generation reused"
        assert c.call("get", "k", o) == (None, None), \
            f"{ns}: invalidated key resurrected (generation reused)"
        assert stored_payload(redis.cmd("GET", old_dk)) == b"before"  # still there, unreachable


def test_namespaced_data_keys_always_have_ttl(kcd, redis):
    c = kcd.client()
    o = {"ns": "ttlns"}
    assert c.call("set", "a", b"v", o) == (None, True)
    assert c.call("set", "b", b"v", {**o, "ttl": 2_000_000_000}) == (None, True)  # clamped
    assert c.call("mset", {"c": b"v", "d": b"v"}, o) == (None, True)
    assert c.call("hset", "h", {"f": b"v"}, o) == (None, True)
    assert c.call("set", "s", b"v", {**o, "ttl_ms": 200, "stale_ttl": 30}) == (None, True)
    tok = c.ok("get_or_set", "g", o)["lease"]
    assert c.call("fill", "g", tok, b"v", o) == (None, True)
    tok = c.ok("get_or_set", "hf", {**o, "field": "f"})["lease"]
    assert c.call("fill", "hf", tok, b"v", {**o, "field": "f"}) == (None, True)
    assert c.call("set", "t", b"v", {**o, "tags": ["x"]}) == (None, True)
    ns_keys = [k for k in all_keys(redis) if k.startswith(PREFIX.encode() + b"\0")]
    assert len(ns_keys) == 9, ns_keys
    for k in ns_keys:
        assert redis.cmd("PTTL", k) > 0, f"{k!r} has no TTL"


# --------------------------------------------------------------------------
# Tags.
# --------------------------------------------------------------------------

def test_tag_invalidation(kcd, redis):
    c = kcd.client()
    assert c.call("set", "a", b"1", {"tags": ["red"]}) == (None, True)
    assert c.call("mset", {"b": b"2", "c": b"3"}, {"tags": ["red", "blue"]}) == (None, True)
    assert c.call("set", "d", b"4", {"tags": ["blue"]}) == (None, True)
    assert c.call("set", "e", b"5", {"ns": "n", "tags": ["red"]}) == (None, True)
    assert c.call("set", "f", b"6") == (None, True)
    tok = c.ok("get_or_set", "g")["lease"]
    assert c.call("fill", "g", tok, b"7", {"tags": ["red"]}) == (None, True)
    assert redis.cmd("SCARD", meta_base(PREFIX) + b"tag\0red") == 5
    assert c.call("invalidate", {"tags": ["red"]}) == (None, {"deleted": 5})
    assert c.call("mget", ["a", "b", "c", "d", "f", "g"]) == \
        (None, [None, None, None, b"4", b"6", None])
    assert c.call("get", "e", {"ns": "n"}) == (None, None)
    assert redis.cmd("EXISTS", meta_base(PREFIX) + b"tag\0red") == 0
    # blue still lists b and c, already gone: only d is deleted now.
    assert c.call("invalidate", {"tags": ["blue", "never-used"]}) == (None, {"deleted": 1})
    assert c.call("get", "d") == (None, None)


def test_tag_with_100000_keys(kcd, redis):
    c = kcd.client()
    t0 = time.monotonic()
    fill_many(c, 100_000, "big:", {"tags": ["big"]})
    t1 = time.monotonic()
    assert redis.cmd("SCARD", meta_base(PREFIX) + b"tag\0big") == 100_000
    assert c.call("set", "keep", b"k") == (None, True)
    assert c.call("invalidate", {"tags": ["big"]}, timeout=60) == (None, {"deleted": 100_000})
    t2 = time.monotonic()
    assert c.call("mget", ["big:000000", "big:099999", "keep"]) == (None, [None, None, b"k"])
    assert not [k for k in all_keys(redis) if k.startswith(rkey("big:"))]
    assert_healthy(kcd)
    print(f"mset 100k with a tag: {t1 - t0:.2f}s, invalidate: {t2 - t1:.2f}s")


# --------------------------------------------------------------------------
# Patterns.
# --------------------------------------------------------------------------

def test_pattern_star_removes_only_the_apps_keys(kcd, redis):
    c = kcd.client()
    assert c.call("mset", {"u:1": b"a", "u:2": b"b", "x": b"c"}) == (None, True)
    assert c.call("set", "keep", b"ns", {"ns": "n"}) == (None, True)
    foreign = [b"other:1", b"appZZ1:x", b"app", b"app*[1]", b"APP*[1]:x", b"kcache-like"]
    for k in foreign:
        assert redis.cmd("SET", k, b"foreign") == "OK"
    gk = gen_key(PREFIX, "n")
    meta_before = sorted(k for k in all_keys(redis) if k.startswith(b"kcache"))
    assert gk in meta_before
    assert c.call("invalidate", {"pattern": "u:*"}) == (None, {"deleted": 2})
    assert c.call("get", "x") == (None, b"c")
    assert c.call("invalidate", {"pattern": "*"}) == (None, {"deleted": 1})
    assert c.call("get", "x") == (None, None)
    for k in foreign:
        assert redis.cmd("GET", k) == b"foreign", k
    assert redis.cmd("EXISTS", gk) == 1
    meta_after = sorted(k for k in all_keys(redis) if k.startswith(b"kcache"))
    assert set(meta_before) <= set(meta_after), set(meta_before) - set(meta_after)
    # A pattern without ns leaves namespaced keys alone; with ns it takes them.
    assert c.call("get", "keep", {"ns": "n"}) == (None, b"ns")
    assert c.call("set", "keep2", b"ns2", {"ns": "n"}) == (None, True)
    assert c.call("set", "keep", b"other", {"ns": "m"}) == (None, True)
    assert c.call("invalidate", {"pattern": "keep"}, {"ns": "n"}) == (None, {"deleted": 1})
    assert c.call("get", "keep2", {"ns": "n"}) == (None, b"ns2")
    assert c.call("invalidate", {"pattern": "*"}, {"ns": "n"}) == (None, {"deleted": 1})
    assert c.call("get", "keep", {"ns": "m"}) == (None, b"other")
    assert redis.cmd("EXISTS", gk) == 1


def test_pattern_glob_characters_in_keys(kcd, redis):
    c = kcd.client()
    assert c.call("mset", {"a?": b"1", "ab": b"2", "a*": b"3", "[x]": b"4"}) == (None, True)
    assert c.call("invalidate", {"pattern": "a\\?"}) == (None, {"deleted": 1})
    assert c.call("mget", ["a?", "ab", "a*"]) == (None, [None, b"2", b"3"])
    assert c.call("invalidate", {"pattern": "a?"}) == (None, {"deleted": 2})
    assert c.call("invalidate", {"pattern": "\\[x]"}) == (None, {"deleted": 1})


def test_pattern_over_100000_keys_does_not_block_other_clients(kcd, redis):
    c = kcd.client()
    fill_many(c, 100_000, "p:")
    inv, other = kcd.client(), kcd.client()
    fl = Inflight()
    fl.send(inv, "invalidate", {"pattern": "p:*"})
    pongs = 0
    t0 = time.monotonic()
    for _ in range(5):
        assert other.call("ping", timeout=5) == (None, "pong")
        pongs += 1
        fl.pump(0)
        assert not fl.answered(), (f"the invalidation answered before ping {pongs} did "
                                   f"(after {time.monotonic() - t0:.3f}s)")
    t_pongs = time.monotonic() - t0
    (_, _, _, err, res), = fl.wait_all(60)
    assert err is None and res == {"deleted": 100_000}, (err, res)
    t_inv = time.monotonic() - t0
    assert t_pongs < t_inv
    assert not [k for k in all_keys(redis) if k.startswith(rkey("p:"))]
    print(f"5 pings in {t_pongs * 1000:.1f} ms; invalidation of 100k keys in {t_inv:.2f}s")


# --------------------------------------------------------------------------
# keys, and leases revoked by every kind of invalidation.
# --------------------------------------------------------------------------

def test_invalidate_keys(kcd, redis):
    c = kcd.client()
    assert c.call("mset", {"a": b"1", "b": b"2"}) == (None, True)
    assert c.call("set", "a", b"n", {"ns": "n"}) == (None, True)
    assert c.call("invalidate", {"keys": ["a", "b", "zz"]}) == (None, {"deleted": 2})
    assert c.call("invalidate", {"keys": []}) == (None, {"deleted": 0})
    assert c.call("get", "a", {"ns": "n"}) == (None, b"n")
    assert c.call("invalidate", {"keys": ["a"]}, {"ns": "n"}) == (None, {"deleted": 1})
    assert c.call("get", "a", {"ns": "n"}) == (None, None)
    t = cache_stats(c)["totals"]
    assert t["invalidations"] >= 2 and t["deletes"] >= 3, t


@pytest.mark.parametrize("how", ["keys", "pattern", "unrelated_pattern", "tags", "unrelated_tag",
                                 "namespace"])
def test_invalidation_revokes_lease(kcd, redis, how):
    c = kcd.client()
    o = {"ns": "lz"} if how == "namespace" else {}
    if how == "tags":
        assert c.call("set", "lk2", b"x", {"tags": ["t"]}) == (None, True)
    tok = c.ok("get_or_set", "lk", o)["lease"]
    sel = {"keys": {"keys": ["lk"]}, "pattern": {"pattern": "l*"},
           "unrelated_pattern": {"pattern": "nothing-matches-*"}, "tags": {"tags": ["t"]},
           "unrelated_tag": {"tags": ["unused"]}, "namespace": {"namespace": "lz"}}[how]
    assert c.call("invalidate", sel)[0] is None
    err, _ = c.call("fill", "lk", tok, b"stale load", o)
    assert err_code(err) == "LEASE_INVALID", (how, err)
    assert c.call("get", "lk", o) == (None, None)
    # The next loader gets a fresh lease and its fill counts.
    tok = c.ok("get_or_set", "lk", o)["lease"]
    assert c.call("fill", "lk", tok, b"good", o) == (None, True)
    assert c.call("get", "lk", o) == (None, b"good")
