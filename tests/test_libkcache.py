# SPDX-License-Identifier: MIT
"""libkcache through ctypes, mirroring client/kcache.h: every call, deadlines,
reconnects, fork, and a peer that closes mid-call."""

import ctypes
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import stored_payload, LIBKCACHE, T, assert_healthy, wait_until


# An ASan-built library is loaded with the ASan runtime preloaded: see
# pytest_configure() in conftest.py.

KCACHE_OK = 0
KCACHE_MISS = 1
KCACHE_E_ARG = -1
KCACHE_E_CONNECT = -3
KCACHE_E_IO = -4
KCACHE_E_PROTOCOL = -5
KCACHE_E_TIMEOUT = -6
KCACHE_E_BAD_REQUEST = -7
KCACHE_E_UNAVAILABLE = -10

c_size_p = ctypes.POINTER(ctypes.c_size_t)
c_int64_p = ctypes.POINTER(ctypes.c_int64)


class KcacheOptions(ctypes.Structure):
    _fields_ = [("timeout_ms", ctypes.c_int), ("socket_path", ctypes.c_char_p)]


class KcacheValue(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class KcacheServerInfo(ctypes.Structure):
    _fields_ = [("server", ctypes.c_char_p), ("version", ctypes.c_char_p),
                ("protocol", ctypes.c_int), ("max_request_bytes", ctypes.c_int64),
                ("max_batch_keys", ctypes.c_int64)]


def load_lib(path=LIBKCACHE):
    lib = ctypes.CDLL(path)
    H = ctypes.c_void_p
    sig = {
        "kcache_new": (ctypes.c_int, [ctypes.POINTER(H), ctypes.POINTER(KcacheOptions)]),
        "kcache_free": (None, [H]),
        "kcache_set_timeout": (None, [H, ctypes.c_int]),
        "kcache_strerror": (ctypes.c_char_p, [H]),
        "kcache_code_name": (ctypes.c_char_p, [ctypes.c_int]),
        "kcache_ping": (ctypes.c_int, [H]),
        "kcache_hello": (ctypes.c_int, [H, ctypes.POINTER(KcacheServerInfo)]),
        "kcache_get": (ctypes.c_int, [H, ctypes.c_void_p, ctypes.c_size_t,
                                      ctypes.POINTER(ctypes.c_void_p), c_size_p]),
        "kcache_set": (ctypes.c_int, [H, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
                                      ctypes.c_size_t, ctypes.c_int64]),
        "kcache_del": (ctypes.c_int, [H, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p),
                                      c_size_p, c_int64_p]),
        "kcache_mget": (ctypes.c_int, [H, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p),
                                       c_size_p, ctypes.POINTER(KcacheValue)]),
        "kcache_mset": (ctypes.c_int, [H, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p),
                                       c_size_p, ctypes.POINTER(ctypes.c_void_p), c_size_p,
                                       ctypes.c_int64]),
        "kcache_exists": (ctypes.c_int, [H, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p),
                                         c_size_p, c_int64_p]),
        "kcache_ttl": (ctypes.c_int, [H, ctypes.c_void_p, ctypes.c_size_t, c_int64_p]),
        "kcache_expire": (ctypes.c_int, [H, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64,
                                         ctypes.POINTER(ctypes.c_int)]),
        "kcache_values_free": (None, [ctypes.POINTER(KcacheValue), ctypes.c_size_t]),
    }
    for name, (res, args) in sig.items():
        f = getattr(lib, name)
        f.restype = res
        f.argtypes = args
    return lib


_libc = ctypes.CDLL(None)
_libc.free.argtypes = [ctypes.c_void_p]
_libc.free.restype = None


