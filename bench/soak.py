#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Soak: mixed load through kcached for N minutes while a replica is killed
and restarted every 20 s (not run in CI).

Starts a Redis primary and two replicas (redis-server on free loopback ports,
in a temporary directory) and kcached from a build directory (defaults plus
log level info), pre-sets `--keys` stable keys that are never written again,
then runs `--clients` connections on one selector thread, each keeping
`--depth` requests in flight, with a mix of: get / mget / exists / ttl of the
stable keys (every value checked), set / del / get_or_set + fill / hset +
hget / invalidate on a churn key space, and connection churn (a connection
is closed and reopened every ~2,000 answers). Every `--kill-every` seconds it
kill -9s one replica (alternating), restarts it on the same port `--down`
seconds later and waits until kcached has it back in rotation.

Reports requests, errors by code (plus wrong values, closed connections and
requests without an answer within 5 s), and kcached's RSS and open fd count
at start (after a warm-up) and at the end (all nodes back, the same clients
connected). Errors are split by time: inside a "disturbance window" (from a
kill until 2 s after the restarted replica is back in rotation) or outside
(a healthy topology). Exit status 1 if: any error outside the windows, any
wrong value, RSS growth above --rss-bound-mib, or a different fd count.

The client is Python: the request rate is bounded by this one thread, not by
kcached.

