# SPDX-License-Identifier: MIT
"""Integration test harness for kcache.

Owns the processes a test needs: real redis-server instances on free loopback
ports, kcached with an INI written into a per-test temporary directory, and a
raw msgpack-RPC client that speaks the wire protocol byte by byte (so tests can
send anything, including garbage).

Rules every helper follows:
  * every wait is a poll with a deadline, scaled by KCACHE_TEST_TIME_SCALE;
  * every process started here is stopped by PID on every path (teardown);
  * every test has its own short temporary directory and its own ports, so
    test files can run in parallel (meson runs one process per file).

Environment: KCACHED, KCACHE_CLI, LIBKCACHE (paths of the built artefacts,
set by tests/meson.build), KCACHE_TEST_TIME_SCALE (float, default 1),
REDIS_SERVER (default: redis-server on PATH).
"""

import errno
import json
import os
import re
import select
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

import msgpack
import pytest

TIME_SCALE = float(os.environ.get("KCACHE_TEST_TIME_SCALE") or "1")
HERE = os.path.dirname(os.path.abspath(__file__))
SRC_ROOT = os.path.dirname(HERE)


def _artefact(env, *fallbacks):
    v = os.environ.get(env)
    if v:
        return v
    for f in fallbacks:
        p = os.path.join(SRC_ROOT, f)
        if os.path.exists(p):
            return p
    return os.path.join(SRC_ROOT, fallbacks[0])


KCACHED = _artefact("KCACHED", "build/daemon/kcached", "build-tests/daemon/kcached")
KCACHE_CLI = _artefact("KCACHE_CLI", "build/client/kcache", "build-tests/client/kcache")
LIBKCACHE = _artefact("LIBKCACHE", "build/client/libkcache.so", "build-tests/client/libkcache.so")
REDIS_SERVER = os.environ.get("REDIS_SERVER") or shutil.which("redis-server") or "/usr/bin/redis-server"

SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "runtime error:", "UndefinedBehaviorSanitizer")


def T(seconds):
    """A duration scaled for slow builds (sanitizers, valgrind, loaded CI)."""
    return seconds * TIME_SCALE


def wait_until(pred, timeout, what="condition", interval=0.01):
    """Polls pred() until it returns a truthy value; returns it. Fails after timeout (scaled)."""
    deadline = time.monotonic() + T(timeout)
    last_exc = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - the predicate may fail while things start
            last_exc = e
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {T(timeout):.2f}s waiting for {what}"
                                 + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)