class Kc:
    """A thin Python face on one libkcache handle."""

    def __init__(self, lib, sock, timeout_ms=2000):
        self.lib = lib
        self.h = ctypes.c_void_p()
        self._path = sock.encode() if sock is not None else None
        opts = KcacheOptions(timeout_ms, self._path)
        rc = lib.kcache_new(ctypes.byref(self.h), ctypes.byref(opts))
        assert rc == KCACHE_OK and self.h.value

    def free(self):
        if self.h:
            self.lib.kcache_free(self.h)
            self.h = ctypes.c_void_p()

    def err(self):
        return self.lib.kcache_strerror(self.h).decode()

    @staticmethod
    def _arr(items):
        bufs = [ctypes.create_string_buffer(x, len(x)) for x in items]
        ptrs = (ctypes.c_void_p * max(1, len(items)))(*[ctypes.cast(b, ctypes.c_void_p)
                                                         for b in bufs])
        lens = (ctypes.c_size_t * max(1, len(items)))(*[len(x) for x in items])
        return bufs, ptrs, lens

    def ping(self):
        return self.lib.kcache_ping(self.h)

    def hello(self):
        info = KcacheServerInfo()
        rc = self.lib.kcache_hello(self.h, ctypes.byref(info))
        return rc, info

    def get(self, key):
        val = ctypes.c_void_p()
        n = ctypes.c_size_t(12345)
        rc = self.lib.kcache_get(self.h, key, len(key), ctypes.byref(val), ctypes.byref(n))
        data = None
        if rc == KCACHE_OK:
            assert val.value is not None or n.value == 0
            data = ctypes.string_at(val.value, n.value) if n.value else b""
            # NUL-terminated for convenience.
            assert ctypes.string_at(val.value + n.value, 1) == b"\x00"
            _libc.free(val)
        elif rc == KCACHE_MISS:
            assert not val.value
        return rc, data

    def set(self, key, value, ttl=0):
        return self.lib.kcache_set(self.h, key, len(key), value, len(value), ttl)

    def delete(self, keys):
        _b, ptrs, lens = self._arr(keys)
        out = ctypes.c_int64(-99)
        rc = self.lib.kcache_del(self.h, len(keys), ptrs, lens, ctypes.byref(out))
        return rc, out.value

    def exists(self, keys):
        _b, ptrs, lens = self._arr(keys)
        out = ctypes.c_int64(-99)
        rc = self.lib.kcache_exists(self.h, len(keys), ptrs, lens, ctypes.byref(out))
        return rc, out.value

    def mget(self, keys):
        _b, ptrs, lens = self._arr(keys)
        vals = (KcacheValue * max(1, len(keys)))()
        rc = self.lib.kcache_mget(self.h, len(keys), ptrs, lens, vals)
        out = None
        if rc == KCACHE_OK:
            out = [None if not vals[i].data else ctypes.string_at(vals[i].data, vals[i].len)
                   for i in range(len(keys))]
            self.lib.kcache_values_free(vals, len(keys))
        return rc, out

    def mset(self, mapping, ttl=0):
        keys = list(mapping)
        _kb, kptrs, klens = self._arr(keys)
        _vb, vptrs, vlens = self._arr([mapping[k] for k in keys])
        return self.lib.kcache_mset(self.h, len(keys), kptrs, klens, vptrs, vlens, ttl)

    def ttl(self, key):
        out = ctypes.c_int64(-99)
        rc = self.lib.kcache_ttl(self.h, key, len(key), ctypes.byref(out))
        return rc, out.value

    def expire(self, key, seconds):
        out = ctypes.c_int(-99)
        rc = self.lib.kcache_expire(self.h, key, len(key), seconds, ctypes.byref(out))
        return rc, out.value


@pytest.fixture(scope="module")
def lib():
    return load_lib()


@pytest.fixture
def kc(lib, kcd):
    h = Kc(lib, kcd.sock)
    yield h
    h.free()


def test_code_names(lib):
    assert lib.kcache_code_name(KCACHE_OK) == b"OK"
    assert lib.kcache_code_name(KCACHE_MISS) == b"MISS"
    assert lib.kcache_code_name(KCACHE_E_TIMEOUT) == b"TIMEOUT"
    assert lib.kcache_code_name(KCACHE_E_UNAVAILABLE) == b"UNAVAILABLE"
    assert lib.kcache_code_name(KCACHE_E_BAD_REQUEST) == b"BAD_REQUEST"
    # Unknown codes still give a string.
    assert isinstance(lib.kcache_code_name(-999), bytes)


def test_new_with_null_options_and_free_null(lib):
    h = ctypes.c_void_p()
    assert lib.kcache_new(ctypes.byref(h), None) == KCACHE_OK
    lib.kcache_free(h)
    lib.kcache_free(None)


def test_ping_hello(kc):
    assert kc.ping() == KCACHE_OK
    assert kc.err() == ""
    rc, info = kc.hello()
    assert rc == KCACHE_OK
    assert info.server == b"kcached"
    assert info.version == b"0.1.0"
    assert info.protocol == 1
    assert info.max_request_bytes == 8 * 1024 * 1024
    assert info.max_batch_keys == 10000


def test_get_set(kc, redis):
    assert kc.get(b"lk") == (KCACHE_MISS, None)
    v = b"\x00binary\xffvalue\x00"
    assert kc.set(b"lk", v) == KCACHE_OK
    assert kc.get(b"lk") == (KCACHE_OK, v)
    assert stored_payload(redis.cmd("GET", b"kc:lk")) == v
    assert 3590 <= redis.cmd("TTL", b"kc:lk") <= 3600  # ttl_s 0: default_ttl
    assert kc.set(b"lk2", b"", 120) == KCACHE_OK
    assert kc.get(b"lk2") == (KCACHE_OK, b"")
    assert 115 <= redis.cmd("TTL", b"kc:lk2") <= 120


