# SPDX-License-Identifier: MIT
"""Stored values: envelopes (compression, checksums, corrupt and hostile
values, newer versions, values written by other clients), schema tags,
hashes, option validation and per-namespace counters, checked against what
Redis really holds."""

import json
import os
import random
import zlib

import pytest

from conftest import (assert_healthy, cache_stats, data_key, err_code, gen_key,
                      make_envelope, stored_payload)

PREFIX = "app*[1]:"
MAX_VALUE = 1024 * 1024
INI = {"cache": {"key_prefix": PREFIX, "max_value_bytes": MAX_VALUE}}


@pytest.fixture
def kcd(harness, redis):
    return harness.kcached(redis, ini=INI)


def rkey(key, ns=None, gen=None):
    return data_key(PREFIX, key, ns, gen)


def totals(c):
    return cache_stats(c)["totals"]


def ns_rkey(redis, key, ns):
    g = redis.cmd("GET", gen_key(PREFIX, ns))
    assert g is not None, f"no generation for namespace {ns!r}"
    return rkey(key, ns, g)


def json_doc(n_bytes):
    """A realistic JSON document of about n_bytes."""
    rnd = random.Random(4)
    rows, size = [], 0
    while size < n_bytes:
        i = len(rows)
        row = {"id": i, "name": f"user-{i:05d}", "email": f"user{i}@example.com",
               "active": i % 3 != 0, "score": rnd.randint(0, 10000),
               "tags": ["alpha", "beta", "gamma"][: 1 + i % 3],
               "address": {"city": rnd.choice(["Lyon", "Oslo", "Porto", "Kyoto"]),
                           "zip": f"{rnd.randint(10000, 99999)}"}}
        rows.append(row)
        size += len(json.dumps(row)) + 2
    return json.dumps(rows).encode()[:n_bytes].ljust(n_bytes, b" ")


# --------------------------------------------------------------------------
# Compression.
# --------------------------------------------------------------------------

def test_json_stored_compressed(kcd, redis):
    c = kcd.client()
    doc = json_doc(100 * 1024)
    assert len(doc) == 100 * 1024
    assert c.call("set", "doc", doc) == (None, True)
    raw = redis.cmd("GET", rkey("doc"))
    assert redis.cmd("STRLEN", rkey("doc")) == len(raw) < len(doc) / 3, len(raw)
    assert raw[:3] == b"\xc1K\x01" and raw[3] & 1, raw[:8]
    assert stored_payload(raw) == doc
    assert c.call("get", "doc") == (None, doc)
    assert c.call("mget", ["doc", "nope"]) == (None, [doc, None])
    t = totals(c)
    assert t["bytes_saved_compression"] > len(doc) / 2, t
    assert t["bytes_in"] >= len(doc) and t["bytes_out"] >= 2 * len(doc), t


def test_random_bytes_stored_uncompressed(kcd, redis):
    c = kcd.client()
    blob = os.urandom(100 * 1024)
    assert c.call("set", "blob", blob) == (None, True)
    assert redis.cmd("STRLEN", rkey("blob")) >= len(blob)
    raw = redis.cmd("GET", rkey("blob"))
    assert raw[3] & 1 == 0, "random bytes stored as a zlib stream"
    assert stored_payload(raw) == blob
    assert c.call("get", "blob") == (None, blob)


def test_value_over_max_value_bytes_is_too_large(kcd, redis):
    c = kcd.client()
    err, _ = c.call("set", "big", b"x" * (MAX_VALUE + 1))
    assert err_code(err) == "TOO_LARGE", err
    assert redis.cmd("EXISTS", rkey("big")) == 0
    assert c.call("set", "big", b"x" * MAX_VALUE) == (None, True)
    assert c.call("get", "big") == (None, b"x" * MAX_VALUE)


# --------------------------------------------------------------------------
# Corrupt and hostile stored values: misses, counted, the daemon unharmed.
# --------------------------------------------------------------------------

def _bomb():
    stream = zlib.compress(b"\0" * (64 * 1024 * 1024))
    return stream


