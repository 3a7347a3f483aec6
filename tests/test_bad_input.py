# SPDX-License-Identifier: MIT
"""Hostile and malformed input over a real socket (PROTOCOL.md section 11).

Every case runs inside `counted(kcd, <counters>)` (conftest.py): afterwards
the admin `stats` counters the case must move did move, the daemon is alive,
and a SECOND, fresh client's round trip (ping, set, get) works."""

import os
import socket
import threading
import time

import msgpack
import pytest

from conftest import (RpcClient, T, admin_json, admin_stats, assert_healthy, counted, err_code,
                      pack, pack_array_raw, pack_map_raw, raw_request, raise_nofile, rss_kb,
                      round_trip_blocking, stat_of, unix_connect, wait_gauge)

RSS_LIMIT_KB = 200 * 1024
BAD = "errors_by_code.BAD_REQUEST"
TOO_LARGE = "errors_by_code.TOO_LARGE"
PROTO = "protocol_errors"


def send_ignoring_close(c, data):
    """The server may close while we are still writing: that is allowed."""
    try:
        c.send_raw(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


def assert_rss_small(kcd):
    kb = rss_kb(kcd.pid)
    assert kb < RSS_LIMIT_KB, f"kcached RSS {kb} kB after hostile input"


def wait_clients_back(kcd, before):
    """clients_connected is back where it was before the case: kcached closed its side."""
    base = stat_of(before, "clients_connected")
    wait_gauge(kcd, "clients_connected", lambda v: v <= base, 5,
               f"clients_connected back to {base}")


def raw_set(msgid, key, value, opts_packed):
    return raw_request(msgid, "set", pack_array_raw([pack(key), pack(value), opts_packed]))


# --- 1. bytes that are not msgpack, or frames that cannot be answered: closed ---

@pytest.mark.parametrize("data", [
    b"\xc1garbage",
    b"\xc1",
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\xc1",
    b"\x94\x00\x01\xa4ping\x90\xc1",          # a full request, then garbage
])
def test_garbage_closes(kcd, data):
    with counted(kcd, PROTO):
        c = kcd.client()
        send_ignoring_close(c, data)
        assert c.is_closed(timeout=3)


# --- 2 ---
def test_garbage_after_good_request_answers_then_closes(kcd):
    with counted(kcd, PROTO, "requests_by_method.ping"):
        c = kcd.client()
        send_ignoring_close(c, pack([0, 1, "ping", []]) + b"\xc1")
        assert c.is_closed(timeout=3)
        # The good request before the garbage may or may not have been answered,
        # but nothing else can have been sent.
        assert set(c.stash) <= {1}


# --- 3. declared-huge containers ---
@pytest.mark.parametrize("data", [
    b"\xdd\xff\xff\xff\xff",                  # array32 of 4 G elements
    b"\xdd\x20\x00\x00\x00",                  # array32 of 512 M elements
    b"\xc6\xff\xff\xff\xff",                  # bin32 of 4 GiB
    b"\xdb\xff\xff\xff\xff",                  # str32 of 4 GiB
    b"\xdf\x10\x00\x00\x00",                  # map32 of 2^28 pairs
    b"\xc9\xff\xff\xff\xff\x01",              # ext32 of 4 GiB
])
def test_huge_declared_sizes_close_without_allocating(kcd, data):
    before_kb = rss_kb(kcd.pid)
    with counted(kcd, PROTO):
        c = kcd.client()
        # Only the header: no msgid can be read from what follows it.
        send_ignoring_close(c, data)
        assert c.is_closed(timeout=3)
        assert not c.stash, "nothing to answer: no msgid"
        assert_rss_small(kcd)
        assert rss_kb(kcd.pid) < before_kb + 100 * 1024


# --- 4 ---
@pytest.mark.parametrize("inner", [
    b"\xc6\xff\xff\xff\xff",                  # bin32 of 4 GiB as the key
    b"\xdd\x20\x00\x00\x00",                  # array32 of 512 M elements
    b"\xdf\x10\x00\x00\x00",                  # map32 of 2^28 pairs
    b"\xdc\xff\xff" + b"\xc0" * 10,           # array16 of 65535, 10 present
])
def test_huge_declared_size_inside_request_too_large(kcd, inner):
    with counted(kcd, PROTO, TOO_LARGE):
        c = kcd.client()
        params = b"\x91" + inner
        send_ignoring_close(c, raw_request(41, "get", params) + b"\x00" * 64)
        if inner.startswith(b"\xdc"):
            # 65535 declared nils are within max_request_bytes: only a partial
            # object. The client gives up: kcached closes. Then declare more.
            c.close()
            c = kcd.client()
            send_ignoring_close(c, raw_request(41, "get", b"\x91\xdd\x7f\xff\xff\xff"))
        assert c.is_closed(timeout=3)
        assert 41 in c.stash, f"expected a TOO_LARGE response for msgid 41, got {c.stash}"
        err, res = c.stash[41]
        assert err_code(err) == "TOO_LARGE"
        assert_rss_small(kcd)


# --- 5 ---
def test_array32_huge_request_frame(kcd):
    with counted(kcd, PROTO):
        # The outer frame itself declares 2^29 elements: no msgid can be read.
        c = kcd.client()
        send_ignoring_close(c, b"\xdd\x20\x00\x00\x00\x00\x01\xa3get")
        assert c.is_closed(timeout=3)
        # Whether msgid 1 counts as "readable" here is up to the daemon; if it
        # answers, it must be TOO_LARGE for that msgid.
        assert set(c.stash) <= {1}
        if 1 in c.stash:
            assert err_code(c.stash[1][0]) == "TOO_LARGE"
        assert_rss_small(kcd)


def nested(depth):
    return b"\x91" * depth + b"\xc0"


# --- 6. deep nesting ---
def test_nesting_33_inside_request(kcd):
    with counted(kcd, PROTO, BAD):
        c = kcd.client()
        send_ignoring_close(c, raw_request(7, "get", b"\x91" + nested(33)))
        # Spec: BAD_REQUEST for msgid 7, then the connection is closed.
        assert c.is_closed(timeout=3)
        assert 7 in c.stash, "expected a BAD_REQUEST response for msgid 7 before the close"
        assert err_code(c.stash[7][0]) == "BAD_REQUEST"


# --- 7 ---
def test_nesting_within_limit_is_just_a_type_error(kcd):
    with counted(kcd, BAD):
        # A nested structure within max_nesting is parsed; as a key it is a wrong type.
        c = kcd.client()
        c.send_raw(raw_request(8, "get", b"\x91" + nested(8)))
        err, _ = c.recv_response(8)
        assert err_code(err) == "BAD_REQUEST"
        assert c.call("ping") == (None, "pong")


# --- 8 ---
@pytest.mark.parametrize("head", [b"\x91", b"\x81\xc0"])  # arrays, or maps nil -> {...}
def test_nesting_10000_top_level(kcd, head):
    with counted(kcd, PROTO):
        c = kcd.client()
        send_ignoring_close(c, head * 10000 + b"\xc0")
        assert c.is_closed(timeout=3)


# --- 9. truncated objects ---
def test_truncated_then_close(kcd):
    pieces = (b"\x94\x00\x01\xa3ge", b"\x94", b"\xc6\x00\x00\x10\x00abc",
              pack([0, 1, "set", ["k", b"v" * 1000]])[:-10], b"\xcf\x00\x00",
              b"\x94\x00\xce\x00\x00")
    with counted(kcd, ("clients_accepted", len(pieces))) as cc:
        for data in pieces:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(kcd.sock)
            s.sendall(data)
            s.close()
    wait_clients_back(kcd, cc.before)


# --- 10 ---
def test_truncated_then_half_close(kcd):
    with counted(kcd, "clients_accepted") as cc:
        c = kcd.client()
        c.send_raw(b"\x94\x00\x01\xa3ge")
        c.sock.shutdown(socket.SHUT_WR)
        assert c.is_closed(timeout=3)
        assert not c.stash
    wait_clients_back(kcd, cc.before)


# --- 11. half-close after a request ---
def test_client_half_close_after_request_still_answered(kcd):
    with counted(kcd, "requests_by_method.ping", "requests_by_method.set") as cc:
        c = kcd.client()
        c.send_raw(pack([0, 3, "ping", []]) + pack([0, 4, "set", ["hc", b"v"]]))
        c.sock.shutdown(socket.SHUT_WR)
        assert c.recv_response(3) == (None, "pong")
        assert c.recv_response(4) == (None, True)
        assert c.is_closed(timeout=3), "kcached keeps a half-closed, answered peer open"
    wait_clients_back(kcd, cc.before)


# --- 12. bad msgids ---
@pytest.mark.parametrize("msgid", [-1, 2 ** 32, 2 ** 64 - 1, -2 ** 63, "x", 1.5, None, b"\x01",
                                   [1], {"a": 1}, True])
def test_bad_msgid_closes(kcd, msgid):
    with counted(kcd, PROTO):
        c = kcd.client()
        send_ignoring_close(c, pack([0, msgid, "ping", []]))
        assert c.is_closed(timeout=3)
        assert not c.stash and not c.notifications


# --- 13. msgid edges that are valid (control) ---
def test_msgid_zero_and_max_answered(kcd):
    with counted(kcd, ("requests_by_method.ping", 2)):
        c = kcd.client()
        c.send_raw(pack_array_raw([pack(0), b"\xce\xff\xff\xff\xff", pack("ping"), b"\x90"]))
        assert c.recv_response(2 ** 32 - 1) == (None, "pong")
        # msgid 0 as a uint32 with a non-minimal encoding is still msgid 0.
        c.send_raw(pack_array_raw([pack(0), b"\xce\x00\x00\x00\x00", pack("ping"), b"\x90"]))
        assert c.recv_response(0) == (None, "pong")


# --- 14 ---
def test_unknown_method(kcd):
    with counted(kcd, ("errors_by_code.NO_METHOD", 4)):
        c = kcd.client()
        err, res = c.call("flushall")
        assert err_code(err) == "NO_METHOD"
        assert res is None
        err, _ = c.call("GET", "k")  # names are case sensitive
        assert err_code(err) == "NO_METHOD"
        err, _ = c.call("", "k")
        assert err_code(err) == "NO_METHOD"
        err, _ = c.call("get\0", "k")
        assert err_code(err) == "NO_METHOD"
        assert c.call("ping") == (None, "pong")


# --- 15. unknown options ---
@pytest.mark.parametrize("method,params", [
    ("set", ["k", b"v", {"nx": True}]),
    ("get", ["k", {"ttl": 5}]),
    ("ping", [{"x": 1}]),
    ("del", [["k"], {"schema": "s"}]),
    ("get", ["k", {"": 1}]),
])
def test_unknown_option(kcd, redis, method, params):
    with counted(kcd, BAD):
        c = kcd.client()
        err, _ = c.call(method, *params)
        assert err_code(err) == "BAD_REQUEST"
        assert c.call("ping") == (None, "pong")
    assert redis.cmd("GET", "kc:k") is None


# --- 16 ---
@pytest.mark.parametrize("key", [1, None, [1], 1.5, True])
def test_options_map_with_non_string_key(kcd, key):
    with counted(kcd, BAD):
        c = kcd.client()
        c.send_raw(raw_set(5, "k", b"v", pack_map_raw([(key, 2)])))
        err, _ = c.recv_response(5)
        assert err_code(err) == "BAD_REQUEST"
        assert c.call("ping") == (None, "pong")


# --- 17. duplicate option keys ---
@pytest.mark.parametrize("pairs", [
    [("ttl", 10), ("ttl", 20)],
    [("ttl", 10), (b"ttl", 10)],               # once as str, once as bin
    [("ns", "a"), ("ns", "a")],
    [("schema", "s"), ("ttl", 5), ("schema", "t")],
], ids=["ttl-twice", "str-and-bin", "ns-twice", "schema-apart"])
def test_duplicate_option_keys(kcd, redis, pairs):
    with counted(kcd, BAD):
        c = kcd.client()
        c.send_raw(raw_set(6, "dup", b"v", pack_map_raw(pairs)))
        err, _ = c.recv_response(6)
        assert err_code(err) == "BAD_REQUEST", err
        assert c.call("ping") == (None, "pong")
    assert redis.cmd("GET", "kc:dup") is None, "a refused request wrote its key"


# --- 18. non-requests with no msgid: kcache.error notification ---
@pytest.mark.parametrize("obj", [
    42, "hello", b"bin", [], [7, 1, 2, 3], [1, 5, None, "pong"], {"a": 1}, None, True,
    [3, 1, "ping", []], 1.5, [-1, 1, "ping", []],
])
def test_non_request_objects_get_error_notification(kcd, obj):
    with counted(kcd, PROTO, BAD):
        c = kcd.client()
        c.send(obj)
        method, params = c.recv_notification(timeout=3)
        assert method == "kcache.error"
        assert isinstance(params, list) and len(params) == 1, params
        assert err_code(params[0]) == "BAD_REQUEST"
        # The connection stays usable.
        assert c.call("ping") == (None, "pong")
        assert not c.stash


# --- 19. wrong array lengths / shapes with a readable msgid ---
@pytest.mark.parametrize("obj", [
    [0, 3, "ping"],                 # 3 elements
    [0, 3, "ping", [], 5],          # 5 elements
    [0, 3, "ping", [], 5, 6, 7],    # 7 elements
    [0, 3, 12, []],                 # method not str/bin
    [0, 3, None, []],
    [0, 3, ["ping"], []],
    [0, 3, "ping", {}],             # params not an array
    [0, 3, "ping", None],
    [0, 3, "ping", "x"],
])
def test_bad_request_shape_answered(kcd, obj):
    with counted(kcd, BAD):
        c = kcd.client()
        c.send(obj)
        err, res = c.recv_response(3, timeout=3)
        assert err_code(err) == "BAD_REQUEST", (obj, err, res)
        assert c.call("ping") == (None, "pong")


# --- 20. wrong argument counts ---
@pytest.mark.parametrize("method,params", [
    ("get", []), ("get", ["a", None, "extra"]), ("set", ["k"]), ("set", ["k", b"v", None, 1]),
    ("mget", []), ("del", ["a", "b", None, 1]), ("expire", ["k"]), ("fill", ["k", "t"]),
])
def test_wrong_argument_count(kcd, method, params):
    with counted(kcd, BAD):
        c = kcd.client()
        err, _ = c.call(method, *params)
        assert err_code(err) == "BAD_REQUEST", (method, params, err)


# --- 21. nil/array/map (and other types) where bytes are expected ---
WRONG = [None, [], ["k"], {}, {"k": b"v"}, 1, -1, True, 1.5]


@pytest.mark.parametrize("bad", WRONG, ids=[repr(w) for w in WRONG])
def test_wrong_types_where_bytes_expected(kcd, redis, bad):
    calls = [("get", [bad]), ("set", [bad, b"v"]), ("set", ["wt", bad]), ("mget", [[bad]]),
             ("del", [[bad]]), ("exists", [["a", bad]]), ("ttl", [bad]), ("hget", ["h", bad]),
             ("hset", ["h", {"f": bad}]), ("mset", [{"wt": bad}]), ("get_or_set", [bad]),
             ("release", ["k", bad]), ("invalidate", [{"keys": [bad]}])]
    with counted(kcd, (BAD, len(calls))):
        c = kcd.client()
        for method, params in calls:
            err, _ = c.call(method, *params)
            assert err_code(err) == "BAD_REQUEST", (method, params, err)
        assert c.call("ping") == (None, "pong")
    assert redis.cmd("GET", "kc:wt") is None


# --- 22. msgpack ext and float where bytes are expected ---
def test_ext_type_as_key(kcd):
    ext = msgpack.packb(msgpack.ExtType(5, b"key"))
    with counted(kcd, (BAD, 2)):
        c = kcd.client()
        c.send_raw(raw_request(11, "get", pack_array_raw([ext])))
        assert err_code(c.recv_response(11)[0]) == "BAD_REQUEST"
        c.send_raw(raw_set(12, "k", b"v", ext))  # ext as the options map
        assert err_code(c.recv_response(12)[0]) == "BAD_REQUEST"


# --- 23. negative/zero/huge/string ttl ---
TTLS = [0, -1, -2 ** 63, 2 ** 31, 2 ** 32, 2 ** 64 - 1, 1.0, 10.5, "10", b"10", True, False,
        None, [10], {"s": 10}]


@pytest.mark.parametrize("ttl", TTLS, ids=[repr(t) for t in TTLS])
def test_bad_ttl(kcd, redis, ttl):
    calls = [("set", ["bt", b"v", {"ttl": ttl}]), ("set", ["bt", b"v", {"ttl_ms": ttl}]),
             ("set", ["bt", b"v", {"stale_ttl": ttl}]),
             ("set", ["bt", b"v", {"stale_ttl_ms": ttl}]),
             ("mset", [{"bt": b"v"}, {"ttl": ttl}]), ("expire", ["bt", ttl]),
             ("hset", ["bt", {"f": b"v"}, {"ttl": ttl}])]
    with counted(kcd, (BAD, len(calls))):
        c = kcd.client()
        for method, params in calls:
            err, _ = c.call(method, *params)
            assert err_code(err) == "BAD_REQUEST", (method, params, err)
    assert redis.cmd("EXISTS", "kc:bt") == 0, "a refused ttl wrote its key"


# --- 24 ---
def test_ttl_and_ttl_ms_together(kcd, redis):
    with counted(kcd, (BAD, 2)):
        c = kcd.client()
        err, _ = c.call("set", "tt", b"v", {"ttl": 5, "ttl_ms": 5000})
        assert err_code(err) == "BAD_REQUEST"
        err, _ = c.call("set", "tt", b"v", {"stale_ttl": 5, "stale_ttl_ms": 5000})
        assert err_code(err) == "BAD_REQUEST"
    assert redis.cmd("GET", "kc:tt") is None


# --- 25. keys over max_key_bytes ---
def test_key_over_max_key_bytes(kcd, redis):
    long_key = b"K" * 1025
    calls = [("get", [long_key]), ("set", [long_key, b"v"]), ("del", [[b"a", long_key]]),
             ("mget", [[long_key]]), ("exists", [[long_key]]), ("ttl", [long_key]),
             ("expire", [long_key, 5]), ("get_or_set", [long_key]), ("hget", [long_key, b"f"]),
             ("mset", [{long_key: b"v"}]), ("set", [long_key, b"v", {"ns": "n"}])]
    with counted(kcd, (TOO_LARGE, len(calls))):
        c = kcd.client()
        for method, params in calls:
            err, _ = c.call(method, *params)
            assert err_code(err) == "TOO_LARGE", (method, err)
        # Exactly max_key_bytes is fine; the connection stayed open throughout.
        assert c.call("set", b"K" * 1024, b"ok") == (None, True)
        assert c.call("get", b"K" * 1024) == (None, b"ok")
    assert redis.cmd("EXISTS", b"kc:" + long_key) == 0


# --- 26 ---
@pytest.fixture
def tight_kcd(harness, redis):
    return harness.kcached(redis, ini={"server": {"max_batch_keys": 10},
                                       "cache": {"max_value_bytes": 1000}})


def test_value_over_max_value_bytes(tight_kcd, redis):
    with counted(tight_kcd, (TOO_LARGE, 3)):
        c = tight_kcd.client()
        for method, params in (("set", ["bigv", b"x" * 1001]), ("mset", [{"bigv": b"x" * 1001}]),
                               ("hset", ["bigv", {"f": b"x" * 1001}])):
            err, _ = c.call(method, *params)
            assert err_code(err) == "TOO_LARGE", (method, err)
        assert c.call("set", "bigv", b"x" * 1000) == (None, True)
    assert stored_len(redis, "kc:bigv") >= 1000


def stored_len(redis, key):
    v = redis.cmd("GET", key)
    return 0 if v is None else len(v)


# --- 27 ---
def test_batch_over_max_batch_keys(tight_kcd):
    keys = [f"b{i}" for i in range(11)]
    with counted(tight_kcd, (TOO_LARGE, 5)):
        c = tight_kcd.client()
        for method, params in (("mget", [keys]), ("del", [keys]), ("exists", [keys]),
                               ("mset", [{k: b"v" for k in keys}]),
                               ("hdel", ["h", keys])):
            err, _ = c.call(method, *params)
            assert err_code(err) == "TOO_LARGE", (method, err)
        assert c.call("mget", keys[:10]) == (None, [None] * 10)


# --- 28. keys and namespaces that are not allowed ---
def test_bad_keys_and_namespaces(kcd, redis):
    calls = [("set", [b"\0k", b"v"]), ("get", [b"\0"]),
             ("set", ["k", b"v", {"ns": ""}]), ("set", ["k", b"v", {"ns": "a\0b"}]),
             ("set", ["k", b"v", {"ns": "n" * 256}]), ("set", ["k", b"v", {"ns": 5}]),
             ("set", ["k", b"v", {"schema": "s" * 256}]), ("set", ["k", b"v", {"tags": "t"}]),
             ("set", ["k", b"v", {"tags": [1]}]), ("get", ["k", {"consistency": "all"}]),
             ("get_or_set", ["k", {"lease_ms": 0}]), ("get_or_set", ["k", {"field": ""}])]
    with counted(kcd, (BAD, len(calls))):
        c = kcd.client()
        for method, params in calls:
            err, _ = c.call(method, *params)
            assert err_code(err) == "BAD_REQUEST", (method, params, err)
    assert redis.cmd("EXISTS", "kc:k", b"kc:\0k") == 0


# --- 29. bad invalidate selectors, fill tokens ---
@pytest.mark.parametrize("sel", [{}, {"keys": ["a"], "tags": ["t"]}, {"nope": 1}, "keys",
                                 {"keys": "a"}, {"tags": []}, {"namespace": 5}, {"pattern": None},
                                 None, []])
def test_bad_invalidate_selector(kcd, sel):
    with counted(kcd, BAD):
        c = kcd.client()
        err, _ = c.call("invalidate", sel)
        assert err_code(err) == "BAD_REQUEST", (sel, err)


def test_fill_and_release_token_not_string(kcd):
    with counted(kcd, (BAD, 4)):
        c = kcd.client()
        for tok in (None, 5, [b"t"], {"t": 1}):
            err, _ = c.call("fill" if tok is not None else "release",
                            *(["ft", tok, b"v"] if tok is not None else ["ft", tok]))
            assert err_code(err) == "BAD_REQUEST", (tok, err)


# --- 30. notifications from the client ---
def test_client_notifications_counted_not_answered(kcd, redis):
    with counted(kcd, ("notifications", 3)):
        c = kcd.client()
        c.notify("set", ["notified", b"v"])
        c.notify("nosuch", [])
        c.notify("ping", [])
        assert c.call("ping") == (None, "pong")
        assert not c.stash and not c.notifications
    assert redis.cmd("GET", "kc:notified") is None, "a notification was executed"


# --- 31. oversized requests ---
@pytest.fixture
def small_kcd(harness, redis):
    return harness.kcached(redis, ini={"server": {"max_request_bytes": 65536}})


def test_oversized_request_too_large_then_close(small_kcd):
    with counted(small_kcd, PROTO, TOO_LARGE):
        c = small_kcd.client()
        assert c.ok("hello")["limits"]["max_request_bytes"] == 65536
        send_ignoring_close(c, pack([0, 9, "set", ["big", b"x" * 200000]]))
        assert c.is_closed(timeout=5)
        assert 9 in c.stash, f"expected TOO_LARGE for msgid 9, got {c.stash}"
        assert err_code(c.stash[9][0]) == "TOO_LARGE"


# --- 32 ---
def test_oversized_many_small_objects(small_kcd):
    with counted(small_kcd, PROTO, TOO_LARGE):
        # Declared sizes are small, but the request as a whole is above the limit.
        c = small_kcd.client()
        keys = [b"k%06d" % i for i in range(20000)]
        send_ignoring_close(c, pack([0, 10, "mget", [keys]]))
        assert c.is_closed(timeout=5)
        assert 10 in c.stash
        assert err_code(c.stash[10][0]) == "TOO_LARGE"


# --- 33 (control) ---
def test_request_just_under_limit_works(small_kcd):
    with counted(small_kcd, "requests_by_method.set", "requests_by_method.get"):
        c = small_kcd.client()
        v = b"y" * 60000
        assert c.call("set", "under", v) == (None, True)
        assert c.call("get", "under") == (None, v)


# --- 34 ---
def test_many_hostile_clients_then_healthy(kcd):
    payloads = [b"\xc1", b"\xdd\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff", b"\x91" * 100,
                pack([0, -1, "ping", []]), b"\x94\x00"]
    with counted(kcd, (PROTO, 50), ("clients_accepted", 60)) as cc:
        conns = []
        for i in range(60):
            c = RpcClient(kcd.sock)
            conns.append(c)
            send_ignoring_close(c, payloads[i % len(payloads)])
        for c in conns:
            c.is_closed(timeout=0.05)
            c.close()
        assert_rss_small(kcd)
    wait_clients_back(kcd, cc.before)


# --- 35 ---
def test_slow_byte_by_byte_request(kcd):
    with counted(kcd, "requests_by_method.set"):
        c = kcd.client()
        data = pack([0, 21, "set", ["slow", b"v"]])
        for b in data:
            c.send_raw(bytes([b]))
        assert c.recv_response(21) == (None, True)
        assert c.call("get", "slow") == (None, b"v")


# --- 36 ---
def test_peer_disconnects_with_requests_in_flight(kcd):
    with counted(kcd, ("clients_accepted", 20), ("requests_by_method.set", 20)) as cc:
        for _ in range(20):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(kcd.sock)
            s.sendall(b"".join(pack([0, i, "set", [f"gone{i}", b"v"]]) for i in range(50)))
            s.close()
    wait_clients_back(kcd, cc.before)
    assert stat_of(admin_stats(kcd), "inflight") == 0 or wait_gauge(
        kcd, "inflight", lambda v: v == 0, 5, "abandoned requests to finish") == 0


# --- 37. close mid-response ---
def test_close_mid_response(kcd):
    big = os.urandom(1 << 20)
    c0 = kcd.client()
    assert c0.call("set", "bigval", big) == (None, True)
    with counted(kcd, ("requests_by_method.get", 16 * 5)) as cc:
        for _ in range(5):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(kcd.sock)
            s.sendall(b"".join(pack([0, i, "get", ["bigval"]]) for i in range(16)))
            s.settimeout(T(5))
            got = 0
            while got < 100000:  # part of the first answer, then gone
                got += len(s.recv(65536))
            s.close()
    wait_clients_back(kcd, cc.before)
    assert c0.call("get", "bigval") == (None, big)


# --- 38. a reader that never reads ---
def test_reader_that_never_reads(kcd):
    # A client that pipelines a lot and never reads must not hurt other clients.
    with counted(kcd, ("requests_by_method.get", 1000)) as cc:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(kcd.sock)
        s.setblocking(False)
        req = pack([0, 1, "get", ["nothing"]])
        try:
            for _ in range(2000):
                try:
                    s.send(req * 50)
                except BlockingIOError:
                    break
            assert_healthy(kcd)
            assert_rss_small(kcd)
        finally:
            s.close()
    wait_clients_back(kcd, cc.before)


# --- 39. 100,000 pipelined requests, then no reading ---
def test_100k_pipelined_requests_then_no_reading(kcd):
    """kcached may read them all and queue the answers, or stop reading once
    the answers back up (backpressure): either way the client that never
    reads costs bounded memory, in-flight requests stay within
    max_inflight_per_client (default 1024), and others are served."""
    n = 100000
    data = b"".join(pack([0, i, "get", [f"p{i % 100}"]]) for i in range(n))
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(kcd.sock)
    s.setblocking(False)
    state = {"off": 0, "err": None}
    stop = threading.Event()

    def sender():
        deadline = time.monotonic() + T(8)
        while state["off"] < len(data) and not stop.is_set() and time.monotonic() < deadline:
            try:
                state["off"] += s.send(data[state["off"]:state["off"] + 65536])
            except BlockingIOError:
                time.sleep(0.001)
            except OSError as e:
                state["err"] = e
                return
    rss0 = rss_kb(kcd.pid)
    with counted(kcd, ("requests_by_method.get", 1000), timeout=10) as cc:
        t = threading.Thread(target=sender, daemon=True)
        t.start()
        peak = 0
        try:
            while t.is_alive():
                peak = max(peak, stat_of(admin_stats(kcd), "inflight"))
                t0 = time.monotonic()
                assert_healthy(kcd)
                assert time.monotonic() - t0 < T(1), "another client waited over 1 s"
                t.join(0.02)
        finally:
            stop.set()
            t.join()
        assert state["err"] is None, f"kcached closed the connection: {state['err']!r}"
        assert peak <= 1024 + 64, f"{peak} requests in flight: max_inflight_per_client broken"
    wait_gauge(kcd, "inflight", lambda v: v == 0, 10, "every request read answered")
    cl = admin_json(kcd, "clients")["clients"]
    grew = rss_kb(kcd.pid) - rss0
    print(f"100k pipelined: sent {state['off']} of {len(data)} bytes, kcached read "
          f"{cc.delta('requests_by_method.get')} gets, clients {cl}, RSS +{grew} kB")
    assert grew < 64 * 1024, f"kcached RSS grew {grew} kB for one client that does not read"
    s.close()
    wait_clients_back(kcd, cc.before)


# --- 40. 10,000 idle connections ---
IDLE_CONNS = 10000


def test_10000_idle_connections(harness, redis):
    max_clients = IDLE_CONNS + 100
    # kcached inherits our limits and raises its soft limit to the hard one;
    # it needs max_clients + its pool + 64. We need the 10,000 sockets too.
    raise_nofile(max_clients + 512)
    k = harness.kcached(redis, ini={"server": {"max_clients": max_clients}})
    rss0 = rss_kb(k.pid)
    socks = []
    try:
        # healthy=False: RpcClient uses select(), which cannot watch fds above 1023.
        with counted(k, ("clients_accepted", IDLE_CONNS), healthy=False) as cc:
            t0 = time.monotonic()
            for _ in range(IDLE_CONNS):
                socks.append(unix_connect(k.sock))
            base = stat_of(cc.before, "clients_connected")
            wait_gauge(k, "clients_connected", lambda v: v >= base + IDLE_CONNS, 30,
                       f"{IDLE_CONNS} idle connections accepted")
            took = time.monotonic() - t0
            t1 = time.monotonic()
            round_trip_blocking(k)
            assert time.monotonic() - t1 < T(1), "a round trip took over 1 s with 10k idle peers"
        grew = rss_kb(k.pid) - rss0
        print(f"10,000 idle connections: connected in {took:.2f}s, kcached RSS +{grew} kB")
        assert grew < 64 * 1024, f"kcached RSS grew {grew} kB for {IDLE_CONNS} idle connections"
        # They are all still open and still served.
        for s in socks[::1000]:
            s.sendall(pack([0, 1, "ping", []]))
            assert msgpack.unpackb(s.recv(64), raw=False) == [1, 1, None, "pong"]
        round_trip_blocking(k)
    finally:
        for s in socks:
            s.close()
    wait_clients_back(k, cc.before)
    assert_healthy(k)

