# SPDX-License-Identifier: MIT
"""A tiny fake Redis for tests: a threaded TCP server on a loopback port that
speaks enough RESP to look like a node to kcached.

AUTH and SELECT answer +OK and PING answers +PONG (so kcached's connection
handshake and health probes succeed), unless `replies` says otherwise; every
other command gets `default` (raw RESP bytes, e.g. a -LOADING error line), or
replies[NAME] when the command NAME has its own entry. A reply may also be a
callable(args) -> bytes, args being the command as a list of bytes.

Every command received is recorded (`commands`, `count()`), so a test can
check what kcached sent and how often.

A callable reply may also return an iterator of byte chunks instead of bytes:
they are streamed one by one (for replies too large to build, e.g. a header
declaring 2 GB followed by data) until the iterator ends or the peer closes.
`bytes_sent` counts what was written, `peer_closed` the connections the peer
(kcached) closed or reset, `peer_closed_event` is set at the first one.

Standalone, for poking at kcached by hand:
    /usr/bin/python3 tests/fakeredis.py --port 7000 --reply '-LOADING loading'
"""

import argparse
import socket
import threading

LOADING = b"-LOADING Redis is loading the dataset in memory\r\n"


class ProtocolError(Exception):
    pass


def _parse(buf):
    """(command as list of bytes, bytes consumed) for the first complete
    command in buf, or (None, 0) if it is incomplete."""
    if not buf:
        return None, 0
    if buf[:1] != b"*":
        # Inline command (what `nc` or `redis-cli` in a pipe may send).
        end = buf.find(b"\r\n")
        if end < 0:
            end = buf.find(b"\n")
            if end < 0:
                return None, 0
            return [bytes(a) for a in buf[:end].split()], end + 1
        return [bytes(a) for a in buf[:end].split()], end + 2
    end = buf.find(b"\r\n")
    if end < 0:
        return None, 0
    try:
        n = int(buf[1:end])
    except ValueError:
        raise ProtocolError(f"bad multibulk length {buf[:end]!r}") from None
    if n < 0 or n > 1024 * 1024:
        raise ProtocolError(f"multibulk length out of range: {n}")
    pos = end + 2
    args = []
    for _ in range(n):
        end = buf.find(b"\r\n", pos)
        if end < 0:
            return None, 0
        if buf[pos:pos + 1] != b"$":
            raise ProtocolError(f"expected a bulk string at {buf[pos:pos + 16]!r}")
        try:
            ln = int(buf[pos + 1:end])
        except ValueError:
            raise ProtocolError(f"bad bulk length {buf[pos:end]!r}") from None
        if ln < 0 or ln > 512 * 1024 * 1024:
            raise ProtocolError(f"bulk length out of range: {ln}")
        start = end + 2
        if len(buf) < start + ln + 2:
            return None, 0
        args.append(bytes(buf[start:start + ln]))
        pos = start + ln + 2
    return args, pos


class FakeRedis:
    def __init__(self, default=LOADING, replies=None, port=0):
        self.default = default
        self.replies = {b"AUTH": b"+OK\r\n", b"SELECT": b"+OK\r\n", b"PING": b"+PONG\r\n"}
        for k, v in (replies or {}).items():
            self.replies[k.upper().encode() if isinstance(k, str) else k.upper()] = v
        self.want_port = port
        self.port = None
        self.commands = []
        self.connections = 0
        self.peer_closed = 0
        self.bytes_sent = 0
        self.peer_closed_event = threading.Event()
        self._lock = threading.Lock()
        self._listener = None
        self._socks = []
        self._threads = []
        self._stopping = False

    # -- life
    def start(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.want_port))
        s.listen(64)
        self._listener = s
        self.port = s.getsockname()[1]
        t = threading.Thread(target=self._accept_loop, name=f"fakeredis-{self.port}",
                             daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self):
        self._stopping = True
        if self._listener is not None:
            try:
                # shutdown() wakes the thread blocked in accept().
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
        with self._lock:
            socks = list(self._socks)
        for c in socks:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
        for t in self._threads:
            t.join(5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *a):
        self.stop()

    # -- what was received
    def count(self, name, *args):
        """How many commands NAME (with these leading args, if given) were received."""
        name = name.upper().encode() if isinstance(name, str) else name.upper()
        want = [a.encode() if isinstance(a, str) else a for a in args]
        with self._lock:
            return sum(1 for c in self.commands
                       if c and c[0].upper() == name and c[1:1 + len(want)] == want)

    def set_reply(self, name, reply):
        """Changes the reply to NAME (None: the default reply) while running."""
        key = name.upper().encode() if isinstance(name, str) else name.upper()
        with self._lock:
            if reply is None:
                self.replies.pop(key, None)
            else:
                self.replies[key] = reply

    def _on_peer_closed(self):
        with self._lock:
            self.peer_closed += 1
        self.peer_closed_event.set()

    # -- serving
    def _accept_loop(self):
        while not self._stopping:
            try:
                c, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._socks.append(c)
                self.connections += 1
            t = threading.Thread(target=self._serve, args=(c,), daemon=True,
                                 name=f"fakeredis-{self.port}-conn")
            t.start()
            self._threads.append(t)

    def _reply_for(self, args):
        with self._lock:
            self.commands.append(args)
            r = self.replies.get(args[0].upper() if args else b"", self.default)
        return r(args) if callable(r) else r

    def _send(self, c, data):
        c.sendall(data)
        with self._lock:
            self.bytes_sent += len(data)

    def _serve(self, c):
        buf = bytearray()
        try:
            while not self._stopping:
                data = c.recv(65536)
                if not data:
                    self._on_peer_closed()
                    return
                buf += data
                out = []
                while True:
                    args, used = _parse(buf)
                    if args is None:
                        break
                    del buf[:used]
                    if args:
                        r = self._reply_for(args)
                        if isinstance(r, (bytes, bytearray)):
                            out.append(bytes(r))
                            continue
                        # A stream: what is queued first, then its chunks.
                        if out:
                            self._send(c, b"".join(out))
                            out = []
                        for chunk in r:
                            if self._stopping:
                                return
                            self._send(c, chunk)
                if out:
                    self._send(c, b"".join(out))
        except ProtocolError:
            return
        except OSError:
            if not self._stopping:
                self._on_peer_closed()
            return
        finally:
            with self._lock:
                if c in self._socks:
                    self._socks.remove(c)
            c.close()


def main():
    ap = argparse.ArgumentParser(description="fake Redis answering one reply to everything")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--reply", default=LOADING.decode().strip(),
                    help="RESP line (without CRLF) answered to every command but AUTH/SELECT/PING")
    a = ap.parse_args()
    f = FakeRedis(default=a.reply.encode() + b"\r\n", port=a.port).start()
    print(f"fake redis on 127.0.0.1:{f.port}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        f.stop()


if __name__ == "__main__":
    main()
