# SPDX-License-Identifier: MIT
"""kcache.Client: the synchronous client, safe to share between threads.

One Client keeps one Unix-socket connection to kcached, made lazily on the
first call. Threads share it: each request gets its own msgid, so replies may
come back in any order. Whichever waiting thread finds no one reading becomes
the reader for a while and hands the replies it reads to their threads; the
others sleep on a condition variable until their reply (or their deadline)
comes. So a get_or_set waiting in kcached for another thread's lease never
blocks that thread's fill.

Deadlines: every call has one (the client's timeout, or timeout= per call),
connecting included. When it passes the call raises Timeout; a reply arriving
later is recognised by its msgid and discarded. More than MAX_ABANDONED such
replies owed make the next idle call reconnect.

Reconnects: a connection kcached closed (a restart) is noticed before the next
request is sent and remade; a request of which not a byte went out is sent
again on a new connection whatever its method; one that broke after it was
sent is retried once only if it is a read. After fork() (os.getpid() changed)
the child never touches the parent's connection: it closes its copy of the
descriptor, without shutdown(), and connects anew.
"""

import logging
import os
import select
import socket
import threading
import time

from . import _wire
from ._wire import READ, Methods, blob
from .errors import (ConnectionError, KcacheError, LeaseInvalid, ProtocolError, Timeout,
                     error_from_reply)

log = logging.getLogger("kcache")

_WAITING = object()
_POLL_IN = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR
_SEND_FLAGS = getattr(socket, "MSG_NOSIGNAL", 0)


class _NotSent(Exception):
    """Not a byte of the request went out: it may go again on a new connection."""

    def __init__(self, exc):
        super().__init__(exc)
        self.exc = exc


class _Lost(_NotSent):
    """The connection broke after (part of) the request went out."""


class _Expired(Exception):
    """The deadline passed; sent: whether the requests had gone out."""

    def __init__(self, sent=True):
        super().__init__()
        self.sent = sent


def _ms(seconds):
    return max(0, int(seconds * 1000.0 + 0.999))


