# SPDX-License-Identifier: MIT
"""Every method of the protocol through the raw msgpack-RPC client, checked
against what Redis really holds afterwards."""

import time

import pytest

from conftest import (stored_payload, RpcClient, T, err_code, pack, pack_map_raw, pack_array_raw, raw_request,
                      assert_healthy)

ALL_METHODS = ["hello", "ping", "get", "set", "del", "mget", "mset", "exists", "ttl", "expire",
               "get_or_set", "fill", "release", "invalidate", "hget", "hset", "hdel", "hgetall",
               "stats"]
# Options each method accepts (proto/PROTOCOL.md).
WRITE_OPTS = {"ttl", "ttl_ms", "stale_ttl", "stale_ttl_ms", "ns", "schema", "tags"}
METHOD_OPTS = {
    "hello": set(), "ping": set(), "stats": set(),
    "get": {"consistency", "ns", "schema", "near"}, "mget": {"consistency", "ns", "schema"},
    "set": WRITE_OPTS, "mset": WRITE_OPTS,
    "del": {"ns"}, "expire": {"ns"}, "exists": {"consistency", "ns"}, "ttl": {"consistency", "ns"},
    "get_or_set": {"ns", "schema", "field", "lease_ms", "wait_ms"},
    "fill": {"ns", "schema", "ttl", "ttl_ms", "stale_ttl", "stale_ttl_ms", "field", "tags"},
    "release": {"ns", "field"}, "invalidate": {"ns"},
    "hget": {"consistency", "ns", "schema"}, "hgetall": {"consistency", "ns", "schema"},
    "hset": {"ns", "schema", "ttl", "ttl_ms"}, "hdel": {"ns"},
}
DEFAULT_TTL = 1234
MAX_TTL = 5000


@pytest.fixture
def kcd(harness, redis):
    return harness.kcached(redis, ini={"cache": {"default_ttl": DEFAULT_TTL, "max_ttl": MAX_TTL},
                                       "server": {"max_batch_keys": 10}})


def rkey(k):
    return b"kc:" + (k if isinstance(k, bytes) else k.encode())


def test_hello(cli):
    res = cli.ok("hello")
    assert res["server"] == "kcached"
    assert res["version"] == "0.1.0"
    assert res["protocol"] == 1
    lim = res["limits"]
    assert lim["max_request_bytes"] == 8 * 1024 * 1024
    assert lim["max_batch_keys"] == 10
    assert lim["max_nesting"] == 16
    assert sorted(res["methods"]) == sorted(ALL_METHODS)
    opts = res["options"]
    assert set(opts) == set(ALL_METHODS)
    for m in ALL_METHODS:
        assert set(opts[m]) == METHOD_OPTS[m], m


def test_hello_with_nil_and_empty_options(cli):
    assert cli.ok("hello", None)["server"] == "kcached"
    assert cli.ok("hello", {})["server"] == "kcached"


def test_ping(cli):
    assert cli.call("ping") == (None, "pong")
    assert cli.call("ping", {}) == (None, "pong")
    assert cli.call("ping", None) == (None, "pong")


def test_method_name_as_bin(cli):
    msgid = 77
    cli.send_raw(raw_request(msgid, b"ping", pack([])))
    assert cli.recv_response(msgid) == (None, "pong")


def test_get_miss_and_hit(cli, redis):
    assert cli.call("get", "nope") == (None, None)
    assert cli.call("set", "k1", "v1") == (None, True)
    # Values come back as bin whatever the request used.
    assert cli.call("get", "k1") == (None, b"v1")
    assert stored_payload(redis.cmd("GET", rkey("k1"))) == b"v1"


def test_binary_value_with_nul_bytes(cli, redis):
    v = bytes(range(256)) + b"\x00\x00end\x00"
    assert cli.call("set", b"bin\x00key", v) == (None, True)
    assert cli.call("get", b"bin\x00key") == (None, v)
    assert stored_payload(redis.cmd("GET", rkey(b"bin\x00key"))) == v


def test_one_mib_value(cli, redis):
    v = bytes((i * 7) & 0xFF for i in range(1024 * 1024))
    assert cli.call("set", "big", v, timeout=10) == (None, True)
    assert cli.call("get", "big", timeout=10) == (None, v)
    assert stored_payload(redis.cmd("GET", rkey("big"))) == v


