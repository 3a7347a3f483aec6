# SPDX-License-Identifier: MIT
"""kcache.AsyncClient: the asyncio client.

The same methods as kcache.Client, as coroutines. One connection carries any
number of requests in flight: each has its msgid and an asyncio Future,
resolved by the protocol's data_received() when its reply arrives, in any
order. Deadlines, retries and reconnects follow kcache.Client:

  * every call has a deadline (timeout=, connecting included); a reply that
    arrives after it is discarded;
  * a connection kcached closed (a restart) is noticed at once (EOF) and the
    next call makes a new one; a request lost with its connection is sent
    again once if it is a read, or whatever it is if not a byte went out;
  * after fork() the child never uses the parent's connection;
  * a connection belongs to the event loop that made it: used from another
    loop (e.g. a test client that runs each request in a new loop), the old
    connection is dropped and a new one made on the running loop.

A get_or_set abandoned by its caller (deadline or cancellation) may still be
granted a lease by kcached; when that late reply arrives the lease is released
at once so that the next waiter loads the value instead of waiting for the
lease to expire.
"""

import asyncio
import inspect
import logging
import os
import socket

from . import _wire
from ._wire import READ, Methods, blob
from .errors import ConnectionError, KcacheError, LeaseInvalid, ProtocolError, Timeout, \
    error_from_reply

log = logging.getLogger("kcache")


class _NotSent(Exception):
    def __init__(self, exc):
        super().__init__(exc)
        self.exc = exc


class _Lost(_NotSent):
    pass


class _Protocol(asyncio.Protocol):
    def __init__(self, conn):
        self.conn = conn

    def data_received(self, data):
        self.conn.on_data(data)

    def eof_received(self):
        self.conn.on_lost(ConnectionError(None, "kcached closed the connection"))
        return False

    def connection_lost(self, exc):
        self.conn.on_lost(ConnectionError(None, f"connection lost: {exc}" if exc
                                          else "connection closed"))

    def pause_writing(self):
        self.conn.writable.clear()

    def resume_writing(self):
        self.conn.writable.set()


class _AConn:
    """One connection on one event loop."""

    def __init__(self, loop, sock):
        self.loop = loop
        self.pid = os.getpid()
        self.sock = sock          # owned: closed here when the loop cannot do it
        self.transport = None
        self.unpacker = _wire.unpacker()
        self.pending = {}         # msgid -> Future of (error, result)
        self.abandoned = set()    # msgids whose late reply is still owed
        self.leases = {}          # abandoned get_or_set msgid -> (key, options) to release
        self.broken = None
        self.next_msgid = 1
        self.writable = asyncio.Event()
        self.writable.set()

    def on_data(self, data):
        try:
            self.unpacker.feed(data)
            objs = list(self.unpacker)
        except Exception as e:  # noqa: BLE001 - undecodable: end the connection
            self.on_lost(ProtocolError(None, f"undecodable reply: {e}"))
            return
        for obj in objs:
            if isinstance(obj, list) and len(obj) == 4 and obj[0] == 1 and isinstance(obj[1], int):
                m, err, res = obj[1], obj[2], obj[3]
                fut = self.pending.pop(m, None)
                if fut is not None and not fut.done():
                    fut.set_result((err, res))
                    continue
                self.abandoned.discard(m)
                lease_of = self.leases.pop(m, None)
                if lease_of is not None and err is None and isinstance(res, dict) \
                        and isinstance(res.get("lease"), str):
                    self._release_late(lease_of, res["lease"])
            elif isinstance(obj, list) and len(obj) == 3 and obj[0] == 2:
                log.debug("kcache: notification from kcached: %r", obj[1:])
            else:
                self.on_lost(ProtocolError(None, f"not a response: {obj!r:.200}"))
                return

    def _release_late(self, lease_of, token):
        key, o = lease_of
        (m,) = self.register_abandoned(1)
        try:
            self.write(_wire.pack_request(m, "release", _wire.params_with([key, token], o)))
        except _NotSent:
            pass  # the connection is gone: so is the lease

    def on_lost(self, exc):
        if self.broken is not None:
            return
        self.broken = exc
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(_Lost(exc))
        self.pending.clear()
        self.writable.set()
        if self.transport is not None:
            self.transport.abort()

    def register(self, n):
        out = []
        for _ in range(n):
            m = self.next_msgid
            self.next_msgid = 1 if m >= _wire.MAX_MSGID else m + 1
            self.pending[m] = self.loop.create_future()
            out.append(m)
        return out

    def register_abandoned(self, n):
        out = []
        for _ in range(n):
            m = self.next_msgid
            self.next_msgid = 1 if m >= _wire.MAX_MSGID else m + 1
            self.abandoned.add(m)
            out.append(m)
        return out

    def forget(self, msgids, abandon, lease_of=None):
        for m in msgids:
            fut = self.pending.pop(m, None)
            if fut is None:
                continue
            if not fut.done():
                fut.cancel()
            elif not fut.cancelled():
                fut.exception()  # retrieved: no "never retrieved" warning
            if abandon and self.broken is None:
                self.abandoned.add(m)
                if lease_of is not None:
                    self.leases[m] = lease_of

    def write(self, data):
        if self.broken is not None or self.transport is None or self.transport.is_closing():
            raise _NotSent(self.broken or ConnectionError(None, "connection closed"))
        self.transport.write(data)

    def usable(self, loop):
        if self.broken is not None or self.loop is not loop:
            return False
        if len(self.abandoned) > _wire.MAX_ABANDONED and not self.pending:
            return False
        return True

    def drop(self):
        """Ends the connection from whichever loop or thread we are on."""
        exc = ConnectionError(None, "connection closed by the client")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self.on_lost(exc)  # fails what is in flight, aborts the transport
            return
        if self.broken is None:
            self.broken = exc
        if self.loop.is_closed():
            # Its loop is gone: no callback can run on the socket any more.
            try:
                self.sock.close()
            except OSError:
                pass
        elif self.loop.is_running():
            self.loop.call_soon_threadsafe(self._drop_in_loop)
        else:
            # An idle loop (another thread's, or one that will run again):
            # unregister now; the socket closes when that loop runs or at
            # garbage collection.
            try:
                if self.transport is not None:
                    self.transport.abort()
                else:
                    self.sock.close()
            except Exception:  # noqa: BLE001 - whatever the loop's state, drop it
                try:
                    self.sock.close()
                except OSError:
                    pass

    def _drop_in_loop(self):
        # broken is already set (by drop()): fail what waits here too.
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(_Lost(self.broken))
        self.pending.clear()
        if self.transport is not None:
            self.transport.abort()