def free_port():
    """A loopback TCP port nobody listens on right now (racy by nature: callers retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra):
    """Environment for processes we spawn: without the LD_PRELOAD that the
    libkcache tests may use to load an ASan-built library into Python, and
    with the ASAN_OPTIONS the caller of the test suite asked for."""
    env = dict(os.environ)
    if "KCACHE_ORIG_LD_PRELOAD" in env:
        orig = env.pop("KCACHE_ORIG_LD_PRELOAD")
        if orig:
            env["LD_PRELOAD"] = orig
        else:
            env.pop("LD_PRELOAD", None)
    if "KCACHE_ORIG_ASAN_OPTIONS" in env:
        orig = env.pop("KCACHE_ORIG_ASAN_OPTIONS")
        if orig:
            env["ASAN_OPTIONS"] = orig
        else:
            env.pop("ASAN_OPTIONS", None)
    for k, v in extra.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = str(v)
    return env


REDIS_ENV_CLEARED = {k: None for k in ("REDIS_HOST", "REDIS_PORT", "REDIS_REPLICAS_HOST_PORT",
                                         "REDIS_TIMEOUT", "REDIS_PASSWORD", "KCACHE_SOCKET")}


def kcached_env(**extra):
    """child_env() without the overrides kcached reads, unless a test sets them."""
    return child_env(**{**REDIS_ENV_CLEARED, **extra})


def tail(path, max_lines=200):
    try:
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    if len(lines) > max_lines:
        lines = [f"... ({len(lines) - max_lines} lines cut)"] + lines[-max_lines:]
    return "\n".join(lines)


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# --------------------------------------------------------------------------
# Redis: a tiny RESP client, to inspect what kcached really wrote.
# --------------------------------------------------------------------------

class RespError(Exception):
    pass


class Resp:
    def __init__(self, port, timeout=5.0, password=None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=T(timeout))
        self.buf = b""
        if password is not None:
            self.cmd("AUTH", password)

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("redis closed the connection")
        self.buf += data

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _read(self):
        line = self._line()
        t, rest = line[:1], line[1:]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            raise RespError(rest.decode())
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self._fill()
            v, self.buf = self.buf[:n], self.buf[n + 2:]
            return v
        if t == b"*":
            n = int(rest)
            if n < 0:
                return None
            return [self._read() for _ in range(n)]
        raise RespError(f"unexpected RESP line {line!r}")

    def cmd(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            b = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(b), b))
        self.sock.sendall(b"".join(out))
        return self._read()


class RedisServer:
    """A real redis-server on a loopback port, in its own directory."""

    def __init__(self, workdir, port=None, replicaof=None, name="redis", extra_args=(),
                 password=None):
        self.workdir = workdir
        self.extra_args = list(extra_args)
        self.password = password
        self.fixed_port = port
        self.replicaof = replicaof
        self.name = name
        self.port = port
        self.proc = None
        self.log_path = None

    @property
    def pid(self):
        return self.proc.pid

    def start(self):
        attempts = 1 if self.fixed_port else 8
        for attempt in range(attempts):
            port = self.fixed_port or free_port()
            d = os.path.join(self.workdir, f"{self.name}-{port}")
            os.makedirs(d, exist_ok=True)
            self.log_path = os.path.join(d, "redis.log")
            args = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1",
                    "--save", "", "--appendonly", "no", "--dir", d,
                    "--daemonize", "no", "--logfile", "",
                    # A replica's first sync starts at once, not after 5 s.
                    "--repl-diskless-sync-delay", "0"]
            if self.replicaof is not None:
                args += ["--replicaof", "127.0.0.1", str(self.replicaof)]
            if self.password is not None:
                args += ["--requirepass", self.password]
            args += [a.replace("{dir}", d) for a in self.extra_args]
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, env=child_env(),
                                             cwd=d)
            self.port = port
            deadline = time.monotonic() + T(10)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break  # could not bind (port raced): try another one
                if self._ping():
                    return self
                time.sleep(0.01)
            self.stop()
        raise AssertionError(f"{self.name} did not start; log:\n{tail(self.log_path)}")

    def _ping(self):
        try:
            with Resp(self.port, timeout=0.5, password=self.password) as r:
                return r.cmd("PING") == "PONG"
        except (OSError, RespError):
            return False

    def client(self):
        return Resp(self.port, password=self.password)

    def cmd(self, *args):
        with Resp(self.port, password=self.password) as r:
            return r.cmd(*args)

    def freeze(self):
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            # SIGKILL also ends a stopped process; Redis keeps no data here.
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=T(10))

    def alive(self):
        return self.proc is not None and self.proc.poll() is None


# --------------------------------------------------------------------------
# msgpack-RPC raw client.
# --------------------------------------------------------------------------

class ConnectionClosed(Exception):
    pass


def pack(obj):
    return msgpack.packb(obj, use_bin_type=True)


def pack_map_raw(pairs):
    """A msgpack map from a list of (key, value) pairs: allows duplicate keys."""
    n = len(pairs)
    if n < 16:
        head = bytes([0x80 | n])
    elif n < 65536:
        head = b"\xde" + struct.pack(">H", n)
    else:
        head = b"\xdf" + struct.pack(">I", n)
    return head + b"".join(pack(k) + pack(v) for k, v in pairs)


def pack_array_raw(packed_items):
    """A msgpack array whose items are already packed bytes."""
    n = len(packed_items)
    if n < 16:
        head = bytes([0x90 | n])
    elif n < 65536:
        head = b"\xdc" + struct.pack(">H", n)
    else:
        head = b"\xdd" + struct.pack(">I", n)
    return head + b"".join(packed_items)


def raw_request(msgid, method, params_packed):
    """[0, msgid, method, params] where params is already packed bytes."""
    return pack_array_raw([pack(0), pack(msgid), pack(method), params_packed])


class RpcClient:
    """A msgpack-RPC client on kcached's Unix socket that hides nothing."""

    def __init__(self, path, timeout=5.0):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(T(timeout))
        self.sock.connect(path)
        self.sock.setblocking(False)
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False,
                                         max_buffer_size=256 * 1024 * 1024)
        self.next_msgid = 1
        self.stash = {}          # msgid -> [error, result] received out of order
        self.notifications = []  # [method, params] received
        self.others = []         # anything else received
        self.eof = False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    # -- sending
    def send_raw(self, data):
        self.sock.setblocking(True)
        self.sock.settimeout(T(10))
        try:
            self.sock.sendall(data)
        finally:
            self.sock.setblocking(False)

    def send(self, obj):
        self.send_raw(pack(obj))

    def request(self, method, params, msgid=None):
        if msgid is None:
            msgid = self.next_msgid
            self.next_msgid = (self.next_msgid + 1) & 0xFFFFFFFF
        self.send([0, msgid, method, list(params)])
        return msgid

    def notify(self, method, params):
        self.send([2, method, list(params)])

    # -- receiving
    def _read_some(self, deadline):
        """Reads what is available into the unpacker; False on timeout."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        r, _, _ = select.select([self.sock], [], [], remaining)
        if not r:
            return False
        try:
            data = self.sock.recv(1 << 20)
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        except BlockingIOError:
            return True
        if not data:
            self.eof = True
            raise ConnectionClosed("kcached closed the connection")
        self.unpacker.feed(data)
        return True

    def recv_obj(self, timeout=5.0):
        """The next msgpack object from the server. Raises TimeoutError or ConnectionClosed."""
        deadline = time.monotonic() + T(timeout)
        while True:
            try:
                return next(self.unpacker)
            except StopIteration:
                pass
            if self.eof:
                raise ConnectionClosed("kcached closed the connection")
            if not self._read_some(deadline):
                raise TimeoutError(f"no object from kcached within {T(timeout):.2f}s")

    def _file(self, obj):
        if isinstance(obj, list) and len(obj) == 4 and obj[0] == 1:
            self.stash[obj[1]] = [obj[2], obj[3]]
        elif isinstance(obj, list) and len(obj) == 3 and obj[0] == 2:
            self.notifications.append([obj[1], obj[2]])
        else:
            self.others.append(obj)

    def recv_response(self, msgid, timeout=5.0):
        """(error, result) of msgid; other messages are kept for later."""
        deadline = time.monotonic() + T(timeout)
        while msgid not in self.stash:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no response for msgid {msgid} within {T(timeout):.2f}s")
            self._file(self.recv_obj(remaining / TIME_SCALE))
        err, res = self.stash.pop(msgid)
        return err, res

    def recv_notification(self, timeout=5.0):
        deadline = time.monotonic() + T(timeout)
        while not self.notifications:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no notification")
            self._file(self.recv_obj(remaining / TIME_SCALE))
        return self.notifications.pop(0)

    def call(self, method, *params, timeout=5.0):
        msgid = self.request(method, params)
        return self.recv_response(msgid, timeout)

    def ok(self, method, *params, timeout=5.0):
        """call() that asserts success and returns the result."""
        err, res = self.call(method, *params, timeout=timeout)
        assert err is None, f"{method}{list(params)!r} failed: {err!r}"
        return res

    def is_closed(self, timeout=2.0):
        """True once the server has closed the connection (anything received
        before that is kept); False if it is still open after timeout."""
        deadline = time.monotonic() + T(timeout)
        while True:
            if self.eof:
                return True
            try:
                if not self._read_some(deadline):
                    return False
            except ConnectionClosed:
                return True
            while True:
                try:
                    self._file(next(self.unpacker))
                except StopIteration:
                    break
                except Exception:  # noqa: BLE001 - garbage from the server still counts
                    break


def err_code(err):
    """The code of a msgpack-RPC error object, or None."""
    if err is None:
        return None
    assert isinstance(err, dict), f"error is not a map: {err!r}"
    assert isinstance(err.get("code"), str), f"error without code: {err!r}"
    assert isinstance(err.get("message"), str), f"error without message: {err!r}"
    return err["code"]


# --------------------------------------------------------------------------
# kcached.
# --------------------------------------------------------------------------

def default_ini(sock, redis_port, admin_sock=None):
    sections = {
        "server": {"socket": sock, "drain_timeout_ms": int(1000 * TIME_SCALE)},
        "redis": {"primary": f"127.0.0.1:{redis_port}",
                  "connect_timeout_ms": int(1000 * TIME_SCALE),
                  "command_timeout_ms": int(2000 * TIME_SCALE)},
        "cache": {"key_prefix": "kc:"},
        "log": {"level": "debug"},
    }
    if admin_sock is not None:
        # Never the built-in default under /run: each test has its own.
        sections["admin"] = {"socket": admin_sock}
    return sections


class AdminClient:
    """A session on kcached's admin socket (line protocol): cmd() sends one
    line and returns the answer line without its newline."""

    def __init__(self, path, timeout=5.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(T(timeout))
        self.sock.connect(path)
        self.buf = b""

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def send(self, data):
        self.sock.sendall(data if isinstance(data, bytes) else data.encode())

    def line(self):
        """The next answer line (str, without "\n"); ConnectionClosed at EOF."""
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionClosed(f"admin socket closed; unterminated: {self.buf!r}")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode("utf-8", "replace")

    def cmd(self, line):
        self.send(line + "\n")
        return self.line()


def render_ini(sections):
    out = []
    for sec, kv in sections.items():
        out.append(f"[{sec}]")
        for k, v in kv.items():
            if v is not None:
                out.append(f"{k} = {v}")
        out.append("")
    return "\n".join(out)


class Kcached:
    """One kcached process with its INI and log in the test's directory."""

    def __init__(self, workdir, redis_port, ini=None, env=None, name="kcached", sock=None):
        self.workdir = workdir
        self.name = name
        self.sock = sock or os.path.join(workdir, f"{name}.sock")
        self.admin_sock = os.path.join(workdir, f"{name}-admin.sock")
        self.ini_path = os.path.join(workdir, f"{name}.ini")
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.sections = default_ini(self.sock, redis_port, self.admin_sock)
        for sec, kv in (ini or {}).items():
            self.sections.setdefault(sec, {}).update(kv)
        self.env = env or {}
        self.proc = None
        self.procs = []  # every process started, for teardown
        self.clients = []

    @property
    def pid(self):
        return self.proc.pid

    def write_ini(self):
        with open(self.ini_path, "w") as f:
            f.write(render_ini(self.sections))

    def start(self, wait=True):
        self.write_ini()
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {time.strftime('%H:%M:%S')} ---\n".encode())
            log.flush()
            self.proc = subprocess.Popen([KCACHED, "-c", self.ini_path], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=kcached_env(**self.env), cwd=self.workdir)
        self.procs.append(self.proc)
        if wait:
            self.wait_ready()
        return self

    def ping_ok(self):
        try:
            with RpcClient(self.sock, timeout=0.5) as c:
                return c.call("ping", timeout=0.5) == (None, "pong")
        except (OSError, TimeoutError, ConnectionClosed):
            return False

    def wait_ready(self, timeout=10):
        deadline = time.monotonic() + T(timeout)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"kcached exited with {self.proc.returncode} at start; "
                                     f"log:\n{tail(self.log_path)}")
            if self.ping_ok():
                return
            time.sleep(0.01)
        raise AssertionError(f"kcached did not answer ping in time; log:\n{tail(self.log_path)}")

    def client(self, timeout=5.0):
        c = RpcClient(self.sock, timeout=timeout)
        self.clients.append(c)
        return c

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def admin_client(self, timeout=5.0):
        """An AdminClient on this kcached's admin socket (the caller closes it)."""
        return AdminClient(self.sections.get("admin", {}).get("socket") or self.admin_sock,
                           timeout=timeout)

    def admin(self, cmd, timeout=5.0):
        """One admin command on a fresh connection; the answer line as str."""
        with self.admin_client(timeout=timeout) as a:
            return a.cmd(cmd)

    def freeze(self):
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self):
        if self.alive():
            os.kill(self.proc.pid, signal.SIGCONT)

    def signal(self, sig):
        os.kill(self.proc.pid, sig)

    def wait_exit(self, timeout=10):
        try:
            return self.proc.wait(timeout=T(timeout))
        except subprocess.TimeoutExpired:
            raise AssertionError(f"kcached (pid {self.proc.pid}) did not exit within "
                                 f"{T(timeout):.1f}s; log:\n{tail(self.log_path)}")

    def terminate(self, timeout=10):
        """SIGTERM and wait; returns the exit status."""
        self.thaw()
        self.signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def kill(self):
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=T(10))

    def restart(self):
        if self.alive():
            assert self.terminate() == 0
        return self.start()

    def rss_kb(self):
        return rss_kb(self.proc.pid)

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def teardown(self):
        """Stops every process started; returns a problem description or None."""
        for c in self.clients:
            c.close()
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGCONT)
                    os.kill(p.pid, signal.SIGTERM)
                    p.wait(timeout=T(5))
                except subprocess.TimeoutExpired:
                    os.kill(p.pid, signal.SIGKILL)
                    p.wait(timeout=T(10))
                except ProcessLookupError:
                    pass
        text = self.log_text()
        for m in SANITIZER_MARKERS:
            if m in text:
                return f"{self.name}: sanitizer report in log ({m}):\n{tail(self.log_path)}"
        return None