def test_str_and_bin_keys_are_the_same_key(cli):
    assert cli.call("set", "same", b"x") == (None, True)
    assert cli.call("get", b"same") == (None, b"x")
    assert cli.call("set", b"same", b"y") == (None, True)
    assert cli.call("get", "same") == (None, b"y")


def test_utf8_key(cli, redis):
    k = "clé-ключ-鍵"
    assert cli.call("set", k, b"u") == (None, True)
    assert stored_payload(redis.cmd("GET", rkey(k))) == b"u"


def test_set_default_ttl_applied(cli, redis):
    assert cli.call("set", "d", b"v") == (None, True)
    ttl = redis.cmd("TTL", rkey("d"))
    assert DEFAULT_TTL - 5 <= ttl <= DEFAULT_TTL


def test_set_explicit_ttl(cli, redis):
    assert cli.call("set", "e", b"v", {"ttl": 100}) == (None, True)
    ttl = redis.cmd("TTL", rkey("e"))
    assert 95 <= ttl <= 100


def test_set_nil_options_means_defaults(cli, redis):
    assert cli.call("set", "n", b"v", None) == (None, True)
    assert DEFAULT_TTL - 5 <= redis.cmd("TTL", rkey("n")) <= DEFAULT_TTL


@pytest.mark.parametrize("bad", [0, -1, 2 ** 31, 2 ** 63, "10", 1.5, None, True, b"10", [10]])
def test_set_bad_ttl(cli, redis, bad):
    err, res = cli.call("set", "t", b"v", {"ttl": bad})
    assert err_code(err) == "BAD_REQUEST", (bad, err, res)
    assert res is None
    # Nothing was written.
    assert redis.cmd("EXISTS", rkey("t")) == 0
    assert cli.call("ping") == (None, "pong")


def test_set_ttl_limits(cli, redis):
    assert cli.call("set", "one", b"v", {"ttl": 1}) == (None, True)
    assert 0 <= redis.cmd("TTL", rkey("one")) <= 1
    # 2^31-1 is valid, and above max_ttl it is clamped, not refused.
    assert cli.call("set", "max", b"v", {"ttl": 2 ** 31 - 1}) == (None, True)
    ttl = redis.cmd("TTL", rkey("max"))
    assert MAX_TTL - 5 <= ttl <= MAX_TTL


def test_set_ttl_above_max_clamped(cli, redis):
    assert cli.call("set", "c", b"v", {"ttl": MAX_TTL * 10}) == (None, True)
    ttl = redis.cmd("TTL", rkey("c"))
    assert MAX_TTL - 5 <= ttl <= MAX_TTL


def test_del(cli, redis):
    for k in ("a", "b", "c"):
        assert cli.call("set", k, b"v") == (None, True)
    assert cli.call("del", ["a", "b", "missing"]) == (None, 2)
    assert redis.cmd("EXISTS", rkey("a"), rkey("b"), rkey("c")) == 1
    assert cli.call("del", []) == (None, 0)
    assert cli.call("del", [b"c"]) == (None, 1)
    assert cli.call("get", "c") == (None, None)


def test_mget_order_and_misses(cli):
    assert cli.call("set", "m1", b"1") == (None, True)
    assert cli.call("set", "m3", b"3") == (None, True)
    assert cli.call("mget", ["m3", "m2", "m1", b"m3"]) == (None, [b"3", None, b"1", b"3"])
    assert cli.call("mget", []) == (None, [])


def test_mset_default_ttl_every_key(cli, redis):
    assert cli.call("mset", {"x1": b"a", "x2": b"b", b"x3": b"\x00"}) == (None, True)
    assert cli.call("mget", ["x1", "x2", "x3"]) == (None, [b"a", b"b", b"\x00"])
    for k in ("x1", "x2", "x3"):
        ttl = redis.cmd("TTL", rkey(k))
        assert DEFAULT_TTL - 5 <= ttl <= DEFAULT_TTL, k


def test_mset_ttl_every_key(cli, redis):
    assert cli.call("mset", {"y1": b"a", "y2": b"b"}, {"ttl": 77}) == (None, True)
    for k in ("y1", "y2"):
        assert 70 <= redis.cmd("TTL", rkey(k)) <= 77, k
    assert cli.call("mset", {"y3": b"a"}, {"ttl": MAX_TTL + 1}) == (None, True)
    assert MAX_TTL - 5 <= redis.cmd("TTL", rkey("y3")) <= MAX_TTL


