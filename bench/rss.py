#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""kcached's resident memory: idle, and with the near cache full.

Starts a private redis-server primary + replica and, one after the other,
kcached with the near cache off and with near_cache_bytes = --near-mib MiB
(compression off, so that values take their size; defaults otherwise,
log level warn), each given the same warm-up: --keys
values of --value-size bytes set through it (more than the near cache holds),
then --seconds of uniform GETs over all of them from 10 connections
(bench/kcache-bench.c), so the near cache fills up and keeps evicting. Prints
VmRSS of each kcached at start (idle, clients gone) and after the warm-up,
the near cache's own byte count and entries, and checks the targets of
issue 6:

  idle, near cache off:         RSS < 10 MiB
  near cache full:              RSS(on) <= RSS(off, same warm-up) + 1.10 x near_cache_bytes

Use a non-sanitized build.

usage: /usr/bin/python3 bench/rss.py [--build build-bench] [--near-mib 64] [--keys 100000]
       [--value-size 1024] [--seconds 5]
"""

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time

from benchlib import kcache_bench, use_build, version as kcached_version


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default="build-bench")
    ap.add_argument("--near-mib", type=int, default=64)
    ap.add_argument("--keys", type=int, default=100000)
    ap.add_argument("--value-size", type=int, default=1024)
    ap.add_argument("--seconds", type=float, default=5)
    a = ap.parse_args()
    kcached = use_build(a.build, "rss.py")
    from conftest import Harness, Topology, admin_json, rss_kb  # noqa: E402

    tmp = tempfile.mkdtemp(prefix="krss.")
    kb = kcache_bench(tmp)
    version = kcached_version(kcached)
    print(f"kcached: {kcached} ({version}); machine: nproc {os.cpu_count()}, "
          f"Linux {platform.release()}; glibc malloc defaults")
    print(f"warm-up: {a.keys} keys x {a.value_size} B set through kcached, then {a.seconds:g} s "
          f"of uniform GETs from 10 connections")
    near_bytes = a.near_mib << 20
    h = Harness()
    res = {}
    try:
        topo = Topology(h)
        for label, nb in (("off", 0), ("on", near_bytes)):
            # compression off: kcache-bench's values are a pattern that zlib shrinks to
            # a sixth, and the near cache holds what is stored.
            k = topo.kcached(ini={"cache": {"near_cache_bytes": nb, "near_cache_ttl_ms": 86400000,
                                            "compression": "off"},
                                  "log": {"level": "warn"}})
            if nb:
                deadline = time.monotonic() + 10
                while not admin_json(k, "stats")["cache"]["near"]["active"]:
                    if time.monotonic() > deadline:
                        sys.exit("rss.py: the near cache did not become active")
                    time.sleep(0.05)
            time.sleep(0.5)  # idle: only the health probes run
            idle = rss_kb(k.pid)
            sock = "unix:" + k.sock
            base = [kb, "-k", str(a.keys), "-s", str(a.value_size)]
            subprocess.run(base + ["--preload", "-n", "1", "-w", "0", sock], check=True,
                           capture_output=True)
            r = subprocess.run(base + ["-c", "10", "-w", "0", "-d", str(a.seconds), sock],
                               check=True, capture_output=True, text=True)
            if " errors=0" not in r.stdout:
                sys.exit(f"rss.py: kcache-bench reported errors:\n{r.stdout}")
            time.sleep(0.5)
            near = admin_json(k, "stats")["cache"]["near"]
            res[label] = {"idle": idle, "warm": rss_kb(k.pid), "near": near}
            print(f"near cache {label:>3}: RSS idle {idle} kB, after the warm-up "
                  f"{res[label]['warm']} kB; near cache {near.get('bytes', 0)} bytes in "
                  f"{near.get('entries', 0)} entries, {near.get('evictions', 0)} evictions, "
                  f"hits {near.get('hits', 0)}")
            k.proc.terminate()
            k.proc.wait(timeout=30)
    finally:
        h.teardown()
    off, on = res["off"], res["on"]
    bound = off["warm"] + 1.10 * near_bytes / 1024
    extra = on["warm"] - off["warm"]
    ok_idle = off["idle"] < 10 * 1024
    ok_full = on["warm"] <= bound
    print(f"idle, near cache off: {off['idle']} kB (target < 10240 kB): "
          f"{'ok' if ok_idle else 'MISSED'}")
    print(f"near cache full: RSS(on) - RSS(off) = {extra} kB = {extra * 1024 / near_bytes:.3f} x "
          f"near_cache_bytes ({near_bytes >> 10} kB); bound {bound:.0f} kB (1.10 x): "
          f"{'ok' if ok_full else 'MISSED'}")
    return 0 if ok_idle and ok_full else 1


if __name__ == "__main__":
    sys.exit(main())
