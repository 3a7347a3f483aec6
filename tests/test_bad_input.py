# SPDX-License-Identifier: MIT
"""Hostile and malformed input. After every case a SECOND client must still be
served and the daemon must be alive (assert_healthy)."""

import socket
import struct

import pytest

from conftest import (RpcClient, ConnectionClosed, T, assert_healthy, err_code, pack,
                      pack_array_raw, raw_request, rss_kb, wait_until)

RSS_LIMIT_KB = 200 * 1024


def send_ignoring_close(c, data):
    """The server may close while we are still writing: that is allowed."""
    try:
        c.send_raw(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


def assert_rss_small(kcd):
    kb = rss_kb(kcd.pid)
    assert kb < RSS_LIMIT_KB, f"kcached RSS {kb} kB after hostile input"


# --- bytes that are not msgpack, or frames that cannot be answered: closed ---

@pytest.mark.parametrize("data", [
    b"\xc1garbage",
    b"\xc1",
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\xc1",
    b"\x94\x00\x01\xa4ping\x90\xc1",          # a full request, then garbage
])
def test_garbage_closes(kcd, data):
    c = kcd.client()
    send_ignoring_close(c, data)
    assert c.is_closed(timeout=3)
    assert_healthy(kcd)


def test_garbage_after_good_request_answers_then_closes(kcd):
    c = kcd.client()
    send_ignoring_close(c, pack([0, 1, "ping", []]) + b"\xc1")
    assert c.is_closed(timeout=3)
    # The good request before the garbage may or may not have been answered,
    # but nothing else can have been sent.
    assert set(c.stash) <= {1}
    assert_healthy(kcd)


@pytest.mark.parametrize("data", [
    b"\xdd\xff\xff\xff\xff",                  # array32 of 4 G elements
    b"\xdd\x20\x00\x00\x00",                  # array32 of 512 M elements
    b"\xc6\xff\xff\xff\xff",                  # bin32 of 4 GiB
    b"\xdb\xff\xff\xff\xff",                  # str32 of 4 GiB
    b"\xdf\x10\x00\x00\x00",                  # map32 of 2^28 pairs
    b"\xc9\xff\xff\xff\xff\x01",              # ext32 of 4 GiB
])
def test_huge_declared_sizes_close_without_allocating(kcd, data):
    c = kcd.client()
    before = rss_kb(kcd.pid)
    # Only the header: no msgid can be read from what follows it.
    send_ignoring_close(c, data)
    assert c.is_closed(timeout=3)
    assert not c.stash, "nothing to answer: no msgid"
    assert_rss_small(kcd)
    assert rss_kb(kcd.pid) < before + 100 * 1024
    assert_healthy(kcd)


@pytest.mark.parametrize("inner", [
    b"\xc6\xff\xff\xff\xff",                  # bin32 of 4 GiB as the key
    b"\xdd\x20\x00\x00\x00",                  # array32 of 512 M elements
    b"\xdf\x10\x00\x00\x00",                  # map32 of 2^28 pairs
])
def test_huge_declared_size_inside_request_too_large(kcd, inner):
    c = kcd.client()
    params = b"\x91" + inner
    send_ignoring_close(c, raw_request(41, "get", params) + b"\x00" * 64)
    assert c.is_closed(timeout=3)
    assert 41 in c.stash, f"expected a TOO_LARGE response for msgid 41, got {c.stash}"
    err, res = c.stash[41]
    assert err_code(err) == "TOO_LARGE"
    assert_rss_small(kcd)
    assert_healthy(kcd)


def test_array32_huge_request_frame(kcd):
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
    assert_healthy(kcd)


def nested(depth):
    return b"\x91" * depth + b"\xc0"


def test_nesting_33_inside_request(kcd):
    c = kcd.client()
    send_ignoring_close(c, raw_request(7, "get", b"\x91" + nested(33)))
    # Spec: BAD_REQUEST for msgid 7, then the connection is closed.
    assert c.is_closed(timeout=3)
    assert 7 in c.stash, "expected a BAD_REQUEST response for msgid 7 before the close"
    assert err_code(c.stash[7][0]) == "BAD_REQUEST"
    assert_healthy(kcd)


def test_nesting_within_limit_is_just_a_type_error(kcd):
    # A nested structure within max_nesting is parsed; as a key it is a wrong type.
    c = kcd.client()
    c.send_raw(raw_request(8, "get", b"\x91" + nested(8)))
    err, _ = c.recv_response(8)
    assert err_code(err) == "BAD_REQUEST"
    assert c.call("ping") == (None, "pong")


def test_nesting_10000_top_level(kcd):
    c = kcd.client()
    send_ignoring_close(c, b"\x91" * 10000 + b"\xc0")
    assert c.is_closed(timeout=3)
    assert_healthy(kcd)


def test_truncated_then_close(kcd):
    for data in (b"\x94\x00\x01\xa3ge", b"\x94", b"\xc6\x00\x00\x10\x00abc",
                 pack([0, 1, "set", ["k", b"v" * 1000]])[:-10]):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(kcd.sock)
        s.sendall(data)
        s.close()
    assert_healthy(kcd)


def test_truncated_then_half_close(kcd):
    c = kcd.client()
    c.send_raw(b"\x94\x00\x01\xa3ge")
    c.sock.shutdown(socket.SHUT_WR)
    assert c.is_closed(timeout=3)
    assert_healthy(kcd)


def test_client_half_close_after_request_still_answered(kcd):
    c = kcd.client()
    c.send_raw(pack([0, 3, "ping", []]))
    c.sock.shutdown(socket.SHUT_WR)
    assert c.recv_response(3) == (None, "pong")
    assert_healthy(kcd)


@pytest.mark.parametrize("msgid", [-1, 2 ** 32, "x", 1.5, None, b"\x01", [1], True])
def test_bad_msgid_closes(kcd, msgid):
    c = kcd.client()
    send_ignoring_close(c, pack([0, msgid, "ping", []]))
    assert c.is_closed(timeout=3)
    assert not c.stash and not c.notifications
    assert_healthy(kcd)


def test_unknown_method(kcd):
    c = kcd.client()
    err, res = c.call("flushall")
    assert err_code(err) == "NO_METHOD"
    assert res is None
    err, _ = c.call("GET", "k")  # names are case sensitive
    assert err_code(err) == "NO_METHOD"
    err, _ = c.call("", "k")
    assert err_code(err) == "NO_METHOD"
    assert c.call("ping") == (None, "pong")
    assert_healthy(kcd)


def test_unknown_option(kcd):
    c = kcd.client()
    err, _ = c.call("set", "k", b"v", {"nx": True})
    assert err_code(err) == "BAD_REQUEST"
    assert c.call("ping") == (None, "pong")
    assert_healthy(kcd)


def test_options_map_with_non_string_key(kcd):
    c = kcd.client()
    err, _ = c.call("set", "k", b"v", {1: 2})
    assert err_code(err) == "BAD_REQUEST"
    assert c.call("ping") == (None, "pong")


@pytest.mark.parametrize("obj", [
    42, "hello", b"bin", [], [7, 1, 2, 3], [1, 5, None, "pong"], {"a": 1}, None, True,
    [3, 1, "ping", []],
])
def test_non_request_objects_get_error_notification(kcd, obj):
    c = kcd.client()
    c.send(obj)
    method, params = c.recv_notification(timeout=3)
    assert method == "kcache.error"
    assert isinstance(params, list) and len(params) == 1, params
    assert err_code(params[0]) == "BAD_REQUEST"
    # The connection stays usable.
    assert c.call("ping") == (None, "pong")
    assert not c.stash
    assert_healthy(kcd)


@pytest.mark.parametrize("obj", [
    [0, 3, "ping"],                 # 3 elements
    [0, 3, "ping", [], 5],          # 5 elements
    [0, 3, 12, []],                 # method not str/bin
    [0, 3, None, []],
    [0, 3, "ping", {}],             # params not an array
    [0, 3, "ping", None],
    [0, 3, "ping", "x"],
])
def test_bad_request_shape_answered(kcd, obj):
    c = kcd.client()
    c.send(obj)
    err, res = c.recv_response(3, timeout=3)
    assert err_code(err) == "BAD_REQUEST", (obj, err, res)
    assert c.call("ping") == (None, "pong")
    assert_healthy(kcd)


def test_wrong_types_keep_connection(kcd):
    c = kcd.client()
    for params in (["k", 1], [1, b"v"], [None, None], [["k"], {"k": 1}]):
        err, _ = c.call("set", *params)
        assert err_code(err) == "BAD_REQUEST"
    assert c.call("ping") == (None, "pong")
    assert_healthy(kcd)


@pytest.fixture
def small_kcd(harness, redis):
    return harness.kcached(redis, ini={"server": {"max_request_bytes": 65536}})


def test_oversized_request_too_large_then_close(small_kcd):
    c = small_kcd.client()
    assert c.ok("hello")["limits"]["max_request_bytes"] == 65536
    send_ignoring_close(c, pack([0, 9, "set", ["big", b"x" * 200000]]))
    assert c.is_closed(timeout=5)
    assert 9 in c.stash, f"expected TOO_LARGE for msgid 9, got {c.stash}"
    assert err_code(c.stash[9][0]) == "TOO_LARGE"
    assert_healthy(small_kcd)


def test_oversized_many_small_objects(small_kcd):
    # Declared sizes are small, but the request as a whole is above the limit.
    c = small_kcd.client()
    keys = [b"k%06d" % i for i in range(20000)]
    send_ignoring_close(c, pack([0, 10, "mget", [keys]]))
    assert c.is_closed(timeout=5)
    assert 10 in c.stash
    assert err_code(c.stash[10][0]) == "TOO_LARGE"
    assert_healthy(small_kcd)


def test_request_just_under_limit_works(small_kcd):
    c = small_kcd.client()
    v = b"y" * 60000
    assert c.call("set", "under", v) == (None, True)
    assert c.call("get", "under") == (None, v)


def test_many_hostile_clients_then_healthy(kcd):
    payloads = [b"\xc1", b"\xdd\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff", b"\x91" * 100,
                pack([0, -1, "ping", []]), b"\x94\x00"]
    conns = []
    for i in range(60):
        c = RpcClient(kcd.sock)
        conns.append(c)
        send_ignoring_close(c, payloads[i % len(payloads)])
    for c in conns:
        c.is_closed(timeout=0.05)
        c.close()
    assert_rss_small(kcd)
    assert_healthy(kcd)


def test_slow_byte_by_byte_request(kcd):
    c = kcd.client()
    data = pack([0, 21, "set", ["slow", b"v"]])
    for b in data:
        c.send_raw(bytes([b]))
    assert c.recv_response(21) == (None, True)
    assert c.call("get", "slow") == (None, b"v")


def test_peer_disconnects_with_requests_in_flight(kcd):
    for _ in range(20):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(kcd.sock)
        s.sendall(b"".join(pack([0, i, "set", [f"gone{i}", b"v"]]) for i in range(50)))
        s.close()
    assert_healthy(kcd)
    # The daemon is still there after it tried to answer closed peers.
    wait_until(lambda: kcd.alive(), 0.2, "kcached alive")
    assert_healthy(kcd)


def test_reader_that_never_reads(kcd):
    # A client that pipelines a lot and never reads must not hurt other clients.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(kcd.sock)
    s.setblocking(False)
    req = pack([0, 1, "get", ["nothing"]])
    sent = 0
    try:
        for _ in range(2000):
            try:
                s.send(req * 50)
                sent += 1
            except BlockingIOError:
                break
        assert_healthy(kcd)
        assert_rss_small(kcd)
    finally:
        s.close()
    assert_healthy(kcd)