@pytest.mark.parametrize("bad", [0, -5, 2 ** 31, "1", 1.0, None])
def test_mset_bad_ttl(cli, redis, bad):
    err, _ = cli.call("mset", {"z1": b"a"}, {"ttl": bad})
    assert err_code(err) == "BAD_REQUEST"
    assert redis.cmd("EXISTS", rkey("z1")) == 0


def test_exists(cli):
    assert cli.call("set", "e1", b"v") == (None, True)
    assert cli.call("set", "e2", b"v") == (None, True)
    assert cli.call("exists", ["e1", "e2", "e3"]) == (None, 2)
    # A key listed twice counts twice, as Redis does.
    assert cli.call("exists", ["e1", "e1"]) == (None, 2)
    assert cli.call("exists", []) == (None, 0)


def test_ttl(cli, redis):
    assert cli.call("ttl", "missing") == (None, -2)
    redis.cmd("SET", rkey("persist"), b"v")
    assert cli.call("ttl", "persist") == (None, -1)
    assert cli.call("set", "t1", b"v", {"ttl": 300}) == (None, True)
    err, ttl = cli.call("ttl", "t1")
    assert err is None and 295 <= ttl <= 300


def test_expire(cli, redis):
    assert cli.call("expire", "nokey", 10) == (None, False)
    redis.cmd("SET", rkey("ex"), b"v")
    assert cli.call("expire", "ex", 50) == (None, True)
    assert 45 <= redis.cmd("TTL", rkey("ex")) <= 50
    # Clamped to max_ttl.
    assert cli.call("expire", "ex", 2 ** 31 - 1) == (None, True)
    assert MAX_TTL - 5 <= redis.cmd("TTL", rkey("ex")) <= MAX_TTL


@pytest.mark.parametrize("bad", [0, -1, 2 ** 31, "10", 1.5, None])
def test_expire_bad_seconds(cli, redis, bad):
    redis.cmd("SET", rkey("ex2"), b"v")
    err, _ = cli.call("expire", "ex2", bad)
    assert err_code(err) == "BAD_REQUEST"
    assert redis.cmd("TTL", rkey("ex2")) == -1


def test_key_prefix_applied(harness, redis):
    k = harness.kcached(redis, ini={"cache": {"key_prefix": "tp{1}:"}})
    c = k.client()
    assert c.call("set", "abc", b"val") == (None, True)
    assert stored_payload(redis.cmd("GET", b"tp{1}:abc")) == b"val"
    assert redis.cmd("EXISTS", b"abc") == 0
    assert redis.cmd("EXISTS", b"kc:abc") == 0
    assert c.call("mset", {"m": b"1"}) == (None, True)
    assert stored_payload(redis.cmd("GET", b"tp{1}:m")) == b"1"
    # Keys without the prefix are invisible to kcached.
    redis.cmd("SET", b"other", b"x")
    assert c.call("get", "other") == (None, None)
    assert c.call("exists", ["abc", "m", "other"]) == (None, 2)
    assert c.call("del", ["abc", "m"]) == (None, 2)
    assert redis.cmd("EXISTS", b"tp{1}:abc", b"tp{1}:m") == 0


def test_empty_key_prefix(harness, redis):
    k = harness.kcached(redis, ini={"cache": {"key_prefix": ""}})
    c = k.client()
    assert c.call("set", "raw", b"val") == (None, True)
    assert stored_payload(redis.cmd("GET", b"raw")) == b"val"


def test_every_written_key_expires(cli, redis):
    cli.ok("set", "w1", b"v")
    cli.ok("mset", {"w2": b"v", "w3": b"v"})
    for k in redis.cmd("KEYS", "*"):
        assert redis.cmd("TTL", k) > 0, k


@pytest.mark.parametrize("method,params", [
    ("set", ["k", b"v", {"bogus": 1}]),
    ("set", ["k", b"v", {"ttl": 5, "bogus": 1}]),
    ("get", ["k", {"ttl": 5}]),           # an option this method does not accept
    ("ping", [{"x": 1}]),
    ("mget", [["k"], {"": 1}]),
    ("hello", [{"ttl": 1}]),
])
def test_unknown_option(cli, method, params):
    err, res = cli.call(method, *params)
    assert err_code(err) == "BAD_REQUEST", (method, params, err, res)
    assert cli.call("ping") == (None, "pong")