# Connections a forked child left behind: kept referenced, never touched.
_FORK_LEFTOVERS = []


class AsyncClient(Methods):
    """The asyncio kcached client: the methods of kcache.Client as coroutines
    (`await client.get("k")`), one connection with many requests in flight."""

    def __init__(self, socket_path=None, timeout=_wire.DEFAULT_TIMEOUT):
        self.socket_path = socket_path or _wire.default_socket_path()
        if timeout is None or timeout <= 0:
            timeout = _wire.DEFAULT_TIMEOUT
        self.timeout = float(timeout)
        self._pid = os.getpid()
        self._conn = None
        self._connecting = None  # (loop, Future of _AConn)

    def __repr__(self):
        return f"kcache.AsyncClient({self.socket_path!r}, timeout={self.timeout})"

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        self.close()

    def close(self):
        """Closes the connection (a later call reconnects)."""
        self._check_pid()
        c, self._conn = self._conn, None
        if c is not None:
            c.drop()

    async def aclose(self):
        self.close()

    def pipeline(self):
        """An AsyncPipeline: queue calls, then `await p.execute()`."""
        return AsyncPipeline(self)

    # -- connection
    def _check_pid(self):
        if self._pid == os.getpid():
            return
        # A forked child: close our copy of the parent's descriptor (never
        # shutdown(), which would end the parent's connection) and forget it.
        old, self._conn, self._connecting = self._conn, None, None
        self._pid = os.getpid()
        if old is not None:
            _FORK_LEFTOVERS.append(old)
            try:
                old.sock.close()
            except OSError:
                pass

    async def _connect(self, loop, deadline):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        conn = _AConn(loop, sock)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, self.socket_path),
                                   max(0.0, deadline - loop.time()))
            transport, _ = await loop.create_unix_connection(lambda: _Protocol(conn), sock=sock)
        except asyncio.TimeoutError:
            sock.close()
            raise Timeout(None, f"connect {self.socket_path}: no answer in time",
                          local=True) from None
        except OSError as e:
            sock.close()
            raise ConnectionError(None, f"connect {self.socket_path}: {e.strerror or e}") from None
        conn.transport = transport
        return conn

    async def _get_conn(self, deadline):
        self._check_pid()
        loop = asyncio.get_running_loop()
        c = self._conn
        if c is not None and c.usable(loop):
            return c
        if c is not None:
            self._conn = None
            c.drop()
        if self._connecting is None or self._connecting[0] is not loop:
            task = loop.create_task(self._connect(loop, deadline))
            self._connecting = (loop, task)

            def done(t, self=self):
                if self._connecting is not None and self._connecting[1] is t:
                    self._connecting = None
                if not t.cancelled() and t.exception() is None:
                    self._conn = t.result()
            task.add_done_callback(done)
        task = self._connecting[1]
        try:
            # shield: one caller's deadline must not cancel everyone's connect.
            conn = await asyncio.wait_for(asyncio.shield(task), max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            raise Timeout(None, f"connect {self.socket_path}: no answer in time",
                          local=True) from None
        self._conn = conn
        return conn

    def _timeout(self, timeout, min_timeout=None):
        if timeout is not None:
            return float(timeout)
        return max(self.timeout, min_timeout or 0.0)

    async def _roundtrip(self, reqs, retry, t, lease_of=None):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + t
        again = 1
        while True:
            conn = await self._get_conn(deadline)
            if not conn.writable.is_set():
                try:
                    await asyncio.wait_for(conn.writable.wait(), max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    raise Timeout(None, f"no reply from kcached within {t:.3f}s",
                                  local=True) from None
            msgids = conn.register(len(reqs))
            futs = [conn.pending[m] for m in msgids]
            try:
                conn.write(b"".join(_wire.pack_request(m, meth, p)
                                    for m, (meth, p) in zip(msgids, reqs)))
            except _NotSent as e:
                conn.forget(msgids, abandon=False)
                if again:
                    again -= 1
                    continue
                raise e.exc from None
            try:
                remaining = max(0.0, deadline - loop.time())
                if len(futs) == 1:
                    return [await asyncio.wait_for(futs[0], remaining)]
                return await asyncio.wait_for(asyncio.gather(*futs), remaining)
            except _Lost as e:
                conn.forget(msgids, abandon=False)
                if retry and again:
                    again -= 1
                    continue
                raise e.exc from None
            except asyncio.TimeoutError:
                conn.forget(msgids, abandon=True, lease_of=lease_of)
                raise Timeout(None, f"no reply from kcached within {t:.3f}s",
                              local=True) from None
            except BaseException:
                conn.forget(msgids, abandon=True, lease_of=lease_of)
                raise

    async def _acall(self, method, params, kind, decode, timeout, min_timeout, lease_of):
        t = self._timeout(timeout, min_timeout)
        ((err, res),) = await self._roundtrip([(method, params)], kind == READ, t, lease_of)
        if err is not None:
            raise error_from_reply(err)
        return decode(res)

    def _call(self, method, params, kind, decode, timeout, min_timeout=None, lease_of=None):
        return self._acall(method, params, kind, decode, timeout, min_timeout, lease_of)

    # -- the whole lease protocol
    async def get_or_set(self, key, loader, *, ns=None, schema=None, field=None, lease_ms=None,
                         wait_ms=None, ttl=None, ttl_ms=None, stale_ttl=None, stale_ttl_ms=None,
                         tags=None, timeout=None):
        """kcache.Client.get_or_set() for asyncio: loader() may be a plain
        function or return an awaitable (an async def)."""
        r = await self.get_or_set_begin(key, ns=ns, schema=schema, field=field,
                                        lease_ms=lease_ms, wait_ms=wait_ms, timeout=timeout)
        if r.lease is None:
            return r.value
        try:
            value = loader()
            if inspect.isawaitable(value):
                value = await value
            value = blob(value, "loader's value")
        except BaseException:
            try:
                await self.release(key, r.lease, ns=ns, field=field)
            except KcacheError as e:
                log.info("kcache: release of %r after a loader failure: %s", key, e)
            raise
        try:
            await self.fill(key, r.lease, value, ns=ns, schema=schema, ttl=ttl, ttl_ms=ttl_ms,
                            stale_ttl=stale_ttl, stale_ttl_ms=stale_ttl_ms, field=field, tags=tags)
        except KcacheError as e:
            log.info("kcache: fill of %r failed, value not cached: %s", key, e)
            if not isinstance(e, LeaseInvalid):
                try:
                    await self.release(key, r.lease, ns=ns, field=field)
                except KcacheError:
                    pass
        return value.encode("utf-8") if isinstance(value, str) else value


class AsyncPipeline(Methods):
    """kcache.Pipeline for AsyncClient: queue calls, `await p.execute()`."""

    def __init__(self, client):
        self._client = client
        self._ops = []

    def __len__(self):
        return len(self._ops)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._ops = []

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        self._ops = []

    def _call(self, method, params, kind, decode, timeout, min_timeout=None, lease_of=None):
        self._ops.append((method, params, kind, decode, min_timeout))
        return self

    def reset(self):
        self._ops = []

    async def execute(self, *, timeout=None, raise_on_error=True):
        """See kcache.Pipeline.execute()."""
        ops, self._ops = self._ops, []
        if not ops:
            return []
        t = self._client._timeout(timeout, max((o[4] or 0.0) for o in ops))
        replies = await self._client._roundtrip([(o[0], o[1]) for o in ops],
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