CORRUPT = {
    "garbage": lambda: bytes([0xC1, ord("K"), 0x01]) + b"\xff\x07garbage-garbage-garbage",
    "short_header": lambda: bytes([0xC1, ord("K"), 0x01, 0x00, 0x00]) + b"\x00\x00",
    "crc_mismatch": lambda: make_envelope(b"hello world", crc=zlib.crc32(b"hello world") ^ 1),
    "length_mismatch": lambda: make_envelope(b"hello world", length=5),
    "schema_len_past_end": lambda: bytes([0xC1, ord("K"), 0x01, 0x00, 200]) + b"abc",
    "bad_zlib_stream": lambda: make_envelope(b"x" * 100, flags=1, body=b"\x78\x9c" + b"\xaa" * 40),
    "zlib_bomb": lambda: make_envelope(b"\0" * 1024, flags=1, body=_bomb()),
    "zlib_bomb_at_limit": lambda: make_envelope(b"\0" * MAX_VALUE, flags=1, body=_bomb()),
    "length_over_max": lambda: make_envelope(b"", length=MAX_VALUE + 1, crc=0,
                                             body=b"\0" * 64),
    "length_4g_zlib": lambda: make_envelope(b"", flags=1, length=0xFFFFFFFF, crc=0,
                                            body=zlib.compress(b"\0" * 4096)),
}


@pytest.mark.parametrize("kind", sorted(CORRUPT))
def test_corrupt_value_is_a_miss(kcd, redis, kind):
    c = kcd.client()
    assert c.call("set", "warm", b"w") == (None, True)
    rss0 = kcd.rss_kb()
    before = totals(c)
    raw = CORRUPT[kind]()
    assert redis.cmd("SET", rkey("bad"), raw) == "OK"
    assert c.call("get", "bad") == (None, None)
    assert c.call("mget", ["warm", "bad"]) == (None, [b"w", None])
    after = totals(c)
    assert after["corrupt_envelopes"] == before["corrupt_envelopes"] + 2, after
    assert after["misses"] >= before["misses"] + 2
    assert after["newer_envelopes"] == before["newer_envelopes"]
    assert_healthy(kcd)
    grown = kcd.rss_kb() - rss0
    assert grown < 16 * 1024, f"RSS grew by {grown} KiB decoding {kind}"
    # The stored value is left alone by reads.
    assert redis.cmd("GET", rkey("bad")) == raw
    assert "corrupt" in kcd.log_text()


def test_get_or_set_over_corrupt_value_gives_a_lease(kcd, redis):
    c = kcd.client()
    redis.cmd("SET", rkey("bad2"), CORRUPT["crc_mismatch"]())
    res = c.ok("get_or_set", "bad2")
    assert set(res) == {"lease"}, res
    assert c.call("fill", "bad2", res["lease"], b"fixed") == (None, True)
    assert c.call("get", "bad2") == (None, b"fixed")
    assert totals(c)["corrupt_envelopes"] >= 1


def test_newer_envelope_version_is_a_miss(kcd, redis):
    c = kcd.client()
    before = totals(c)
    v2 = make_envelope(b"from the future", version=2)
    redis.cmd("SET", rkey("v2"), v2)
    assert c.call("get", "v2") == (None, None)
    # Everything after the version byte may mean something else in version 2.
    redis.cmd("SET", rkey("v2b"), bytes([0xC1, ord("K"), 2, 0xFF, 0xFF]) + b"?")
    assert c.call("mget", ["v2", "v2b"]) == (None, [None, None])
    after = totals(c)
    assert after["newer_envelopes"] == before["newer_envelopes"] + 3, after
    assert after["corrupt_envelopes"] == before["corrupt_envelopes"], after
    assert redis.cmd("GET", rkey("v2")) == v2


@pytest.mark.parametrize("raw", [b"written by another client", b"", b"\xc1", b"\xc1X\x01\x00",
                                 b"{\"json\": true}", bytes(range(256))])
def test_value_without_magic_returned_as_is(kcd, redis, raw):
    c = kcd.client()
    before = totals(c)
    redis.cmd("SET", rkey("foreign"), raw)
    assert c.call("get", "foreign") == (None, raw)
    assert c.call("mget", ["foreign"]) == (None, [raw])
    assert c.call("get_or_set", "foreign") == (None, {"value": raw})
    after = totals(c)
    assert after["corrupt_envelopes"] == before["corrupt_envelopes"]