class _Conn:
    """One connection: socket, reply matching, and who reads. `lock` guards
    every field except `sock` and `unpacker`, which only the thread holding the
    reader role (`reading`) touches for reading, and the holder of `send_lock`
    for writing."""

    def __init__(self, path, deadline):
        self.pid = os.getpid()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout(None, "deadline passed before connecting", local=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(remaining)
            sock.connect(path)
            sock.setblocking(False)
        except socket.timeout:
            sock.close()
            raise Timeout(None, f"connect {path}: no answer in time", local=True) from None
        except OSError as e:
            sock.close()
            raise ConnectionError(None, f"connect {path}: {e.strerror or e}") from None
        self.sock = sock
        self.unpacker = _wire.unpacker()
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.send_lock = threading.Lock()
        self.reading = False
        self.pending = {}        # msgid -> _WAITING or (error, result)
        self.abandoned = set()   # msgids whose late reply is still owed
        self.broken = None       # the KcacheError that ended the connection
        self.users = 0           # calls using the connection now
        self.closed = False
        self.next_msgid = 1

    # -- bookkeeping (callers hold no lock)
    def enter(self):
        with self.lock:
            self.users += 1

    def leave(self):
        with self.lock:
            self.users -= 1
            self._close_if_unused()

    def _close_if_unused(self):
        # Closing the descriptor while another thread polls it could let the
        # number be reused under that thread: close only once nobody uses it.
        if self.broken is not None and self.users == 0 and not self.closed:
            self.closed = True
            self.sock.close()

    def fail(self, exc):
        with self.lock:
            self._fail_locked(exc)

    def _fail_locked(self, exc):
        if self.broken is not None:
            return
        self.broken = exc
        try:
            # Wakes any thread blocked in poll() on the socket; only ever done
            # in the process that owns the connection (see Client._check_pid).
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.cond.notify_all()
        self._close_if_unused()

    def register(self, n):
        with self.lock:
            out = []
            for _ in range(n):
                m = self.next_msgid
                self.next_msgid = 1 if m >= _wire.MAX_MSGID else m + 1
                self.pending[m] = _WAITING
                out.append(m)
            return out

    def forget(self, msgids, abandon):
        with self.lock:
            for m in msgids:
                if self.pending.pop(m, None) is _WAITING and abandon:
                    self.abandoned.add(m)

    def n_pending(self):
        with self.lock:
            return sum(1 for v in self.pending.values() if v is _WAITING)

    def usable(self):
        """Before a new request: False when the connection is broken, kcached
        closed it while it was idle (a restart), or too many late replies are
        owed. Reads what is already there (late replies) without blocking."""
        with self.lock:
            if self.broken is not None:
                return False
            if self.reading:
                return True
            self.reading = True
        try:
            self._read(0)
        finally:
            with self.lock:
                self.reading = False
                self.cond.notify_all()
        with self.lock:
            if self.broken is None and len(self.abandoned) > _wire.MAX_ABANDONED \
                    and not any(v is _WAITING for v in self.pending.values()):
                self._fail_locked(ConnectionError(None, "too many abandoned replies"))
            return self.broken is None

    # -- reading (only by the thread holding the reader role)
    def _read(self, timeout):
        """Waits up to timeout seconds for bytes, reads what is there and hands
        the replies out. Marks the connection broken on EOF or garbage."""
        try:
            p = select.poll()
            p.register(self.sock, _POLL_IN)
            if not p.poll(_ms(timeout)):
                return
        except (OSError, ValueError):
            self.fail(ConnectionError(None, "connection closed"))
            return
        objs = []
        exc = None
        while True:
            try:
                data = self.sock.recv(1 << 18)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                exc = ConnectionError(None, f"recv: {e.strerror or e}")
                break
            if not data:
                exc = ConnectionError(None, "kcached closed the connection")
                break
            try:
                self.unpacker.feed(data)
                objs.extend(self.unpacker)
            except Exception as e:  # noqa: BLE001 - any decoding failure ends the connection
                exc = ProtocolError(None, f"undecodable reply: {e}")
                break
            if len(data) < (1 << 18):
                break
        with self.lock:
            for obj in objs:
                if isinstance(obj, list) and len(obj) == 4 and obj[0] == 1 \
                        and isinstance(obj[1], int):
                    m = obj[1]
                    if self.pending.get(m) is _WAITING:
                        self.pending[m] = (obj[2], obj[3])
                    else:
                        self.abandoned.discard(m)  # a late reply: dropped
                elif isinstance(obj, list) and len(obj) == 3 and obj[0] == 2:
                    log.debug("kcache: notification from kcached: %r", obj[1:])
                else:
                    exc = exc or ProtocolError(None, f"not a response: {obj!r:.200}")
            if exc is not None:
                self._fail_locked(exc)
            self.cond.notify_all()

    def _try_read(self, timeout):
        with self.lock:
            if self.reading or self.broken is not None:
                return False
            self.reading = True
        try:
            self._read(timeout)
        finally:
            with self.lock:
                self.reading = False
                self.cond.notify_all()
        return True

    # -- a round trip
    def send(self, data, deadline):
        view = memoryview(data)
        sent = 0
        if not self.send_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise _Expired(sent=False)
        try:
            while sent < len(view):
                if self.broken is not None:
                    raise (_Lost if sent else _NotSent)(self.broken)
                try:
                    sent += self.sock.send(view[sent:], _SEND_FLAGS)
                    continue
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError as e:
                    exc = ConnectionError(None, f"send: {e.strerror or e}")
                    self.fail(exc)
                    raise (_Lost if sent else _NotSent)(exc) from None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if sent:
                        # Half a request on the stream: nothing after it could be framed.
                        self.fail(ConnectionError(None, "request cut by its deadline"))
                    raise _Expired(sent=False)
                # kcached stops reading while its replies to us pile up: read
                # them meanwhile if no other thread does, or both sides block.
                p = select.poll()
                p.register(self.sock, select.POLLOUT | (0 if self.reading else select.POLLIN))
                ev = p.poll(_ms(remaining))
                if any(e & _POLL_IN for _, e in ev):
                    self._try_read(0)
        finally:
            self.send_lock.release()

    def wait(self, msgids, deadline):
        """{msgid: (error, result)} for every msgid; _Lost or _Expired."""
        got = {}
        todo = list(msgids)
        self.lock.acquire()
        try:
            while True:
                rest = []
                for m in todo:
                    v = self.pending.get(m, _WAITING)
                    if v is _WAITING:
                        rest.append(m)
                    else:
                        got[m] = self.pending.pop(m)
                todo = rest
                if not todo:
                    return got
                if self.broken is not None:
                    for m in todo:
                        self.pending.pop(m, None)
                    raise _Lost(self.broken)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    for m in todo:
                        if self.pending.pop(m, None) is _WAITING:
                            self.abandoned.add(m)
                    raise _Expired()
                if self.reading:
                    self.cond.wait(remaining)
                    continue
                self.reading = True
                self.lock.release()
                try:
                    self._read(remaining)
                finally:
                    self.lock.acquire()
                    self.reading = False
                    self.cond.notify_all()
        finally:
            self.lock.release()


class Client(Methods):
    """A kcached client. socket_path: default $KCACHE_SOCKET, else
    /run/kcache/kcached.sock; timeout: the deadline of every call in seconds
    (connecting included), overridable per call with timeout=."""

    def __init__(self, socket_path=None, timeout=_wire.DEFAULT_TIMEOUT):
        self.socket_path = socket_path or _wire.default_socket_path()
        if timeout is None or timeout <= 0:
            timeout = _wire.DEFAULT_TIMEOUT
        self.timeout = float(timeout)
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._conn = None

    def __repr__(self):
        return f"kcache.Client({self.socket_path!r}, timeout={self.timeout})"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Closes the connection (a later call reconnects)."""
        self._check_pid()
        with self._lock:
            c, self._conn = self._conn, None
        if c is not None:
            c.fail(ConnectionError(None, "client closed"))

    def pipeline(self):
        """A Pipeline: queue calls, then execute() sends them at once."""
        return Pipeline(self)

    # -- connection
    def _check_pid(self):
        if self._pid == os.getpid():
            return
        # A forked child: the parent's connection is not ours. Close our copy
        # of the descriptor only (no shutdown(), which would end the parent's
        # connection too) and start afresh; the locks may have been held by a
        # parent thread at fork time, so they are replaced.
        old = self._conn
        self._lock = threading.Lock()
        self._conn = None
        self._pid = os.getpid()
        if old is not None:
            try:
                old.sock.close()
            except OSError:
                pass

    def _get_conn(self, deadline):
        self._check_pid()
        with self._lock:
            c = self._conn
            if c is not None and not c.usable():
                self._conn = c = None
            if c is None:
                c = self._conn = _Conn(self.socket_path, deadline)
            c.enter()
            return c

    def _timeout(self, timeout, min_timeout=None):
        if timeout is not None:
            return float(timeout)
        return max(self.timeout, min_timeout or 0.0)

    def _roundtrip(self, reqs, retry, t, close_on_timeout=False):
        """Sends reqs [(method, params)] together and returns [(error, result)]
        in the same order. retry: the requests may be sent again after the
        connection broke (reads only)."""
        deadline = time.monotonic() + t
        again = 1
        while True:
            conn = self._get_conn(deadline)
            try:
                msgids = conn.register(len(reqs))
                data = b"".join(_wire.pack_request(m, meth, p)
                                for m, (meth, p) in zip(msgids, reqs))
                try:
                    conn.send(data, deadline)
                    got = conn.wait(msgids, deadline)
                except _Lost as e:
                    conn.forget(msgids, abandon=False)
                    if retry and again:
                        again -= 1
                        continue
                    raise e.exc from None
                except _NotSent as e:
                    conn.forget(msgids, abandon=False)
                    if again:  # nothing went out: nothing can be applied twice
                        again -= 1
                        continue
                    raise e.exc from None
                except _Expired as e:
                    conn.forget(msgids, abandon=e.sent)
                    if close_on_timeout and conn.n_pending() == 0:
                        # A lease kcached grants us later would block the key
                        # until it expires; closing the idle connection hands
                        # it to the next waiter at once.
                        conn.fail(ConnectionError(None, "closed after a get_or_set deadline"))
                    raise Timeout(None, f"no reply from kcached within {t:.3f}s",
                                  local=True) from None
                return [got[m] for m in msgids]
            finally:
                conn.leave()

    def _call(self, method, params, kind, decode, timeout, min_timeout=None, lease_of=None):
        t = self._timeout(timeout, min_timeout)
        ((err, res),) = self._roundtrip([(method, params)], kind == READ, t,
                                        close_on_timeout=lease_of is not None)
        if err is not None:
            raise error_from_reply(err)
        return decode(res)

    # -- the whole lease protocol
    def get_or_set(self, key, loader, *, ns=None, schema=None, field=None, lease_ms=None,
                   wait_ms=None, ttl=None, ttl_ms=None, stale_ttl=None, stale_ttl_ms=None,
                   tags=None, timeout=None):
        """The cached value of key (bytes); on a miss exactly one caller (across
        threads, processes and kcacheds sharing the Redis) runs loader() while
        the others wait for its value. loader() returns bytes or str; it runs
        holding the lease (lease_ms), which it fills, or releases if loader
        raises (the exception propagates). The loaded value is returned even
        when storing it fails (then it is simply not cached). A stale value
        that came with the lease is dropped: loader's value is returned; a
        stale value without one is returned as it is. Errors of kcached before
        the loader runs are raised (the loader is not called)."""
        r = self.get_or_set_begin(key, ns=ns, schema=schema, field=field, lease_ms=lease_ms,
                                  wait_ms=wait_ms, timeout=timeout)
        if r.lease is None:
            return r.value
        try:
            value = blob(loader(), "loader's value")
        except BaseException:
            try:
                self.release(key, r.lease, ns=ns, field=field)
            except KcacheError as e:
                log.info("kcache: release of %r after a loader failure: %s", key, e)
            raise
        try:
            self.fill(key, r.lease, value, ns=ns, schema=schema, ttl=ttl, ttl_ms=ttl_ms,
                      stale_ttl=stale_ttl, stale_ttl_ms=stale_ttl_ms, field=field, tags=tags)
        except KcacheError as e:
            log.info("kcache: fill of %r failed, value not cached: %s", key, e)
            if not isinstance(e, LeaseInvalid):
                # Hand the lease on at once: the next waiter loads the value
                # itself instead of waiting for the lease to expire.
                try:
                    self.release(key, r.lease, ns=ns, field=field)
                except KcacheError:
                    pass
        return value.encode("utf-8") if isinstance(value, str) else value


class Pipeline(Methods):
    """Calls queued, then sent in one write by execute(), which returns their
    results in order. Every method of Client can be queued (it returns the
    pipeline, so calls chain). Use as a context manager:

        with client.pipeline() as p:
            p.get("a"); p.set("b", b"1")
            results = p.execute()
    """

    def __init__(self, client):
        self._client = client
        self._ops = []  # (method, params, kind, decode, min_timeout)

    def __len__(self):
        return len(self._ops)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._ops = []

    def _call(self, method, params, kind, decode, timeout, min_timeout=None, lease_of=None):
        self._ops.append((method, params, kind, decode, min_timeout))
        return self

    def reset(self):
        self._ops = []

    def execute(self, *, timeout=None, raise_on_error=True):
        """Sends every queued call at once; their results in order. The
        deadline covers the whole batch (the longest any call needs). An error
        reply is raised after all replies arrived when raise_on_error,
        else left in place as the KcacheError instance. The batch is sent
        again after a broken connection only if every call in it is a read."""
        ops, self._ops = self._ops, []
        if not ops:
            return []
        t = self._client._timeout(timeout, max((o[4] or 0.0) for o in ops))
        replies = self._client._roundtrip([(o[0], o[1]) for o in ops],
                                          all(o[2] == READ for o in ops), t)
        out = []
        first = None
        for (err, res), op in zip(replies, ops):
            if err is not None:
                e = error_from_reply(err)
                first = first or e
                out.append(e)
            else:
                out.append(op[3](res))
        if raise_on_error and first is not None:
            raise first
        return out