def test_duplicate_option_key(cli, redis):
    params = pack_array_raw([pack("dup"), pack(b"v"), pack_map_raw([("ttl", 10), ("ttl", 20)])])
    cli.send_raw(raw_request(5, "set", params))
    err, _ = cli.recv_response(5)
    assert err_code(err) == "BAD_REQUEST"
    assert redis.cmd("EXISTS", rkey("dup")) == 0
    assert cli.call("ping") == (None, "pong")


def test_duplicate_option_key_bin_and_str(cli, redis):
    # "ttl" as str and as bin are the same option name.
    params = pack_array_raw([pack("dup2"), pack(b"v"), pack_map_raw([("ttl", 10), (b"ttl", 20)])])
    cli.send_raw(raw_request(6, "set", params))
    err, _ = cli.recv_response(6)
    assert err_code(err) == "BAD_REQUEST"
    assert redis.cmd("EXISTS", rkey("dup2")) == 0


@pytest.mark.parametrize("method,params", [
    ("get", []),
    ("get", ["a", {}, "extra"]),
    ("get", ["a", "b"]),                  # second arg is neither options nor nil
    ("set", ["k"]),
    ("set", []),
    ("set", ["k", b"v", {}, 1]),
    ("del", []),
    ("del", [["a"], {}, 1]),
    ("mget", []),
    ("mset", []),
    ("exists", []),
    ("ttl", []),
    ("ttl", ["a", "b"]),
    ("expire", ["a"]),
    ("expire", ["a", 10, {}, 1]),
    ("ping", ["x"]),
    ("ping", [{}, {}]),
    ("hello", [1]),
])
def test_wrong_arg_count(cli, method, params):
    err, res = cli.call(method, *params)
    assert err_code(err) == "BAD_REQUEST", (method, params, err, res)
    assert res is None
    assert cli.call("ping") == (None, "pong")


@pytest.mark.parametrize("method,params", [
    ("get", [1]),
    ("get", [None]),
    ("get", [["k"]]),
    ("get", [{"k": 1}]),
    ("get", [True]),
    ("get", [1.5]),
    ("set", [1, b"v"]),
    ("set", ["k", 1]),
    ("set", ["k", None]),
    ("set", ["k", [b"v"]]),
    ("set", ["k", {"a": 1}]),
    ("del", ["k"]),
    ("del", [[1]]),
    ("del", [[None]]),
    ("mget", ["k"]),
    ("mget", [{"k": 1}]),
    ("mget", [["a", 2]]),
    ("mset", [["k", b"v"]]),
    ("mset", ["k"]),
    ("mset", [{"k": 1}]),
    ("mset", [{"k": None}]),
    ("exists", [b"k"]),
    ("exists", [[["k"]]]),
    ("ttl", [1]),
    ("expire", [1, 10]),
    ("expire", ["k", "10"]),
    ("set", ["k", b"v", "opts"]),
    ("set", ["k", b"v", [1]]),
])
def test_wrong_types(cli, redis, method, params):
    err, res = cli.call(method, *params)
    assert err_code(err) == "BAD_REQUEST", (method, params, err, res)
    assert res is None
    assert redis.cmd("DBSIZE") == 0
    assert cli.call("ping") == (None, "pong")


@pytest.mark.parametrize("method,make", [
    ("mget", lambda n: [[f"k{i}" for i in range(n)]]),
    ("del", lambda n: [[f"k{i}" for i in range(n)]]),
    ("exists", lambda n: [[f"k{i}" for i in range(n)]]),
    ("mset", lambda n: [{f"k{i}": b"v" for i in range(n)}]),
])
def test_batch_limit(cli, redis, method, make):
    # max_batch_keys = 10 in this file's kcached: 10 is fine, 11 is TOO_LARGE.
    err, _ = cli.call(method, *make(10))
    assert err is None, err
    err, res = cli.call(method, *make(11))
    assert err_code(err) == "TOO_LARGE", (err, res)
    # The connection stays usable.
    assert cli.call("ping") == (None, "pong")
    if method == "mset":
        assert redis.cmd("EXISTS", rkey("k10")) == 0