def test_envelope_layout_and_schema_tag(kcd, redis):
    c = kcd.client()
    assert c.call("set", "lay", b"abc", {"schema": "user:v3"}) == (None, True)
    raw = redis.cmd("GET", rkey("lay"))
    assert raw == make_envelope(b"abc", schema=b"user:v3"), raw
    # A value kcached could have written is read back, tag and all.
    redis.cmd("SET", rkey("hand"), make_envelope(b"handmade", schema=b"s"))
    assert c.call("get", "hand", {"schema": "s"}) == (None, b"handmade")
    redis.cmd("SET", rkey("handz"),
              make_envelope(b"z" * 5000, flags=1, body=zlib.compress(b"z" * 5000)))
    assert c.call("get", "handz") == (None, b"z" * 5000)


# --------------------------------------------------------------------------
# Schema tags.
# --------------------------------------------------------------------------

def test_schema_change_is_a_miss_then_refreshed(kcd, redis):
    c = kcd.client()
    assert c.call("set", "u:1", b"old", {"schema": "v1", "ns": "users"}) == (None, True)
    assert c.call("get", "u:1", {"schema": "v1", "ns": "users"}) == (None, b"old")
    before = totals(c)
    assert c.call("get", "u:1", {"schema": "v2", "ns": "users"}) == (None, None)
    assert c.call("mget", ["u:1"], {"schema": "v2", "ns": "users"}) == (None, [None])
    after = totals(c)
    assert after["schema_mismatch"] == before["schema_mismatch"] + 2, after
    users = cache_stats(c)["namespaces"]["users"]
    assert users["schema_mismatch"] == 2, users
    # Reads without a schema get any value.
    assert c.call("get", "u:1", {"ns": "users"}) == (None, b"old")
    assert c.call("set", "u:1", b"new", {"schema": "v2", "ns": "users"}) == (None, True)
    assert c.call("get", "u:1", {"schema": "v2", "ns": "users"}) == (None, b"new")
    assert c.call("get", "u:1", {"schema": "v1", "ns": "users"}) == (None, None)
    raw = redis.cmd("GET", ns_rkey(redis, "u:1", "users"))
    assert raw[4] == 2 and raw[5:7] == b"v2", raw[:8]


def test_schema_too_long_is_bad_request(kcd):
    c = kcd.client()
    assert c.call("set", "s", b"v", {"schema": "s" * 255}) == (None, True)
    assert c.call("get", "s", {"schema": "s" * 255}) == (None, b"v")
    err, _ = c.call("set", "s", b"v", {"schema": "s" * 256})
    assert err_code(err) == "BAD_REQUEST", err


# --------------------------------------------------------------------------
# Hashes.
# --------------------------------------------------------------------------

def test_hashes_with_ns_and_schema(kcd, redis):
    c = kcd.client()
    o = {"ns": "prof", "schema": "p1"}
    assert c.call("hset", "h1", {"name": b"ann", "age": b"42"}, o) == (None, True)
    assert c.call("hget", "h1", "name", o) == (None, b"ann")
    assert c.call("hget", "h1", "nope", o) == (None, None)
    assert c.call("hget", "h1", "name", {"ns": "prof", "schema": "p2"}) == (None, None)
    assert c.call("hget", "h1", "name", {"ns": "prof"}) == (None, b"ann")
    assert c.call("hget", "h1", "name") == (None, None)  # not the plain key space
    assert c.call("hgetall", "h1", o) == (None, {b"name": b"ann", b"age": b"42"})
    assert c.call("hgetall", "h1", {"ns": "prof", "schema": "p2"}) == (None, {})
    assert c.call("hgetall", "nohash", o) == (None, {})
    dk = ns_rkey(redis, "h1", "prof")
    assert redis.cmd("TYPE", dk) == "hash"
    assert stored_payload(redis.cmd("HGET", dk, "name")) == b"ann"
    assert redis.cmd("PTTL", dk) > 0
    # A corrupt field and a field of another schema are left out of hgetall.
    redis.cmd("HSET", dk, "broken", CORRUPT["crc_mismatch"]())
    assert c.call("hset", "h1", {"other": b"x"}, {"ns": "prof", "schema": "p9"}) == (None, True)
    assert c.call("hgetall", "h1", o) == (None, {b"name": b"ann", b"age": b"42"})
    assert c.call("hgetall", "h1", {"ns": "prof"}) == \
        (None, {b"name": b"ann", b"age": b"42", b"other": b"x"})
    assert c.call("hdel", "h1", ["age", "missing"], {"ns": "prof"}) == (None, 1)
    assert c.call("hget", "h1", "age", o) == (None, None)
    assert c.call("hdel", "h1", [], {"ns": "prof"}) == (None, 0)
    assert c.call("hset", "h1", {"t": b"v"}, {"ns": "prof", "ttl": 100}) == (None, True)
    assert 90_000 < redis.cmd("PTTL", dk) <= 100_000