def test_big_value(kc):
    v = os.urandom(1024 * 1024)
    assert kc.set(b"big", v) == KCACHE_OK
    assert kc.get(b"big") == (KCACHE_OK, v)


def test_set_bad_ttl(kc):
    rc = kc.set(b"neg", b"v", -5)
    assert rc in (KCACHE_E_ARG, KCACHE_E_BAD_REQUEST), rc
    assert kc.err() != ""
    assert kc.ping() == KCACHE_OK
    assert kc.err() == ""


def test_del_exists_mget_mset(kc, redis):
    assert kc.mset({b"a": b"1", b"b": b"2", b"c": b"3"}, 60) == KCACHE_OK
    for k in (b"a", b"b", b"c"):
        assert 55 <= redis.cmd("TTL", b"kc:" + k) <= 60
    assert kc.mget([b"c", b"x", b"a"]) == (KCACHE_OK, [b"3", None, b"1"])
    assert kc.mget([]) == (KCACHE_OK, [])
    assert kc.exists([b"a", b"b", b"x", b"a"]) == (KCACHE_OK, 3)
    assert kc.delete([b"a", b"x"]) == (KCACHE_OK, 1)
    assert kc.delete([]) == (KCACHE_OK, 0)
    assert kc.exists([b"a"]) == (KCACHE_OK, 0)


def test_ttl_expire(kc, redis):
    assert kc.ttl(b"none") == (KCACHE_OK, -2)
    redis.cmd("SET", b"kc:forever", b"v")
    assert kc.ttl(b"forever") == (KCACHE_OK, -1)
    assert kc.expire(b"forever", 90) == (KCACHE_OK, 1)
    rc, t = kc.ttl(b"forever")
    assert rc == KCACHE_OK and 85 <= t <= 90
    assert kc.expire(b"none", 90) == (KCACHE_OK, 0)


def test_no_daemon_connect_error(lib, harness):
    h = Kc(lib, os.path.join(harness.tmp, "nobody.sock"), timeout_ms=500)
    try:
        t0 = time.monotonic()
        assert h.ping() == KCACHE_E_CONNECT
        assert time.monotonic() - t0 < 0.5 + T(1)
        assert h.err() != ""
        assert h.get(b"k")[0] == KCACHE_E_CONNECT
    finally:
        h.free()


def test_socket_from_environment(lib, kcd, monkeypatch):
    monkeypatch.setenv("KCACHE_SOCKET", kcd.sock)
    h = Kc(lib, None)
    try:
        assert h.ping() == KCACHE_OK
    finally:
        h.free()


def test_redis_down_unavailable(lib, harness):
    from conftest import free_port
    k = harness.kcached(redis_port=free_port())
    h = Kc(lib, k.sock)
    try:
        assert h.ping() == KCACHE_OK
        assert h.get(b"k")[0] == KCACHE_E_UNAVAILABLE
        assert h.set(b"k", b"v") == KCACHE_E_UNAVAILABLE
    finally:
        h.free()


def test_frozen_daemon_timeout_then_late_reply_discarded(kc, kcd):
    assert kc.set(b"A", b"value-A") == KCACHE_OK
    assert kc.set(b"B", b"value-B") == KCACHE_OK
    kc.lib.kcache_set_timeout(kc.h, 300)
    kcd.freeze()
    try:
        t0 = time.monotonic()
        rc, _ = kc.get(b"A")
        dt = time.monotonic() - t0
        assert rc == KCACHE_E_TIMEOUT, rc
        assert dt < 0.3 + T(1.0), f"timeout took {dt:.3f}s"
        assert dt >= 0.25, f"timeout after only {dt:.3f}s"
    finally:
        kcd.thaw()
    kc.lib.kcache_set_timeout(kc.h, int(2000 * T(1)))
    # The late reply to get(A) must not be taken as the answer to get(B).
    assert kc.get(b"B") == (KCACHE_OK, b"value-B")
    assert kc.ping() == KCACHE_OK
    assert kc.get(b"A") == (KCACHE_OK, b"value-A")


def test_same_handle_after_daemon_restart(kc, kcd):
    assert kc.set(b"r", b"before") == KCACHE_OK
    kcd.kill()
    kcd.start()
    # A read after a restart: retried on a new connection within the deadline.
    assert kc.get(b"r") == (KCACHE_OK, b"before")
    assert kc.set(b"r", b"after") == KCACHE_OK
    assert kc.get(b"r") == (KCACHE_OK, b"after")


def test_same_handle_after_graceful_restart_write_first(kc, kcd):
    assert kc.ping() == KCACHE_OK
    assert kcd.terminate() == 0
    kcd.start()
    # The first call after the restart may be a write: it may fail once (never
    # retried), but the handle recovers on the next call.
    rc = kc.set(b"w", b"v")
    if rc != KCACHE_OK:
        assert rc in (KCACHE_E_IO, KCACHE_E_CONNECT), rc
        assert kc.set(b"w", b"v") == KCACHE_OK
    assert kc.get(b"w") == (KCACHE_OK, b"v")