def test_backend_error(cli, redis):
    # A key of another type: Redis answers WRONGTYPE, kcached passes it on.
    redis.cmd("LPUSH", rkey("list"), b"x")
    err, res = cli.call("get", "list")
    assert err_code(err) == "BACKEND", (err, res)
    assert "WRONGTYPE" in err["message"]
    assert cli.call("ping") == (None, "pong")
    assert cli.call("ttl", "list") == (None, -1)
    assert cli.call("set", "list", b"now a string") == (None, True)
    assert cli.call("get", "list") == (None, b"now a string")


def test_pipelined_1000(cli):
    n = 1000
    buf = []
    for i in range(n):
        if i % 3 == 0:
            buf.append(pack([0, i, "set", [f"p{i}", b"v%d" % i]]))
        elif i % 3 == 1:
            buf.append(pack([0, i, "get", [f"p{i - 1}"]]))
        else:
            buf.append(pack([0, i, "ping", []]))
    cli.send_raw(b"".join(buf))
    seen = {}
    for _ in range(n):
        obj = cli.recv_obj(timeout=20)
        assert isinstance(obj, list) and len(obj) == 4 and obj[0] == 1, obj
        msgid = obj[1]
        assert 0 <= msgid < n, obj
        assert msgid not in seen, f"msgid {msgid} answered twice"
        seen[msgid] = (obj[2], obj[3])
    assert len(seen) == n
    for i, (err, res) in seen.items():
        assert err is None, (i, err)
        if i % 3 == 0:
            assert res is True
        elif i % 3 == 2:
            assert res == "pong"
    # get i (i % 3 == 1) may run before or after set i-1 is applied (responses may
    # be out of order), but a value it returns must be the right one.
    for i in range(1, n, 3):
        assert seen[i][1] in (None, b"v%d" % (i - 1))
    # Nothing extra.
    assert cli.is_closed(timeout=0.2) is False
    assert not cli.stash and not cli.others


def test_200_concurrent_connections(kcd):
    conns = [RpcClient(kcd.sock) for _ in range(200)]
    try:
        for i, c in enumerate(conns):
            c.request("set", [f"cc{i}", b"val%d" % i])
        for c in conns:
            assert c.recv_response(1, timeout=20) == (None, True)
        for i, c in enumerate(conns):
            c.request("get", [f"cc{i}"])
        for i, c in enumerate(conns):
            assert c.recv_response(2, timeout=20) == (None, b"val%d" % i)
    finally:
        for c in conns:
            c.close()
    assert_healthy(kcd)


def test_notifications_are_not_answered(cli, redis):
    cli.notify("set", ["notified", b"v"])
    cli.notify("ping", [])
    cli.notify("no_such_method", [1, 2])
    assert cli.call("ping") == (None, "pong")
    # Only the request's response came back, and the notification was not executed.
    assert cli.is_closed(timeout=0.2) is False
    assert not cli.stash and not cli.others and not cli.notifications
    assert redis.cmd("EXISTS", rkey("notified")) == 0


def test_msgid_zero_and_max(cli):
    for msgid in (0, 2 ** 32 - 1, 12345):
        cli.send([0, msgid, "ping", []])
        assert cli.recv_response(msgid) == (None, "pong")


def test_same_msgid_twice_in_flight(cli):
    # msgids are the client's business: two requests with the same id both get answered.
    cli.send_raw(pack([0, 9, "ping", []]) + pack([0, 9, "ping", []]))
    a = cli.recv_obj()
    b = cli.recv_obj()
    assert a == [1, 9, None, "pong"] and b == [1, 9, None, "pong"]


def test_key_of_many_sizes(cli):
    for n in (1, 100, 1000, 1024):  # max_key_bytes is 1024 by default
        k = b"k" * n
        assert cli.call("set", k, b"v%d" % n) == (None, True)
        assert cli.call("get", k) == (None, b"v%d" % n)


def test_empty_value(cli, redis):
    assert cli.call("set", "empty", b"") == (None, True)
    assert cli.call("get", "empty") == (None, b"")
    assert redis.cmd("EXISTS", rkey("empty")) == 1


def test_ttl_after_expiry_elapses(cli, redis):
    assert cli.call("set", "short", b"v", {"ttl": 1}) == (None, True)
    deadline = time.monotonic() + T(5)
    while cli.call("get", "short") != (None, None):
        assert time.monotonic() < deadline, "key with ttl 1 did not expire"
        time.sleep(0.05)
    assert cli.call("ttl", "short") == (None, -2)
