#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Heap allocations per request in kcached, by the library that made them.

Runs kcached under bench/alloc-count.c (LD_PRELOAD: counts every malloc,
calloc, realloc by calling object and call site, written at exit) against a
private redis-server, once per case with --requests N requests of
bench/kcache-bench.c and once with none (the same start, preload and
warm-up): the difference over N is what one request allocates. Cases: GET
100 B, GET 4 KiB, SET 100 B (near cache off), near-cache hits, get_or_set
hits. Prints per case the allocations per request of the kcached executable
itself, libhiredis, libmsgpackc, libev, libc and others, and kcached's own
call sites (addr2line).

usage: /usr/bin/python3 bench/allocs.py [--build build-bench] [--requests 200000]
"""

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time

from benchlib import build_tool, kcache_bench, use_build, version as kcached_version

CASES = [
    # name, kcache-bench options, near_cache_bytes, read from a replica
    ("GET 100 B", ["-s", "100"], 0, False),
    ("GET 4 KiB", ["-s", "4096"], 0, False),
    ("GET 100 B, read_from replica (a retry copy is kept)", ["-s", "100"], 0, True),
    ("SET 100 B", ["-s", "100", "-r", "0"], 0, False),
    ("GET 100 B, near-cache hits", ["-s", "100"], 64 << 20, False),
    ("get_or_set 100 B, hits", ["-s", "100", "--get-or-set"], 0, False),
]


def counts_of(path):
    """{(object, function, offset, address): count} from an alloc-count dump."""
    out = {}
    with open(path) as f:
        for line in f:
            obj, fn, off, addr, n = line.rstrip("\n").split("\t")
            out[(obj, fn, off, addr)] = out.get((obj, fn, off, addr), 0) + int(n)
    return out


def is_pie(path):
    with open(path, "rb") as f:
        return f.read(18)[16] == 3  # e_type ET_DYN


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default="build-bench")
    ap.add_argument("--requests", type=int, default=200000)
    a = ap.parse_args()
    kcached = use_build(a.build, "allocs.py")
    from conftest import Harness, admin_json, node_of, wait_replica_link  # noqa: E402

    tmp = tempfile.mkdtemp(prefix="kallocs.")
    so = build_tool("alloc-count.c", os.path.join(tmp, "alloc-count.so"), "-shared", "-fPIC",
                    "-ldl")
    kb = kcache_bench(tmp)
    version = kcached_version(kcached)
    print(f"kcached: {kcached} ({version}); {a.requests} requests per case, 10 connections; "
          f"counts: bench/alloc-count.c (LD_PRELOAD)")

    h = Harness()
    try:
        redis = h.redis()
        replica = h.redis(replicaof=redis.port)
        wait_replica_link(replica, timeout=30)

        def run(case_opts, near_bytes, n, tag, from_replica):
            out = os.path.join(tmp, f"{tag}.counts")
            ini = {"cache": {"near_cache_bytes": near_bytes, "near_cache_ttl_ms": 86400000},
                   "log": {"level": "warn"}}
            if from_replica:
                ini["redis"] = {"replicas": f"127.0.0.1:{replica.port}", "read_from": "replica"}
            k = h.kcached(redis, ini=ini, env={"LD_PRELOAD": so, "ALLOC_COUNT_OUT": out})
            if from_replica:
                deadline = time.monotonic() + 10
                while not node_of(admin_json(k, "backends"), replica.port)["in_rotation"]:
                    if time.monotonic() > deadline:
                        sys.exit("allocs.py: the replica did not come into rotation")
                    time.sleep(0.05)
            sock = "unix:" + k.sock
            base = [kb, "-k", "1000", "-w", "0"]
            subprocess.run(base + ["--preload", "-n", "1"] + case_opts + [sock], check=True,
                           capture_output=True)
            if near_bytes:
                deadline = time.monotonic() + 10
                while not admin_json(k, "stats")["cache"]["near"]["active"]:
                    if time.monotonic() > deadline:
                        sys.exit("allocs.py: the near cache did not become active")
                    time.sleep(0.05)
            # Warm-up: every key read once (near cache filled), then the measured requests.
            subprocess.run(base + ["-c", "10", "-n", "5000"] + case_opts + [sock], check=True,
                           capture_output=True)
            if n:
                r = subprocess.run(base + ["-c", "10", "-n", str(n)] + case_opts + [sock],
                                   check=True, capture_output=True, text=True)
                if " errors=0" not in r.stdout:
                    sys.exit(f"allocs.py: kcache-bench reported errors:\n{r.stdout}")
            k.proc.terminate()
            k.proc.wait(timeout=30)
            return counts_of(out)

        for name, opts, near_bytes, from_replica in CASES:
            c0 = run(opts, near_bytes, 0, "base", from_replica)
            c1 = run(opts, near_bytes, a.requests, "load", from_replica)
            by_obj = collections.Counter()
            own_sites = collections.Counter()
            for site in set(c0) | set(c1):
                d = c1.get(site, 0) - c0.get(site, 0)
                obj = site[0]
                if obj == "kcached":
                    own_sites[site] += d
                by_obj[obj] += d
            per = {o: n / a.requests for o, n in by_obj.items()}
            total = sum(per.values())
            shown = ", ".join(f"{o} {v:.2f}" for o, v in sorted(per.items(), key=lambda x: -x[1])
                              if abs(v) >= 0.005)
            print(f"\n{name}: {total:.2f} allocations per request: {shown or 'none'}")
            offs = [s for s, d in own_sites.most_common() if d / a.requests >= 0.005]
            if offs:
                pie = is_pie(kcached)
                names = subprocess.run(["addr2line", "-f", "-s", "-e", kcached] +
                                       [s[2] if pie else s[3] for s in offs], capture_output=True,
                                       text=True).stdout.split("\n")
                for i, s in enumerate(offs):
                    fn, where = names[2 * i], names[2 * i + 1]
                    print(f"    kcached {fn} ({where}): {own_sites[s] / a.requests:.2f}")
    finally:
        h.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