class Harness:
    """What one test started: a short temporary directory, Redis servers, kcacheds."""

    def __init__(self):
        # Short path: a Unix socket path must fit in 108 bytes.
        self.tmp = tempfile.mkdtemp(prefix="kct-", dir="/tmp")
        self.redises = []
        self.kcacheds = []
        self.extra_logs = []

    def redis(self, port=None, replicaof=None, start=True, extra_args=(), password=None):
        """extra_args may use "{dir}" for the server's own directory."""
        r = RedisServer(self.tmp, port=port, replicaof=replicaof,
                        name=f"redis{len(self.redises)}", extra_args=extra_args,
                        password=password)
        self.redises.append(r)
        if start:
            r.start()
        return r

    def kcached(self, redis=None, ini=None, env=None, start=True, redis_port=None, sock=None):
        port = redis_port if redis_port is not None else (redis.port if redis else free_port())
        name = "kcached" if not self.kcacheds else f"kcached{len(self.kcacheds)}"
        k = Kcached(self.tmp, port, ini=ini, env=env, name=name, sock=sock)
        self.kcacheds.append(k)
        if start:
            k.start()
        return k

    def logs(self):
        out = []
        for k in self.kcacheds:
            out.append((f"{k.name} log ({k.log_path})", tail(k.log_path)))
        for r in self.redises:
            if r.log_path:
                out.append((f"{r.name} log", tail(r.log_path, 40)))
        for name, path in self.extra_logs:
            out.append((name, tail(path)))
        return out

    def teardown(self):
        problems = []
        for k in reversed(self.kcacheds):
            p = k.teardown()
            if p:
                problems.append(p)
        for r in reversed(self.redises):
            try:
                r.thaw()
                r.stop()
            except Exception as e:  # noqa: BLE001 - keep tearing down the rest
                problems.append(f"{r.name}: {e!r}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        return problems


# --------------------------------------------------------------------------
# Fixtures.
# --------------------------------------------------------------------------

@pytest.fixture
def harness(request):
    h = Harness()
    request.node._kc_harness = h
    yield h
    problems = h.teardown()
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def redis(harness):
    return harness.redis()


@pytest.fixture
def replica(harness, redis):
    """A redis-server replicating the `redis` fixture, link up."""
    r = harness.redis(replicaof=redis.port)

    def link_up():
        info = r.cmd("INFO", "replication").decode()
        return "master_link_status:up" in info
    wait_until(link_up, 10, "replica link up")
    return r


@pytest.fixture
def kcd(harness, redis):
    return harness.kcached(redis)


@pytest.fixture
def cli(kcd):
    return kcd.client()


def _asan_runtime(lib):
    """Path of the ASan runtime a shared library links against, or None."""
    try:
        out = subprocess.run(["ldd", lib], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"(lib(?:clang_rt\.)?asan[^\s]*\.so[^\s]*)\s*=>\s*(\S+)", out)
    return m.group(2) if m else None


def pytest_configure(config):
    """A libkcache built with -fsanitize=address can only be loaded into a
    process whose first library is the ASan runtime: when the libkcache tests
    are selected, re-execute this pytest with the runtime preloaded and leak
    checking off (it would report Python's own allocations). child_env() gives
    the daemons and tools we spawn the original settings back."""
    wants_lib = not config.args or any(
        os.path.isdir(a) or os.path.basename(a.split("::")[0]).startswith("test_libkcache")
        for a in config.args)
    if not wants_lib or not os.path.exists(LIBKCACHE):
        return
    rt = _asan_runtime(LIBKCACHE)
    if not rt or rt in os.environ.get("LD_PRELOAD", ""):
        return
    if os.environ.get("KCACHE_TEST_REEXEC"):
        raise pytest.UsageError(f"cannot preload {rt} for {LIBKCACHE}")
    env = dict(os.environ)
    env["KCACHE_TEST_REEXEC"] = "1"
    env["KCACHE_ORIG_LD_PRELOAD"] = env.get("LD_PRELOAD", "")
    env["KCACHE_ORIG_ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "")
    env["LD_PRELOAD"] = rt + (":" + env["LD_PRELOAD"] if env.get("LD_PRELOAD") else "")
    env["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=1"
    # pytest has redirected fds 1 and 2 to capture files: give them back first.
    capman = config.pluginmanager.getplugin("capturemanager")
    if capman is not None:
        capman.suspend_global_capture(in_=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, getattr(sys, "orig_argv", [sys.executable] + sys.argv), env)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        h = getattr(item, "_kc_harness", None)
        if h is not None:
            for name, text in h.logs():
                rep.sections.append((name, text))


def assert_healthy(kcd):
    """The daemon is alive and a fresh client can ping, set and get."""
    assert kcd.alive(), f"kcached died (status {kcd.proc.returncode}); log:\n{tail(kcd.log_path)}"
    with RpcClient(kcd.sock) as c:
        assert c.call("ping") == (None, "pong")
        key = "health:%d" % time.monotonic_ns()
        assert c.call("set", key, b"ok") == (None, True)
        assert c.call("get", key) == (None, b"ok")
    assert kcd.alive()


__all__ = [
    "T", "TIME_SCALE", "wait_until", "free_port", "rss_kb", "tail", "child_env",
    "Resp", "RespError", "RedisServer", "RpcClient", "ConnectionClosed", "pack",
    "pack_map_raw", "pack_array_raw", "raw_request", "err_code", "Kcached", "Harness", "AdminClient",
    "assert_healthy", "KCACHED", "KCACHE_CLI", "LIBKCACHE", "errno",
]


# --------------------------------------------------------------------------
# Several Redis nodes: a primary with replicas, kcached's admin socket, and a
# read load that checks every answer (test_backends.py, test_sentinel.py,
# bench/failover.py).
# --------------------------------------------------------------------------

def wait_replica_link(r, timeout=10):
    """Polls until redis-server r reports its link to its primary up."""
    def link_up():
        return "master_link_status:up" in r.cmd("INFO", "replication").decode()
    wait_until(link_up, timeout, f"{r.name} (port {r.port}) replication link up")


def admin_json(k, line, timeout=5.0):
    """Kcached.admin() for the commands that answer one JSON object (stats, backends)."""
    text = k.admin(line, timeout=timeout)
    try:
        return json.loads(text)
    except ValueError:
        raise AssertionError(f"admin {line!r} did not answer JSON: {text!r}") from None


def node_of(backends, port, host="127.0.0.1"):
    """The node of an admin `backends` answer whose addr is host:port."""
    addr = f"{host}:{port}"
    for n in backends.get("nodes", []):
        if n.get("addr") == addr:
            return n
    raise AssertionError(f"no node {addr} in backends: {backends!r}")


class Topology:
    """A Redis primary and replicas (replication links up) and the kcacheds
    pointing at them (their admin socket: Kcached.admin())."""

    def __init__(self, harness, n_replicas=2):
        self.harness = harness
        self.primary = harness.redis()
        self.replicas = [harness.redis(replicaof=self.primary.port) for _ in range(n_replicas)]
        for r in self.replicas:
            wait_replica_link(r)

    def kcached(self, ini=None, replica_ports=None, start=True, env=None):
        """replica_ports: the [redis] replicas (default: this topology's)."""
        if replica_ports is None:
            replica_ports = [r.port for r in self.replicas]
        sections = {"redis": {"replicas": ",".join(f"127.0.0.1:{p}" for p in replica_ports)
                              or None}}
        for sec, kv in (ini or {}).items():
            sections.setdefault(sec, {}).update(kv)
        return self.harness.kcached(self.primary, ini=sections, env=env, start=start)

    def backends(self, k):
        return admin_json(k, "backends")

    def node(self, k, r):
        """The admin `backends` entry of redis-server r (or a port)."""
        return node_of(self.backends(k), getattr(r, "port", r))

    def preset(self, k, n=100, prefix="pre"):
        """Sets n keys through kcached and waits until every replica holds them.
        Returns {key: value}."""
        keys = {f"{prefix}:{i:04d}": b"value-%04d-" % i + os.urandom(8).hex().encode()
                for i in range(n)}
        with RpcClient(k.sock) as c:
            for key, v in keys.items():
                err, res = c.call("set", key, v)
                assert (err, res) == (None, True), f"preset set {key}: {err!r}"
        # Compare with the primary's bytes: kcached may store an envelope.
        pfx = k.sections.get("cache", {}).get("key_prefix", "kc:")
        last = (pfx + list(keys)[-1]).encode()
        stored = self.primary.cmd("GET", last)
        assert stored is not None, f"{last!r} not on the primary"
        for r in self.replicas:
            if r.alive():
                wait_until(lambda r=r: r.cmd("GET", last) == stored, 10,
                           f"{r.name} to replicate the preset keys")
        return keys


class ReadLoad:
    """Reads pre-set keys through kcached from `conns` connections on one
    selector thread, each keeping `depth` gets in flight, and checks every
    answer: a failure is an error response, a wrong value, a closed
    connection, or no response within `timeout` seconds (scaled). Records
    (completion time, latency, ok) for every request."""

    def __init__(self, sock_path, keys, conns=10, depth=1, timeout=5.0, options=None):
        self.sock_path = sock_path
        self.keys = list(keys.items())
        self.n_conns = conns
        self.depth = depth
        self.timeout = T(timeout)
        self.options = options
        self.samples = []    # (t_done monotonic, latency s, ok)
        self.failures = []   # (t monotonic, key, what)
        self.anomalies = []  # responses nobody waits for (duplicates, unknown msgid)
        self.n_ok = 0
        self.marks = {}
        self._stop = threading.Event()
        self._thread = None
        self._conns = []
        self.t_start = None
        self.t_stop = None

    # -- life
    def start(self):
        for _ in range(self.n_conns):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(T(5))
            s.connect(self.sock_path)
            self._conns.append({"sock": s, "unpacker": msgpack.Unpacker(raw=False),
                                "out": {}, "next": 1, "ki": len(self._conns) * 7, "open": True})
        self.t_start = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="readload", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        """Stops sending, waits for (or times out) what is in flight, returns self."""
        self._stop.set()
        self._thread.join(self.timeout + T(10))
        assert not self._thread.is_alive(), "read load thread did not stop"
        for c in self._conns:
            c["sock"].close()
        self.t_stop = time.monotonic()
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, *a):
        if self._thread is not None and self._thread.is_alive():
            self.stop()

    def mark(self, name):
        self.marks[name] = time.monotonic()
        return self.marks[name]

    # -- results
    def ok_since(self, t):
        return sum(1 for s in list(self.samples) if s[0] >= t and s[2])

    def wait_ok(self, n, timeout=10, since=None):
        """Polls until n more successful reads completed (since `since`, default now)."""
        t = time.monotonic() if since is None else since
        wait_until(lambda: self.ok_since(t) >= n or self._thread_died(), timeout,
                   f"{n} successful reads")
        assert not self._thread_died(), "read load thread died"

    def _thread_died(self):
        return self._thread is not None and not self._thread.is_alive() and not self._stop.is_set()

    def describe_failures(self, limit=10):
        if not self.failures and not self.anomalies:
            return "no failures"
        t0 = self.t_start or 0
        lines = [f"{len(self.failures)} failed reads of {len(self.samples)}, "
                 f"{len(self.anomalies)} anomalies; marks: "
                 + ", ".join(f"{k}@{v - t0:.3f}s" for k, v in self.marks.items())]
        for t, key, what in self.failures[:limit]:
            lines.append(f"  +{t - t0:.3f}s {key}: {what}")
        for a in self.anomalies[:limit]:
            lines.append(f"  anomaly: {a!r}")
        return "\n".join(lines)

    # -- the loop
    def _send(self, c, now):
        while c["open"] and len(c["out"]) < self.depth and not self._stop.is_set():
            key, expected = self.keys[c["ki"] % len(self.keys)]
            c["ki"] += 1
            msgid = c["next"]
            c["next"] += 1
            params = [key] if self.options is None else [key, self.options]
            try:
                c["sock"].sendall(msgpack.packb([0, msgid, "get", params], use_bin_type=True))
            except OSError as e:
                self._lost(c, now, f"send failed: {e!r}")
                return
            c["out"][msgid] = (key, expected, now)

    def _lost(self, c, now, what):
        if not c["open"]:
            return
        c["open"] = False
        for key, _, t0 in c["out"].values():
            self.failures.append((now, key, what))
            self.samples.append((now, now - t0, False))
        c["out"].clear()

    def _on_response(self, c, obj, now):
        if not (isinstance(obj, list) and len(obj) == 4 and obj[0] == 1):
            self.anomalies.append(("not a response", obj))
            return
        _, msgid, err, res = obj
        ent = c["out"].pop(msgid, None)
        if ent is None:
            self.anomalies.append(("response nobody waits for", msgid, err))
            return
        key, expected, t0 = ent
        ok = err is None and res == expected
        if ok:
            self.n_ok += 1
        elif err is not None:
            self.failures.append((now, key, f"error {err!r} after {now - t0:.3f}s"))
        else:
            self.failures.append((now, key, f"wrong value {res!r}"))
        self.samples.append((now, now - t0, ok))

    def _run(self):
        sel = selectors.DefaultSelector()
        now = time.monotonic()
        for c in self._conns:
            c["sock"].setblocking(True)
            c["sock"].settimeout(T(5))
            sel.register(c["sock"], selectors.EVENT_READ, c)
            self._send(c, now)
        while True:
            stopping = self._stop.is_set()
            if stopping and not any(c["out"] for c in self._conns if c["open"]):
                break
            for sk, _ in sel.select(0.02):
                c = sk.data
                now = time.monotonic()
                try:
                    data = c["sock"].recv(1 << 20)
                except OSError as e:
                    data = None
                    err = e
                if not data:
                    sel.unregister(c["sock"])
                    self._lost(c, now, "connection closed by kcached" if data == b""
                               else f"recv failed: {err!r}")
                    continue
                c["unpacker"].feed(data)
                for obj in c["unpacker"]:
                    self._on_response(c, obj, now)
                self._send(c, now)
            now = time.monotonic()
            for c in self._conns:
                late = [m for m, (_, _, t0) in c["out"].items() if now - t0 > self.timeout]
                for m in late:
                    key, _, t0 = c["out"].pop(m)
                    self.failures.append((now, key, f"no response within {self.timeout:.1f}s"))
                    self.samples.append((now, now - t0, False))
                if late:
                    self._send(c, now)
        sel.close()


# --------------------------------------------------------------------------
# Stored values: kcached writes an envelope (proto/PROTOCOL.md). Tests that
# look at Redis directly unwrap it with this independent decoder.
# --------------------------------------------------------------------------

def stored_payload(raw):
    """The value inside a kcached envelope (raw bytes as they are otherwise);
    None stays None. Checks the crc like kcached does."""
    import struct, zlib
    if raw is None or len(raw) < 2 or raw[0] != 0xC1 or raw[1] != ord("K"):
        return raw
    flags, slen = raw[3], raw[4]
    off = 5 + slen
    length, crc = struct.unpack(">II", raw[off:off + 8])
    body = raw[off + 8:]
    data = zlib.decompress(body) if flags & 1 else body
    assert len(data) == length and zlib.crc32(data) == crc, "bad envelope"
    return data


# --------------------------------------------------------------------------
# Cache semantics (test_cache.py, test_leases.py, test_invalidate.py): raw
# envelopes, Redis key names, kcached's cache counters, and many requests in
# flight over many connections.
# --------------------------------------------------------------------------

def make_envelope(payload, schema=b"", flags=0, version=1, length=None, crc=None, body=None):
    """A stored value as kcached writes it (see daemon/envelope.h), with every
    field overridable to craft broken ones: length/crc default to payload's,
    body (the bytes after the header) defaults to payload."""
    import zlib
    if length is None:
        length = len(payload)
    if crc is None:
        crc = zlib.crc32(payload)
    return (bytes([0xC1, ord("K"), version, flags, len(schema)]) + schema
            + struct.pack(">II", length, crc) + (payload if body is None else body))


def meta_base(prefix):
    """M: "kcache" NUL key_prefix NUL, the base of kcached's metadata keys."""
    p = prefix.encode() if isinstance(prefix, str) else prefix
    return b"kcache\0" + p + b"\0"


def gen_key(prefix, ns):
    """The Redis key holding namespace ns's generation."""
    n = ns.encode() if isinstance(ns, str) else ns
    return meta_base(prefix) + b"gen\0" + n


def data_key(prefix, key, ns=None, gen=None):
    """The Redis key of an app key: prefix + key, or prefix NUL ns NUL gen NUL key."""
    p = prefix.encode() if isinstance(prefix, str) else prefix
    k = key.encode() if isinstance(key, str) else key
    if ns is None:
        return p + k
    n = ns.encode() if isinstance(ns, str) else ns
    g = gen if isinstance(gen, bytes) else str(gen).encode()
    return p + b"\0" + n + b"\0" + g + b"\0" + k


def cache_stats(c):
    """The RPC `stats` answer of an RpcClient (totals, namespaces)."""
    err, res = c.call("stats")
    assert err is None, f"stats failed: {err!r}"
    return res


class Inflight:
    """Requests in flight over several RpcClients at once: send() them,
    pump() to read whatever arrived on any connection, and look at what has
    been answered so far without blocking on any one request."""

    def __init__(self):
        self.reqs = []     # (client, msgid, tag)
        self.results = {}  # (id(client), msgid) -> (error, result)

    def send(self, client, method, *params, tag=None):
        msgid = client.request(method, params)
        self.reqs.append((client, msgid, tag))
        return msgid

    def pump(self, timeout=0.0):
        """Reads what arrives within timeout seconds (unscaled; 0: only what is there)."""
        clients = {c.sock.fileno(): c for c, _, _ in self.reqs if not c.eof
                   and c.sock.fileno() >= 0}
        if clients:
            r, _, _ = select.select(list(clients), [], [], max(0.0, timeout))
            for fd in r:
                c = clients[fd]
                try:
                    data = c.sock.recv(1 << 20)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    c.eof = True
                    continue
                c.unpacker.feed(data)
                for obj in c.unpacker:
                    c._file(obj)
        for c, msgid, _ in self.reqs:
            if msgid in c.stash and (id(c), msgid) not in self.results:
                self.results[(id(c), msgid)] = tuple(c.stash.pop(msgid))
        return self

    def answered(self):
        """[(client, msgid, tag, error, result)] of the requests answered so far."""
        return [(c, m, t) + self.results[(id(c), m)] for c, m, t in self.reqs
                if (id(c), m) in self.results]

    def pending(self):
        return [(c, m, t) for c, m, t in self.reqs if (id(c), m) not in self.results]

    def wait_answered(self, n, timeout=5.0, what=None):
        """Polls until at least n requests are answered; returns answered()."""
        wait_until(lambda: len(self.pump(0.01).answered()) >= n, timeout,
                   what or f"{n} answers of {len(self.reqs)} requests")
        return self.answered()

    def wait_all(self, timeout=5.0):
        return self.wait_answered(len(self.reqs), timeout)


__all__ += ["make_envelope", "meta_base", "gen_key", "data_key", "cache_stats", "Inflight",
            "stored_payload"]


# --------------------------------------------------------------------------
# Hardening (test_bad_input.py, test_limits.py, test_auth.py): kcached's admin
# `stats` counters before and after a case, file descriptor limits, peer
# processes run as another user.
# --------------------------------------------------------------------------

def stat_of(stats, path):
    """A counter of an admin `stats` answer by dotted path ("errors_by_code.BAD_REQUEST")."""
    v = stats
    for part in path.split("."):
        assert isinstance(v, dict) and part in v, f"no {path!r} in admin stats: {sorted(stats)}"
        v = v[part]
    assert isinstance(v, (int, float)), f"{path} is not a number: {v!r}"
    return v


def admin_stats(k):
    return admin_json(k, "stats")


def wait_counted(k, before, *counters, timeout=3.0):
    """Polls admin `stats` until every counter moved: each is "path" (by at
    least 1) or ("path", n) (by at least n) since `before`. Returns the last
    answer; the assertion names the counters that did not move."""
    want = [(c, 1) if isinstance(c, str) else (c[0], c[1]) for c in counters]
    last = {}

    def moved():
        last["s"] = s = admin_stats(k)
        return all(stat_of(s, p) - stat_of(before, p) >= n for p, n in want)
    try:
        wait_until(moved, timeout, "stats counters to move")
    except AssertionError:
        s = last.get("s") or admin_stats(k)
        short = {p: f"{stat_of(before, p)} -> {stat_of(s, p)} (want +{n})" for p, n in want
                 if stat_of(s, p) - stat_of(before, p) < n}
        raise AssertionError(f"admin stats did not count the case: {short}") from None
    return last["s"]


def wait_gauge(k, path, pred, timeout=5.0, what=None):
    """Polls admin `stats` until pred(value of path); returns the value."""
    last = {}

    def ok():
        last["v"] = stat_of(admin_stats(k), path)
        return pred(last["v"])
    try:
        wait_until(ok, timeout, what or f"stats {path}")
    except AssertionError:
        raise AssertionError(f"stats {path} stuck at {last.get('v')!r}"
                             + (f" waiting for {what}" if what else "")) from None
    return last["v"]


class counted:
    """`with counted(k, "protocol_errors"): <hostile input>` - afterwards the
    counters moved (see wait_counted), the daemon is alive and a second,
    fresh client's round trip works (assert_healthy). `.before` and `.after`
    hold the two admin `stats` answers."""

    def __init__(self, k, *counters, timeout=3.0, healthy=True):
        self.k = k
        self.counters = counters
        self.timeout = timeout
        self.healthy = healthy
        self.before = None
        self.after = None

    def __enter__(self):
        self.before = admin_stats(self.k)
        return self

    def __exit__(self, exc_type, *a):
        if exc_type is not None:
            return False
        self.after = wait_counted(self.k, self.before, *self.counters, timeout=self.timeout)
        if self.healthy:
            assert_healthy(self.k)
        return False

    def delta(self, path):
        return stat_of(self.after, path) - stat_of(self.before, path)


def raise_nofile(need):
    """Raises this process's RLIMIT_NOFILE soft limit to at least `need`
    (and the hard limit too when that is allowed: root). Processes started
    afterwards inherit it. Fails - never skips - when it cannot."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
        except (ValueError, OSError) as e:
            pytest.fail(f"RLIMIT_NOFILE hard limit {hard} is below the {need} this test "
                        f"needs and cannot be raised ({e}); raise it (ulimit -Hn) and rerun",
                        pytrace=False)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY
                                                    else need, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def run_as(uid, gid, script, *args, timeout=10.0):
    """Runs `/usr/bin/python3 -c script args...` as uid:gid with no
    supplementary groups (setpriv); returns the CompletedProcess."""
    cmd = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
           "/usr/bin/python3", "-c", script] + [str(a) for a in args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=T(timeout),
                          env=child_env(), cwd="/")


def round_trip_blocking(k):
    """assert_healthy() without select() (RpcClient's select() cannot watch a
    descriptor above 1023, which tests holding thousands of sockets get):
    ping, set, get on a fresh blocking socket."""
    assert k.alive(), f"kcached died (status {k.proc.returncode}); log:\n{tail(k.log_path)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(T(5))
        s.connect(k.sock)
        key = "rtb:%d" % time.monotonic_ns()
        s.sendall(pack([0, 1, "ping", []]) + pack([0, 2, "set", [key, b"ok"]])
                  + pack([0, 3, "get", [key]]))
        u = msgpack.Unpacker(raw=False)
        got = {}
        while len(got) < 3:
            data = s.recv(65536)
            assert data, "kcached closed the connection"
            u.feed(data)
            for o in u:
                got[o[1]] = (o[2], o[3])
    assert got == {1: (None, "pong"), 2: (None, True), 3: (None, b"ok")}, got


def unix_connect(path, timeout=10.0):
    """A connected Unix stream socket (timeout 5 s) that waits while the
    listener's backlog is full: a socket with a timeout is non-blocking, and
    connect() then fails with EAGAIN instead of waiting."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(T(5))
    deadline = time.monotonic() + T(timeout)
    while True:
        try:
            s.connect(path)
            return s
        except BlockingIOError:
            if time.monotonic() > deadline:
                s.close()
                raise AssertionError(f"the listen backlog of {path} stayed full") from None
            time.sleep(0.001)


__all__ += ["stat_of", "admin_stats", "round_trip_blocking", "unix_connect", "wait_counted", "wait_gauge", "counted", "raise_nofile",
            "fd_count", "run_as", "admin_json", "node_of", "Topology", "wait_replica_link"]
