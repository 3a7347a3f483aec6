#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Writes the generated seed files of tests/fuzz/corpus/<harness>/.

    /usr/bin/python3 tests/fuzz/seeds.py        (python3-msgpack needed)

Deterministic: running it again rewrites the same files with the same bytes.
It only writes the files it names; crash inputs added by hand (crash-*) and
anything else in the corpus directories are left alone. Seeds stay within
4096 bytes, libFuzzer's default -max_len (a larger seed would raise it and
slow every run).

  fuzz-dispatch  client byte streams: one valid request per method of
                 proto/methods.def (with the options it takes), a pipeline of
                 all of them, and the hostile inputs of tests/test_bad_input.py
  fuzz-scan      the same streams behind fuzz-scan's 2-byte header (limits, seed)
  fuzz-envelope  stored values: plain, compressed, with schema tag, stale,
                 raw (foreign) values, and corrupt ones
  fuzz-reply     Redis's RESP: the replies kcached reads, and hostile headers, some
                 under both limit settings (the hash of the input picks them)
"""

import os
import struct
import sys
import zlib

import msgpack

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")


def pack(obj):
    return msgpack.packb(obj, use_bin_type=True)


def req(msgid, method, *params):
    return pack([0, msgid, method, list(params)])


# --- fuzz-dispatch: one valid request per method ----------------------------------------------

METHODS = {
    "hello": req(1, "hello"),
    "ping": req(2, "ping"),
    "get": req(3, "get", b"user:1", {"ns": "users", "schema": "v1", "consistency": "primary"}),
    "set": req(4, "set", "user:1", b"\x81\xa4name\xa3bob",
               {"ttl": 60, "stale_ttl": 30, "ns": "users", "schema": "v1", "tags": ["t1", "t2"]}),
    "del": req(5, "del", ["a", b"b"], {"ns": "users"}),
    "mget": req(6, "mget", ["a", "b", "c"], {"schema": "v1", "consistency": "primary"}),
    "mset": req(7, "mset", {"a": b"1", "b": b"2" * 1000}, {"ttl_ms": 1500, "stale_ttl_ms": 500,
                                                          "tags": ["t1"]}),
    "exists": req(8, "exists", ["a", "b"], {"ns": "users"}),
    "ttl": req(9, "ttl", "a", None),
    "expire": req(10, "expire", "a", 30, {"ns": "users"}),
    "get_or_set": req(11, "get_or_set", "cold",
                      {"ns": "users", "schema": "v1", "field": "f", "lease_ms": 2000,
                       "wait_ms": 100}),
    "fill": req(12, "fill", "cold", "0123456789abcdef01234567", b"loaded",
                {"ttl": 60, "stale_ttl": 5, "field": "f", "tags": ["t1"], "schema": "v1"}),
    "release": req(13, "release", "cold", "0123456789abcdef01234567", {"field": "f"}),
    "invalidate": req(14, "invalidate", {"tags": ["t1", "t2"]}, {"ns": "users"}),
    "hget": req(15, "hget", "h", "f1", {"schema": "v1"}),
    "hset": req(16, "hset", "h", {"f1": b"v1", "f2": b"v2"}, {"ttl": 60}),
    "hdel": req(17, "hdel", "h", ["f1", "f2"]),
    "hgetall": req(18, "hgetall", "h", {"consistency": "primary"}),
    "stats": req(19, "stats"),
}

# More shapes of the same methods: other selectors, other option types.
VARIANTS = {
    "invalidate-keys": req(20, "invalidate", {"keys": ["a", "b"]}),
    "invalidate-pattern": req(21, "invalidate", {"pattern": "user:*"}),
    "invalidate-namespace": req(22, "invalidate", {"namespace": "users"}),
    "set-plain": req(23, "set", "k", b"v"),
    "set-large-compressible": req(24, "set", "big", b"a" * 1000, {"ttl_ms": 100}),
    "get-or-set-twice": req(25, "get_or_set", "x") + req(26, "get_or_set", "x"),
    "notification": pack([2, "client.info", [{"name": "fuzz"}]]),
    "ping-nil-options": req(27, "ping", None),
}


def pipeline():
    return b"".join(METHODS.values())


# --- fuzz-dispatch: hostile inputs of tests/test_bad_input.py -----------------------------------

def raw_request(msgid, method, params_raw):
    m = method.encode()
    return b"\x94\x00" + pack(msgid) + bytes([0xa0 | len(m)]) + m + params_raw


def nested(depth):
    return b"\x91" * depth + b"\xc0"


BAD = {
    "garbage-c1": b"\xc1garbage",
    "garbage-c1-only": b"\xc1",
    "garbage-http": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\xc1",
    "garbage-after-request": b"\x94\x00\x01\xa4ping\x90\xc1",
    "huge-array32": b"\xdd\xff\xff\xff\xff",
    "huge-array32-512m": b"\xdd\x20\x00\x00\x00",
    "huge-bin32": b"\xc6\xff\xff\xff\xff",
    "huge-str32": b"\xdb\xff\xff\xff\xff",
    "huge-map32": b"\xdf\x10\x00\x00\x00",
    "huge-ext32": b"\xc9\xff\xff\xff\xff\x01",
    "huge-key-in-request": raw_request(41, "get", b"\x91\xc6\xff\xff\xff\xff") + b"\x00" * 64,
    "huge-array-in-request": raw_request(41, "get", b"\x91\xdd\x20\x00\x00\x00") + b"\x00" * 64,
    "huge-map-in-request": raw_request(41, "get", b"\x91\xdf\x10\x00\x00\x00") + b"\x00" * 64,
    "huge-request-frame": b"\xdd\x20\x00\x00\x00\x00\x01\xa3get",
    "nesting-33-in-request": raw_request(7, "get", b"\x91" + nested(33)),
    "nesting-8-in-request": raw_request(8, "get", b"\x91" + nested(8)),
    "nesting-4000": b"\x91" * 4000 + b"\xc0",  # the test's 10000, within max_len 4096
    "truncated-method": b"\x94\x00\x01\xa3ge",
    "truncated-array": b"\x94",
    "truncated-bin": b"\xc6\x00\x00\x10\x00abc",
    "truncated-set": pack([0, 1, "set", ["k", b"v" * 1000]])[:-10],
    "half-close-after-ping": pack([0, 3, "ping", []]),
    "unknown-method": req(1, "flushall") + req(2, "GET", "k") + req(3, "", "k"),
    "unknown-option": req(1, "set", "k", b"v", {"nx": True}),
    "option-non-string-key": req(1, "set", "k", b"v", {1: 2}),
    "bad-request-shapes": b"".join(pack(o) for o in (
        [0, 3, "ping"], [0, 3, "ping", [], 5], [0, 3, 12, []], [0, 3, None, []],
        [0, 3, "ping", {}], [0, 3, "ping", None], [0, 3, "ping", "x"])),
    "wrong-types": b"".join(req(i, "set", *p) for i, p in enumerate(
        (["k", 1], [1, b"v"], [None, None], [["k"], {"k": 1}]))),
    "non-requests": b"".join(pack(o) for o in (
        42, "hello", b"bin", [], [7, 1, 2, 3], [1, 5, None, "pong"], {"a": 1}, None, True,
        [3, 1, "ping", []])),
    # fuzz-dispatch runs with max_request_bytes 65536, max_batch_keys 64, max_value_bytes 1024
    "oversized-set-declared": raw_request(9, "set", b"\x92\xa3big\xc6\x00\x01\x86\xa0xxxx"),
    "oversized-set": pack([0, 9, "set", ["big", b"x" * 70000]])[:3000],
    "many-small-keys": pack([0, 10, "mget", [[b"k%06d" % i for i in range(200)]]]),
    "batch-keys-65": pack([0, 11, "mget", [[b"k%02d" % i for i in range(65)]]]),
    "value-too-large": req(12, "set", "k", b"v" * 1025),
    "set-slow": pack([0, 21, "set", ["slow", b"v"]]),
    "pipelined-sets": b"".join(pack([0, i, "set", [f"gone{i}", b"v"]]) for i in range(50)),
    "hostile-mix": b"".join((b"\x91" * 100, pack([0, 1, "ping", []]), b"\x94\x00")),
    "option-type-errors": b"".join(req(i, "set", "k", b"v", o) for i, o in enumerate((
        {"ttl": "x"}, {"ttl": -1}, {"ttl": 2 ** 40}, {"ttl": 1, "ttl_ms": 1}, {"ns": 1},
        {"ns": ""}, {"ns": "a\x00b"}, {"schema": "s" * 300}, {"tags": "t"}, {"tags": [1]},
        {"tags": []}, {"consistency": "primary"}))),
    "key-errors": b"".join(req(i, "get", k) for i, k in enumerate(
        (b"", b"\x00k", b"k" * 2000, 5, None, [b"k"]))),
    "lease-option-errors": b"".join(req(i, "get_or_set", "k", o) for i, o in enumerate((
        {"lease_ms": 0}, {"lease_ms": 10 ** 9}, {"wait_ms": -1}, {"wait_ms": 10 ** 9},
        {"field": ""}, {"field": 7}))),
    "msgid-errors": b"".join(pack([0, m, "ping", []]) for m in
                             (-1, 2 ** 32, "x", 1.5, None, b"\x01", [1], True)),
}

# --- fuzz-envelope ------------------------------------------------------------------------------


def envelope(value, schema=b"", compress=False, stale=False, version=1, flags=None, crc=None,
             length=None, payload=None):
    flags_v = (1 if compress else 0) | (2 if stale else 0)
    if flags is not None:
        flags_v = flags
    if payload is None:
        payload = zlib.compress(value, 1) if compress else value
    return (b"\xc1K" + bytes([version, flags_v, len(schema)]) + schema +
            struct.pack(">I", len(value) if length is None else length) +
            struct.pack(">I", (zlib.crc32(value) if crc is None else crc) & 0xffffffff) +
            payload)


# Byte 0 of a fuzz-envelope input: bit0 compress, bits1-3 level, bit4 threshold 64.
ENV_CFG = b"\x03"
TEXT = b"the quick brown fox jumps over the lazy dog; " * 40

ENVELOPES = {
    "plain": envelope(b"hello"),
    "plain-empty": envelope(b""),
    "schema": envelope(b"{\"name\":\"bob\"}", schema=b"v2"),
    "schema-255": envelope(b"x", schema=b"s" * 255),
    "stale": envelope(b"old value", stale=True),
    "compressed": envelope(TEXT, compress=True),
    "compressed-schema-stale": envelope(TEXT, schema=b"user/v3", compress=True, stale=True),
    "raw-foreign": b"a value another client wrote",
    "raw-c1-only": b"\xc1",
    "raw-c1-not-k": b"\xc1Z not ours",
    "corrupt-short": b"\xc1K\x01\x00",
    "corrupt-crc": envelope(b"hello", crc=1),
    "corrupt-length": envelope(b"hello", length=6),
    "corrupt-flags": envelope(b"hello", flags=0x80),
    "corrupt-version-0": envelope(b"hello", version=0),
    "newer-version": envelope(b"hello", version=2),
    "corrupt-zlib": envelope(TEXT, compress=True, payload=b"\x78\x01garbage"),
    "corrupt-zlib-trailing": envelope(TEXT, compress=True,
                                      payload=zlib.compress(TEXT, 1) + b"extra"),
    "zlib-bomb-claim": envelope(b"\x00" * 100, compress=True, length=0xffffffff),
    "corrupt-schema-len": b"\xc1K\x01\x00\xff" + b"s" * 10,
}

# --- fuzz-reply ---------------------------------------------------------------------------------


def bulk(b):
    return b"$%d\r\n%s\r\n" % (len(b), b)


def arr(*items):
    return b"*%d\r\n" % len(items) + b"".join(items)


REPLIES = {
    "status-ok": b"+OK\r\n",
    "pong": b"+PONG\r\n",
    "error": b"-ERR unknown command 'FOO'\r\n",
    "error-loading": b"-LOADING Redis is loading the dataset in memory\r\n",
    "error-readonly": b"-READONLY You can't write against a read only replica.\r\n",
    "integer": b":42\r\n",
    "integer-negative": b":-2\r\n",
    "bulk": bulk(b"\xc1K\x01\x00\x00\x00\x00\x00\x05" + b"\x00" * 4 + b"hello"),
    "bulk-empty": b"$0\r\n\r\n",
    "nil": b"$-1\r\n",
    "nil-array": b"*-1\r\n",
    "empty-array": b"*0\r\n",
    "mget": arr(bulk(b"v1"), b"$-1\r\n", bulk(b"v3")),
    "hgetall": arr(bulk(b"f1"), bulk(b"v1"), bulk(b"f2"), bulk(b"v2")),
    "eval-gos": arr(b":1\r\n", bulk(b"lease-key"), bulk(b"token"), b":5000\r\n"),
    "exec": arr(b"+OK\r\n", arr(b":1\r\n", b":0\r\n")),
    "config-get": arr(bulk(b"maxmemory-policy"), bulk(b"noeviction")),
    "role": arr(bulk(b"master"), b":0\r\n", b"*0\r\n"),
    "pubsub-message": arr(bulk(b"message"), bulk(b"kcache\x00kc:\x00events"), bulk(b"fill lk")),
    "subscribe": arr(bulk(b"subscribe"), bulk(b"chan"), b":1\r\n"),
    "scan": arr(bulk(b"17"), arr(bulk(b"kc:a"), bulk(b"kc:b"))),
    "nested-7": b"*1\r\n" * 7 + b":1\r\n",
    "nested-9": b"*1\r\n" * 9 + b":1\r\n",
    "pipeline": b"+OK\r\n:1\r\n$-1\r\n" + bulk(b"x") + arr(b":1\r\n"),
    "huge-array": b"*2147483647\r\n",
    "huge-array-guard-plus-1": b"*1048577\r\n",
    "array-17": b"*17\r\n" + b":1\r\n" * 17,
    "huge-bulk": b"$2000000000\r\n",
    "huge-bulk-some": b"$2000000000\r\n" + b"x" * 100,
    "negative-array": b"*-2\r\n",
    "negative-bulk": b"$-2\r\n",
    "bad-type": b"!oops\r\n",
    "bad-integer": b":12x\r\n",
    "no-crlf": b"+OK\n",
    "overlong-integer": b":99999999999999999999999\r\n",
    "bulk-bad-terminator": b"$3\r\nabcXY",
}


def fnv1a(data):
    """fuzz-reply's and fuzz-dispatch's fuzz_hash()."""
    h = 2166136261
    for c in data:
        h = ((h ^ c) * 16777619) & 0xffffffff
    h ^= h >> 16
    h = (h * 0x85ebca6b) & 0xffffffff
    h ^= h >> 13
    h = (h * 0xc2b2ae35) & 0xffffffff
    h ^= h >> 16
    return h or 1


def reply_mode(data, small):
    """data with "+OK" replies appended until fuzz-reply's hash picks the
    smallest limits (bit 1 set) or the defaults (bit 1 clear)."""
    while bool(fnv1a(data) & 2) != small:
        data += b"+OK\r\n"
    return data


def write(harness, name, data):
    d = os.path.join(CORPUS, harness)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def main():
    streams = {}
    for name, data in METHODS.items():
        streams["method-" + name] = data
    streams["method-all-pipelined"] = pipeline()
    for name, data in VARIANTS.items():
        streams["method-" + name] = data
    for name, data in BAD.items():
        streams["bad-" + name] = data
    for name, data in streams.items():
        write("fuzz-dispatch", name, data)
        # fuzz-scan: byte 0 picks the largest limits, byte 1 the read sizes
        write("fuzz-scan", name, b"\x3f\x00" + data)
    # and a few under the smallest limits
    for name in ("method-set", "method-all-pipelined", "bad-nesting-8-in-request"):
        write("fuzz-scan", name + "-small-limits", b"\x00\x07" + streams[name])
    for name, data in ENVELOPES.items():
        write("fuzz-envelope", name, ENV_CFG + data)
    write("fuzz-envelope", "compressed-no-recompress", b"\x00" + ENVELOPES["compressed"])
    for name, data in REPLIES.items():
        write("fuzz-reply", name, data)
    # Both limit settings for the replies around the guards.
    for name in ("array-17", "huge-array", "huge-array-guard-plus-1", "nested-9", "mget",
                 "pipeline", "hgetall"):
        write("fuzz-reply", name + "-small-limits", reply_mode(REPLIES[name], True))
        write("fuzz-reply", name + "-default-limits", reply_mode(REPLIES[name], False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