def test_daemon_gone_then_back(kc, kcd):
    assert kc.ping() == KCACHE_OK
    kcd.kill()
    os.unlink(kcd.sock)
    rc = kc.ping()
    assert rc in (KCACHE_E_CONNECT, KCACHE_E_IO), rc
    kcd.start()
    assert kc.ping() == KCACHE_OK


def test_after_fork_child_uses_own_connection(kc, kcd):
    assert kc.set(b"fork", b"parent") == KCACHE_OK
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            ok = (kc.ping() == KCACHE_OK
                  and kc.get(b"fork") == (KCACHE_OK, b"parent")
                  and kc.set(b"fork-child", str(os.getpid()).encode()) == KCACHE_OK)
            code = 0 if ok else 3
        except BaseException:  # noqa: BLE001 - the child must never return into pytest
            code = 4
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    # The parent's connection was not disturbed by the child.
    assert kc.get(b"fork-child") == (KCACHE_OK, str(pid).encode())
    assert kc.ping() == KCACHE_OK
    assert kc.get(b"fork") == (KCACHE_OK, b"parent")


# The peer-closes case runs in a child Python with SIGPIPE at its default
# action, so a write to a closed socket would kill it.
PEER_CLOSE_SCRIPT = textwrap.dedent("""
    import os, signal, socket, sys, threading
    sys.path.insert(0, {testdir!r})
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    import test_libkcache as t

    path = {sock!r}
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(16)

    def serve():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            try:
                c.recv(10)   # read a little of the request, then hang up
            finally:
                c.close()
    threading.Thread(target=serve, daemon=True).start()

    lib = t.load_lib()
    h = t.Kc(lib, path, timeout_ms=2000)
    rcs = [h.set(b"k", b"x" * (4 << 20)), h.ping(), h.get(b"k")[0],
           h.mset({{b"a": b"y" * (1 << 20)}})]
    h.free()
    print(" ".join(map(str, rcs)))
    sys.stdout.flush()
    os._exit(0)
""")


def test_peer_closes_mid_call_no_sigpipe(harness):
    sock = os.path.join(harness.tmp, "fake.sock")
    script = PEER_CLOSE_SCRIPT.format(testdir=os.path.dirname(os.path.abspath(__file__)),
                                      sock=sock)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=T(60), env=dict(os.environ))
    assert p.returncode >= 0, f"child died of signal {-p.returncode}: {p.stderr}"
    assert p.returncode == 0, p.stderr
    rcs = [int(x) for x in p.stdout.split()]
    assert len(rcs) == 4, p.stdout
    for rc in rcs:
        assert rc in (KCACHE_E_IO, KCACHE_E_CONNECT, KCACHE_E_PROTOCOL), rcs


def test_many_handles(lib, kcd):
    hs = [Kc(lib, kcd.sock) for _ in range(50)]
    try:
        for i, h in enumerate(hs):
            assert h.set(b"h%d" % i, b"v%d" % i) == KCACHE_OK
        for i, h in enumerate(hs):
            assert h.get(b"h%d" % i) == (KCACHE_OK, b"v%d" % i)
    finally:
        for h in hs:
            h.free()
    assert_healthy(kcd)


def test_timeout_bounds_connect_to_frozen_daemon(lib, kcd):
    # A frozen daemon still accepts connections in the kernel backlog; the
    # deadline bounds the whole call, connecting included.
    h = Kc(lib, kcd.sock, timeout_ms=300)
    kcd.freeze()
    try:
        t0 = time.monotonic()
        rc = h.ping()
        dt = time.monotonic() - t0
        assert rc == KCACHE_E_TIMEOUT, rc
        assert dt < 0.3 + T(1.0)
    finally:
        kcd.thaw()
    h.lib.kcache_set_timeout(h.h, 2000)
    wait_until(lambda: h.ping() == KCACHE_OK, 5, "ping after thaw")
    h.free()


def test_concurrent_handles_in_threads(lib, kcd):
    import threading
    errors = []

    def worker(n):
        h = Kc(lib, kcd.sock)
        try:
            for i in range(50):
                k = b"t%d-%d" % (n, i)
                if h.set(k, k) != KCACHE_OK or h.get(k) != (KCACHE_OK, k):
                    errors.append((n, i, h.err()))
        finally:
            h.free()
    ts = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(T(60))
    assert not errors, errors


def test_sigpipe_ignored_state_untouched(lib, kc):
    # The library must not change the application's signal dispositions.
    before = signal.getsignal(signal.SIGPIPE)
    assert kc.ping() == KCACHE_OK
    assert signal.getsignal(signal.SIGPIPE) == before