usage: /usr/bin/python3 bench/soak.py [--build build] [--minutes 10] [--clients 32] [--peer-clients 8]
"""

import argparse
import json
import os
import random
import selectors
import socket
import sys
import threading
import time
from collections import Counter

from benchlib import fd_count, machine, use_build, version as kcached_version


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default="build", help="meson build directory (default: build)")
    ap.add_argument("--minutes", type=float, default=10, help="duration (default: 10)")
    ap.add_argument("--clients", type=int, default=32, help="connections (default: 32)")
    ap.add_argument("--depth", type=int, default=4,
                    help="requests in flight per connection (default: 4)")
    ap.add_argument("--keys", type=int, default=2000, help="stable keys (default: 2000)")
    ap.add_argument("--kill-every", type=float, default=20,
                    help="seconds between replica kills (default: 20)")
    ap.add_argument("--down", type=float, default=3,
                    help="seconds a killed replica stays down (default: 3)")
    ap.add_argument("--warmup", type=float, default=15,
                    help="seconds of load before the start RSS/fd figures (default: 15)")
    ap.add_argument("--rss-bound-mib", type=float, default=16,
                    help="allowed RSS growth from warm-up to end (default: 16)")
    ap.add_argument("--peer-clients", type=int, default=8,
                    help="connections to a second kcached on the same Redis that only run "
                         "get_or_set + fill on the same lease keys (default: 8; 0: none)")
    ap.add_argument("--json", help="also write the summary as JSON to this file")
    ap.add_argument("--keep-log", help="copy kcached's log to this file at the end")
    ap.add_argument("--log-level", default="info",
                    help="kcached's log level (default: info; debug traces every lease)")
    a = ap.parse_args()
    if a.minutes <= 0 or a.clients < 1 or a.depth < 1 or a.keys < 10 or a.kill_every < 5:
        ap.error("need --minutes > 0, --clients >= 1, --depth >= 1, --keys >= 10, "
                 "--kill-every >= 5")
    return a


class Load:
    """Mixed requests from many connections on one selector thread."""

    ANSWER_TIMEOUT = 5.0
    CHURN_EVERY = 2000

    def __init__(self, msgpack, sock_path, stable, n_conns, depth, seed=1, leases_only=False):
        self.msgpack = msgpack
        self.leases_only = leases_only
        self.sock_path = sock_path
        self.stable = list(stable.items())
        self.n_conns = n_conns
        self.depth = depth
        self.rng = random.Random(seed)
        self.requests = 0
        self.ok = 0
        self.by_method = Counter()
        self.events = []  # (t, kind, detail): errors, wrong values, closes, timeouts
        self.reconnects = 0
        self.fills_refused = 0
        self._stop = threading.Event()
        self._sel = selectors.DefaultSelector()
        self._conns = []
        self._thread = None

    # -- connections
    def _open(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(self.sock_path)
        c = {"sock": s, "unpacker": self.msgpack.Unpacker(raw=False), "out": {}, "next": 1,
             "answers": 0}
        self._sel.register(s, selectors.EVENT_READ, c)
        self._conns.append(c)
        return c

    def _close(self, c):
        self._sel.unregister(c["sock"])
        c["sock"].close()
        self._conns.remove(c)

    # -- the mix
    def _pick(self):
        r = self.rng.random()
        if self.leases_only:
            r = 0.85  # get_or_set only (the second kcached)
        key, val = self.stable[self.rng.randrange(len(self.stable))]
        churn = "churn:%d" % self.rng.randrange(500)
        if r < 0.45:
            return "get", [key], ("value", val)
        if r < 0.55:
            ks = [self.stable[self.rng.randrange(len(self.stable))] for _ in range(8)]
            return "mget", [[k for k, _ in ks]], ("values", [v for _, v in ks])
        if r < 0.60:
            return "exists", [[key, "nope:%d" % self.rng.randrange(100)]], ("eq", 1)
        if r < 0.63:
            return "ttl", [key], ("ttl", None)
        if r < 0.75:
            opts = {"ttl": 60}
            if self.rng.random() < 0.3:
                opts["ns"] = "soakns%d" % self.rng.randrange(4)
            if self.rng.random() < 0.2:
                opts["tags"] = ["soaktag%d" % self.rng.randrange(4)]
            return "set", [churn, os.urandom(self.rng.choice((16, 200, 3000))), opts], \
                ("eq", True)
        if r < 0.80:
            return "del", [[churn]], ("int", None)
        if r < 0.87:
            # Leases on their own keys: no set/del/invalidate of them by
            # others (a pattern or tag invalidation still refuses every fill
            # of a lease granted before it, by design: see fill below).
            lk = "lease:%d" % self.rng.randrange(200)
            return "get_or_set", [lk, {"wait_ms": 3000}], ("gos", lk)
        if r < 0.92:
            return "hset", ["hsoak:%d" % self.rng.randrange(50),
                            {"f%d" % self.rng.randrange(5): b"x" * 50}], ("eq", True)
        if r < 0.96:
            return "hget", ["hsoak:%d" % self.rng.randrange(50), "f1"], ("any", None)
        if r < 0.99:
            return "get", [churn], ("any", None)
        sel = self.rng.choice(({"keys": [churn]}, {"tags": ["soaktag%d" % self.rng.randrange(4)]},
                               {"namespace": "soakns%d" % self.rng.randrange(4)}))
        return "invalidate", [sel], ("any", None)

    def _send(self, c, method, params, check, now):
        msgid = c["next"]
        c["next"] += 1
        try:
            c["sock"].sendall(self.msgpack.packb([0, msgid, method, params], use_bin_type=True))
        except OSError as e:
            self._lost(c, now, f"send failed: {e!r}")
            return False
        c["out"][msgid] = (method, check, now, params[0] if params else None)
        self.requests += 1
        self.by_method[method] += 1
        return True

    def _fill(self, c, now):
        while c in self._conns and len(c["out"]) < self.depth and not self._stop.is_set():
            method, params, check = self._pick()
            if not self._send(c, method, params, check, now):
                return

    def _lost(self, c, now, what):
        for method, _, _, _ in c["out"].values():
            self.events.append((now, "closed", f"{method}: {what}"))
        c["out"].clear()
        if c in self._conns:
            self._close(c)
        if not self._stop.is_set():
            self._fill(self._open(), now)

    def _answer(self, c, obj, now):
        if not (isinstance(obj, list) and len(obj) == 4 and obj[0] == 1):
            self.events.append((now, "anomaly", repr(obj)[:200]))
            return
        _, msgid, err, res = obj
        ent = c["out"].pop(msgid, None)
        if ent is None:
            self.events.append((now, "anomaly", f"answer nobody waits for: {msgid}"))
            return
        method, (kind, want), t0, arg0 = ent
        t_lease = None
        if isinstance(want, tuple):  # fill: (key, token)
            want, t_lease = want
        c["answers"] += 1
        if err is not None:
            code = err.get("code") if isinstance(err, dict) else repr(err)
            if method == "fill" and code == "LEASE_INVALID":
                # Not an error: a pattern/tag invalidation since the lease was
                # granted revoked it. A loader then gives the lease back.
                self.fills_refused += 1
                self._send(c, "release", [want, t_lease], ("any", None), now)
                return
            self.events.append((now, f"error:{code}/{method}",
                                f"{arg0!r:.80} after {now - t0:.3f}s: {err!r}"[:300]))
            return
        bad = None
        if kind == "value" and res != want:
            bad = f"get returned {res!r:.60} for a stable key"
        elif kind == "values" and res != want:
            bad = "mget returned wrong values for stable keys"
        elif kind == "eq" and res != want:
            bad = f"{method} returned {res!r:.60}, want {want!r}"
        elif kind == "ttl" and not (isinstance(res, int) and res > 0):
            bad = f"ttl of a stable key is {res!r}"
        elif kind == "int" and not isinstance(res, int):
            bad = f"{method} returned {res!r:.60}"
        if bad:
            self.events.append((now, "wrong", bad))
            return
        self.ok += 1
        if kind == "gos" and isinstance(res, dict) and "lease" in res:
            # Holder of the lease: fill it at once (a loader that succeeded).
            self._send(c, "fill", [want, res["lease"], b"filled", {"ttl": 5}],
                       ("fill", (want, res["lease"])), now)

    # -- life
    def start(self):
        for _ in range(self.n_conns):
            self._open()
        self._thread = threading.Thread(target=self._run, name="soak-load", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(self.ANSWER_TIMEOUT + 10)
        for c in list(self._conns):
            self._close(c)

    def _run(self):
        now = time.monotonic()
        for c in list(self._conns):
            self._fill(c, now)
        while True:
            if self._stop.is_set() and not any(c["out"] for c in self._conns):
                return
            for sk, _ in self._sel.select(0.02):
                c = sk.data
                if c not in self._conns:
                    continue
                now = time.monotonic()
                try:
                    data = c["sock"].recv(1 << 20)
                except OSError as e:
                    self._lost(c, now, f"recv failed: {e!r}")
                    continue
                if not data:
                    self._lost(c, now, "closed by kcached")
                    continue
                c["unpacker"].feed(data)
                for obj in c["unpacker"]:
                    self._answer(c, obj, now)
                if c["answers"] >= self.CHURN_EVERY and not c["out"]:
                    # Connection churn: a client goes away and another comes.
                    self._close(c)
                    self.reconnects += 1
                    if not self._stop.is_set():
                        self._fill(self._open(), now)
                    continue
                self._fill(c, now)
            now = time.monotonic()
            for c in list(self._conns):
                late = [m for m, (_, _, t0, _) in c["out"].items()
                        if now - t0 > self.ANSWER_TIMEOUT]
                for m in late:
                    method = c["out"].pop(m)[0]
                    self.events.append((now, "no answer", f"{method} after "
                                        f"{self.ANSWER_TIMEOUT:.0f}s"))
                if late:
                    self._fill(c, now)


def main():
    a = parse_args()
    kcached_bin = use_build(a.build, "soak.py")
    import msgpack  # noqa: E402
    from conftest import (Harness, Topology, admin_json, node_of, rss_kb,  # noqa: E402
                          wait_replica_link)

    version = kcached_version(kcached_bin)
    seconds = a.minutes * 60
    print("machine:  " + machine())
    print(f"kcached:  {kcached_bin} ({version})")
    print(f"load:     {a.clients} connections x {a.depth} in flight, mixed methods, "
          f"{a.keys} stable keys, {a.minutes:g} min; a replica kill -9'd every "
          f"{a.kill_every:g} s, restarted {a.down:g} s later", flush=True)

    h = Harness()
    load = peer_load = None
    summary = {}
    try:
        topo = Topology(h)
        k = topo.kcached(ini={"log": {"level": a.log_level}})
        stable = topo.preset(k, n=a.keys, prefix="stable")

        def all_in_rotation():
            b = admin_json(k, "backends")
            return all(node_of(b, r.port)["in_rotation"] for r in topo.replicas)

        def wait(pred, timeout, what):
            deadline = time.monotonic() + timeout
            while not pred():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"timed out waiting for {what}")
                time.sleep(0.05)
        wait(all_in_rotation, 15, "replicas in rotation")

        load = Load(msgpack, k.sock, stable, a.clients, a.depth).start()
        if a.peer_clients > 0:
            # Leases across two daemons: waiters on one, holders on the other,
            # woken by the fill/release notices through Redis.
            k2 = topo.kcached(ini={"log": {"level": a.log_level}})
            peer_load = Load(msgpack, k2.sock, stable, a.peer_clients, 2, seed=2,
                             leases_only=True).start()
        t0 = time.monotonic()
        time.sleep(min(a.warmup, seconds / 4))
        start = {"rss_kb": rss_kb(k.pid), "fds": fd_count(k.pid),
                 "t": time.monotonic() - t0, "requests": load.requests}
        print(f"start (after {start['t']:.0f} s warm-up): RSS {start['rss_kb']} kB, "
              f"{start['fds']} fds", flush=True)
        windows = []  # (t_kill, t_back) relative to t0
        samples = []
        t_end = t0 + seconds
        next_kill = time.monotonic() + a.kill_every / 2
        victim_i = 0
        last_print = time.monotonic()
        while time.monotonic() < t_end:
            now = time.monotonic()
            if now >= next_kill and now + a.down + 15 < t_end:
                victim = topo.replicas[victim_i % len(topo.replicas)]
                port = victim.port
                tk = time.monotonic()
                victim.stop()  # SIGKILL
                time.sleep(a.down)
                new = h.redis(port=port, replicaof=topo.primary.port)
                topo.replicas[victim_i % len(topo.replicas)] = new
                wait_replica_link(new, timeout=30)
                wait(all_in_rotation, 30, "the restarted replica back in rotation")
                tb = time.monotonic()
                windows.append((tk - t0, tb - t0 + 2.0))
                victim_i += 1
                next_kill = tk + a.kill_every
            samples.append((time.monotonic() - t0, rss_kb(k.pid), fd_count(k.pid)))
            if time.monotonic() - last_print >= 60:
                last_print = time.monotonic()
                print(f"  {last_print - t0:6.0f} s: {load.requests} requests, "
                      f"{len(load.events)} events, RSS {samples[-1][1]} kB, "
                      f"{samples[-1][2]} fds, {len(windows)} kills", flush=True)
            time.sleep(0.5)
        load.stop()
        if peer_load is not None:
            peer_load.stop()
        wait(all_in_rotation, 30, "replicas in rotation at the end")
        # The same number of client connections as at the start: open them
        # again (they were closed by stop()) before counting fds.
        probe = []
        for _ in range(a.clients):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(k.sock)
            probe.append(s)
        time.sleep(0.5)
        end = {"rss_kb": rss_kb(k.pid), "fds": fd_count(k.pid), "t": time.monotonic() - t0}
        for s in probe:
            s.close()
        stats = admin_json(k, "stats")
        summary_alive = k.alive()
        warn_lines = [x for x in k.log_text().splitlines()
                      if "level=warn" in x or "level=error" in x]
    finally:
        for ld in (load, peer_load):
            if ld is not None and ld._thread is not None and ld._thread.is_alive():
                ld.stop()
        if a.keep_log and h.kcacheds:
            import shutil
            shutil.copy(h.kcacheds[0].log_path, a.keep_log)
        h.teardown()

    def in_window(t):
        return any(w0 <= t <= w1 for w0, w1 in windows)
    inside, outside = Counter(), Counter()
    examples = []
    events = load.events + (peer_load.events if peer_load is not None else [])
    for t, kind, detail in sorted(events, key=lambda e: e[0]):
        rel = t - t0
        (inside if in_window(rel) else outside)[kind] += 1
        if not in_window(rel) and len(examples) < 10:
            examples.append(f"+{rel:.1f}s {kind}: {detail}")
    rss_max = max(s[1] for s in samples) if samples else 0
    fd_max = max(s[2] for s in samples) if samples else 0
    grew = end["rss_kb"] - start["rss_kb"]
    ok = (not outside and not inside.get("wrong") and summary_alive
          and grew <= a.rss_bound_mib * 1024 and end["fds"] == start["fds"])
    summary = {
        "minutes": a.minutes, "clients": a.clients, "depth": a.depth, "kills": len(windows),
        "requests": load.requests, "ok": load.ok, "by_method": dict(load.by_method),
        "reconnects": load.reconnects, "fills_refused": load.fills_refused,
        "peer": None if peer_load is None else {
            "clients": a.peer_clients, "requests": peer_load.requests, "ok": peer_load.ok,
            "by_method": dict(peer_load.by_method), "fills_refused": peer_load.fills_refused},
        "events_in_windows": dict(inside), "events_outside_windows": dict(outside),
        "window_seconds": round(sum(w1 - w0 for w0, w1 in windows), 1),
        "rss_kb": {"start": start["rss_kb"], "end": end["rss_kb"], "max": rss_max,
                   "growth": grew},
        "fds": {"start": start["fds"], "end": end["fds"], "max": fd_max},
        "kcached_errors_by_code": {c: n for c, n in stats.get("errors_by_code", {}).items() if n},
        "kcached_protocol_errors": stats.get("protocol_errors"),
        "kcached_replies_after_deadline": stats.get("replies_after_deadline"),
        "kcached_log_warnings": len(warn_lines),
        "pass": ok,
    }
    print()
    print(f"requests: {load.requests} ({load.requests / seconds:.0f}/s), {load.ok} ok; "
          f"by method {dict(load.by_method)}; {load.reconnects} connection churns; "
          f"{load.fills_refused} fills refused (LEASE_INVALID after an invalidation: by design)")
    if peer_load is not None:
        print(f"second kcached (leases only): {peer_load.requests} requests, {peer_load.ok} ok; "
              f"by method {dict(peer_load.by_method)}; {peer_load.fills_refused} fills refused")
    print(f"kills: {len(windows)}; disturbance windows total {summary['window_seconds']} s "
          f"of {seconds:.0f} s")
    print(f"errors inside the windows:  {dict(inside) or 'none'}")
    print(f"errors outside the windows: {dict(outside) or 'none'}")
    for e in examples:
        print("  " + e)
    print(f"kcached errors_by_code (its own count): {summary['kcached_errors_by_code'] or 'none'}")
    print(f"RSS: start {start['rss_kb']} kB, end {end['rss_kb']} kB, max {rss_max} kB, "
          f"growth {grew} kB (bound {a.rss_bound_mib:g} MiB)")
    print(f"fds: start {start['fds']}, end {end['fds']}, max {fd_max}")
    print(f"kcached log: {len(warn_lines)} warn/error lines; the last ones:")
    for x in warn_lines[-5:]:
        print("  " + x[:200])
    print("PASS" if ok else "FAIL")
    print("json: " + json.dumps(summary, sort_keys=True))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(summary, f, indent=1, sort_keys=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
