#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Read throughput and latency through kcached while a replica is killed.

Starts a Redis primary and two replicas (redis-server on free loopback ports,
in a temporary directory) and kcached from a build directory, pre-sets keys,
reads them from N connections (one selector thread, `depth` gets in flight
per connection, every answer checked) for D seconds, and kill -9s one replica
at D/2. Prints the machine, throughput per second, p50/p99/max latency before
and after the kill, the time kcached took to mark the replica down, and the
number of failed reads (errors, wrong values, no answer within 5 s).

The client is Python (tests/conftest.py's ReadLoad): the throughput measured
is bounded by this one Python thread, not by kcached; the figures show the
failover's effect (errors, latency spike), not kcached's capacity.

usage: /usr/bin/python3 bench/failover.py [--build build] [--conns 10] [--seconds 20]
"""

import argparse
import sys
import time

from benchlib import machine, use_build, version as kcached_version


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default="build", help="meson build directory (default: build)")
    ap.add_argument("--conns", type=int, default=10, help="client connections (default: 10)")
    ap.add_argument("--depth", type=int, default=1,
                    help="gets in flight per connection (default: 1)")
    ap.add_argument("--seconds", type=float, default=20, help="duration (default: 20)")
    ap.add_argument("--keys", type=int, default=1000, help="keys pre-set and read (default: 1000)")
    a = ap.parse_args()
    if a.seconds < 2 or a.conns < 1 or a.depth < 1 or a.keys < 1:
        ap.error("need --seconds >= 2, --conns >= 1, --depth >= 1, --keys >= 1")
    return a


def pct(sorted_vals, p):
    if not sorted_vals:
        return float("nan")
    i = min(len(sorted_vals) - 1, max(0, int(round(p / 100 * (len(sorted_vals) - 1)))))
    return sorted_vals[i]


def lat_line(name, samples):
    lats = sorted(s[1] for s in samples)
    if not lats:
        return f"  {name:<22} no samples"
    return (f"  {name:<22} n={len(lats):>7}  p50 {pct(lats, 50) * 1e3:7.3f} ms  "
            f"p99 {pct(lats, 99) * 1e3:7.3f} ms  max {lats[-1] * 1e3:8.3f} ms")


def main():
    a = parse_args()
    kcached_bin = use_build(a.build, "failover.py")
    from conftest import Harness, ReadLoad, Topology, admin_json, node_of  # noqa: E402

    version = kcached_version(kcached_bin)
    print("machine:  " + machine())
    print(f"kcached:  {kcached_bin} ({version})")
    print(f"load:     {a.conns} connections x {a.depth} get in flight, {a.keys} keys, "
          f"{a.seconds:g} s, kill -9 of one replica at {a.seconds / 2:g} s")
    print("config:   defaults (command_timeout_ms 1000, [health] interval_ms 500, "
          "timeout_ms 250, failure_threshold 3), log level info")

    h = Harness()
    load = None
    try:
        topo = Topology(h)
        k = topo.kcached(ini={"redis": {"command_timeout_ms": 1000, "connect_timeout_ms": 1000},
                              "log": {"level": "info"}})
        keys = topo.preset(k, n=a.keys, prefix="bench")
        victim = topo.replicas[0]

        def in_rotation():
            b = admin_json(k, "backends")
            return all(node_of(b, r.port)["in_rotation"] for r in topo.replicas)
        deadline = time.monotonic() + 10
        while not in_rotation():
            if time.monotonic() > deadline:
                sys.exit("failover.py: replicas not in rotation after 10 s")
            time.sleep(0.05)

        load = ReadLoad(k.sock, keys, conns=a.conns, depth=a.depth, timeout=5.0).start()
        t0 = load.t_start
        t_kill = t0 + a.seconds / 2
        t_end = t0 + a.seconds
        t_down = None
        killed = False
        while time.monotonic() < t_end:
            now = time.monotonic()
            if not killed and now >= t_kill:
                t_kill = load.mark("kill")
                victim.stop()  # SIGKILL
                killed = True
            if killed and t_down is None:
                if node_of(admin_json(k, "backends"), victim.port)["state"] == "down":
                    t_down = time.monotonic()
            time.sleep(0.02)
        load.stop()
        b = admin_json(k, "backends")
        stats = admin_json(k, "stats")
    finally:
        if load is not None and load._thread is not None and load._thread.is_alive():
            load.stop()
        h.teardown()

    samples = load.samples
    print()
    print("throughput (reads answered per second; the kill is in second "
          f"{int(t_kill - t0)}):")
    n_sec = int(a.seconds + 0.999)
    ok_by, err_by = [0] * (n_sec + 1), [0] * (n_sec + 1)
    for t, _, ok in samples:
        i = min(n_sec, max(0, int(t - t0)))
        if ok:
            ok_by[i] += 1
        else:
            err_by[i] += 1
    for i in range(n_sec):
        mark = "  <- kill -9 replica" if i == int(t_kill - t0) else ""
        print(f"  {i:3d}s {ok_by[i]:8d}/s" + (f"  errors {err_by[i]}" if err_by[i] else "") + mark)
    before = [s for s in samples if s[0] < t_kill]
    after = [s for s in samples if s[0] >= t_kill]
    first = [s for s in after if s[0] < t_kill + 1]
    print()
    print("latency (client side, send to answer):")
    print(lat_line("before the kill", before))
    print(lat_line("after the kill", after))
    print(lat_line("first second after", first))
    print()
    vn = node_of(b, victim.port)
    down_ms = f"{(t_down - t_kill) * 1e3:.0f} ms" if t_down else "not seen"
    print(f"replica marked down after: {down_ms} (admin backends polled every 20 ms); "
          f"its state_changes {vn['state_changes']}, errors_by_class {vn['errors_by_class']}")
    print(f"reads: {load.n_ok} ok, {len(load.failures)} failed, "
          f"{len(load.anomalies)} unexpected responses; "
          f"kcached replies_after_deadline {stats.get('replies_after_deadline')}")
    if load.failures:
        print(load.describe_failures(5))
    return 1 if load.failures or load.anomalies else 0


if __name__ == "__main__":
    sys.exit(main())