def test_hash_options_and_errors(kcd):
    c = kcd.client()
    err, _ = c.call("hset", "h", {})
    assert err_code(err) == "BAD_REQUEST"
    err, _ = c.call("hset", "h", {"f": b"v"}, {"ttl": 1, "ttl_ms": 1000})
    assert err_code(err) == "BAD_REQUEST"
    err, _ = c.call("hdel", "h", "notalist")
    assert err_code(err) == "BAD_REQUEST"
    err, _ = c.call("hget", b"\0h", "f")
    assert err_code(err) == "BAD_REQUEST"
    assert c.call("hset", "plainh", {"f": b"v"}) == (None, True)
    assert c.call("hget", "plainh", "f") == (None, b"v")


# --------------------------------------------------------------------------
# Option validation.
# --------------------------------------------------------------------------

def test_ttl_and_ttl_ms_together_is_bad_request(kcd, redis):
    c = kcd.client()
    for method, params in [("set", ("k", b"v")), ("mset", ({"k": b"v", "k2": b"v"},)),
                           ("mset", ({"k": b"v"},)), ("fill", ("k", "tok", b"v"))]:
        err, _ = c.call(method, *params, {"ttl": 10, "ttl_ms": 10000})
        assert err_code(err) == "BAD_REQUEST", (method, err)
        err, _ = c.call(method, *params, {"stale_ttl": 10, "stale_ttl_ms": 10000})
        assert err_code(err) == "BAD_REQUEST", (method, err)
    for bad in (0, -1, 2 ** 31):
        err, _ = c.call("set", "k", b"v", {"ttl_ms": bad})
        assert err_code(err) == "BAD_REQUEST", (bad, err)
    assert redis.cmd("EXISTS", rkey("k")) == 0
    assert c.call("set", "k", b"v", {"ttl_ms": 1500}) == (None, True)
    assert 1000 < redis.cmd("PTTL", rkey("k")) <= 1500


def test_key_limits(kcd, redis):
    c = kcd.client()
    ok = b"k" * 1024
    assert c.call("set", ok, b"v") == (None, True)
    assert c.call("get", ok) == (None, b"v")
    assert redis.cmd("EXISTS", rkey(ok)) == 1
    long = b"k" * 1025
    for method, params in [("get", (long,)), ("set", (long, b"v")), ("del", ([long],)),
                           ("mget", ([b"a", long],)), ("mset", ({long: b"v"},)),
                           ("get_or_set", (long,)), ("hget", (long, "f")),
                           ("get", (long, {"ns": "n"}))]:
        err, _ = c.call(method, *params)
        assert err_code(err) == "TOO_LARGE", (method, err)


def test_key_starting_with_nul_is_bad_request(kcd, redis):
    c = kcd.client()
    for method, params in [("get", (b"\0k",)), ("set", (b"\0k", b"v")), ("del", ([b"\0k"],)),
                           ("mget", ([b"a", b"\0"],)), ("mset", ({b"\0k": b"v"},)),
                           ("exists", ([b"\0k"],)), ("ttl", (b"\0k",)),
                           ("get_or_set", (b"\0k",)), ("set", (b"\0k", b"v", {"ns": "n"})),
                           ("invalidate", ({"keys": [b"\0k"]},))]:
        err, _ = c.call(method, *params)
        assert err_code(err) == "BAD_REQUEST", (method, err)
    assert redis.cmd("DBSIZE") <= 1  # nothing written (the lag heartbeat may exist)
    # A NUL inside a key is fine (binary safe).
    assert c.call("set", b"a\0b", b"v") == (None, True)
    assert c.call("get", b"a\0b") == (None, b"v")
    assert redis.cmd("EXISTS", rkey(b"a\0b")) == 1


@pytest.mark.parametrize("sel", [{}, {"keys": ["a"], "pattern": "*"}, {"bogus": ["a"]}, "keys",
                                 ["keys", ["a"]], {"keys": "a"}, {"tags": []}, {"tags": "t"},
                                 {"namespace": 5}, {"pattern": 5}, None],
                         ids=lambda s: repr(s)[:40])
def test_bad_selector(kcd, sel):
    c = kcd.client()
    err, _ = c.call("invalidate", sel)
    assert err_code(err) == "BAD_REQUEST", err
    assert_healthy(kcd)


def test_lease_option_ranges(kcd):
    c = kcd.client()
    for opts in ({"lease_ms": 0}, {"lease_ms": 600001}, {"wait_ms": 5}, {"field": ""},
                 {"ns": ""}, {"ns": "a\0b"}):
        err, _ = c.call("get_or_set", "k", opts)
        assert err_code(err) == "BAD_REQUEST", (opts, err)


# --------------------------------------------------------------------------
# Counters per namespace.
# --------------------------------------------------------------------------

def test_stats_per_namespace_and_other(harness, redis):
    kcd = harness.kcached(redis, ini={"cache": {"key_prefix": PREFIX,
                                                "max_tracked_namespaces": 2}})
    c = kcd.client()
    for ns, n in (("alpha", 1), ("beta", 2), ("gamma", 3)):
        for i in range(n):
            assert c.call("set", f"k{i}", b"v", {"ns": ns}) == (None, True)
            assert c.call("get", f"k{i}", {"ns": ns}) == (None, b"v")
        assert c.call("get", "missing", {"ns": ns}) == (None, None)
    assert c.call("set", "plain", b"v") == (None, True)
    assert c.call("get", "plain") == (None, b"v")
    # A fourth name, past the limit, adds up under _other too.
    assert c.call("set", "x", b"v", {"ns": "delta"}) == (None, True)
    st = cache_stats(c)
    nss = st["namespaces"]
    assert set(nss) == {"alpha", "beta", "_other"}, set(nss)
    assert (nss["alpha"]["sets"], nss["alpha"]["hits"], nss["alpha"]["misses"]) == (1, 1, 1)
    assert (nss["beta"]["sets"], nss["beta"]["hits"], nss["beta"]["misses"]) == (2, 2, 1)
    assert (nss["_other"]["sets"], nss["_other"]["hits"], nss["_other"]["misses"]) == (4, 3, 1)
    t = st["totals"]
    assert (t["sets"], t["hits"], t["misses"]) == (8, 7, 3), t
    for name in ("hits", "misses", "schema_mismatch", "sets", "deletes", "invalidations",
                 "leases_granted", "waits_coalesced", "fills", "fills_rejected", "stale_served",
                 "bytes_in", "bytes_out", "bytes_saved_compression", "corrupt_envelopes"):
        assert name in t and name in nss["alpha"] and name in nss["_other"], name
    assert c.call("invalidate", {"namespace": "beta"})[0] is None
    assert c.call("del", ["k0"], {"ns": "alpha"}) == (None, 1)
    nss = cache_stats(c)["namespaces"]
    assert nss["beta"]["invalidations"] == 1 and nss["alpha"]["deletes"] == 1, nss


def test_reads_in_a_namespace_never_written(kcd, redis):
    """No generation key yet: every read is a miss and every delete finds nothing."""
    c = kcd.client()
    o = {"ns": "fresh"}
    assert redis.cmd("EXISTS", gen_key(PREFIX, "fresh")) == 0
    assert c.call("get", "k", o) == (None, None)
    assert c.call("mget", ["k", "l"], o) == (None, [None, None])
    assert c.call("exists", ["k"], o) == (None, 0)
    assert c.call("ttl", "k", o) == (None, -2)
    assert c.call("hget", "k", "f", o) == (None, None)
    assert c.call("hgetall", "k", o) == (None, {})
    assert c.call("del", ["k"], o) == (None, 0)
    assert c.call("hdel", "k", ["f"], o) == (None, 0)
    assert c.call("expire", "k", 10, o) == (None, False)
    assert c.call("release", "k", "0123456789abcdef", o) == (None, False)
    err, _ = c.call("fill", "k", "0123456789abcdef", b"v", o)
    assert err_code(err) == "LEASE_INVALID", err
    assert c.call("invalidate", {"pattern": "*"}, o) == (None, {"deleted": 0})
    assert c.call("invalidate", {"keys": ["k"]}, o) == (None, {"deleted": 0})
    assert cache_stats(c)["namespaces"]["fresh"]["misses"] >= 4
