# SPDX-License-Identifier: MIT
"""Sentinel: kcached finds the primary and replicas through three real
redis-sentinel processes and follows a failover (manual, or after the
primary is killed) without a restart and without touching client
connections. Also: [sentinel] excludes a static primary/replicas."""

import os
import shutil
import signal
import subprocess
import time

import pytest

from conftest import (KCACHED, T, Resp, RespError, Topology, admin_json, child_env, free_port,
                      kcached_env, node_of, tail, wait_until)

REDIS_SENTINEL = (os.environ.get("REDIS_SENTINEL") or shutil.which("redis-sentinel")
                  or "/usr/bin/redis-sentinel")
MASTER = "mymaster"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000
# Sentinels find each other through hello messages every 2 s.
BOUND_DISCOVERY = 4
# A kill -9'd primary: subjectively down after down-after-milliseconds, then
# quorum, election and promotion; a failed attempt is retried after
# failover-timeout.
BOUND_FAILOVER = (DOWN_AFTER_MS + FAILOVER_TIMEOUT_MS) / 1000


class Sentinel:
    """One redis-sentinel on a loopback port, with its own (writable) config
    file. Duck-types RedisServer's teardown (thaw, stop, name, log_path), so
    that the harness stops it and shows its log on failure."""

    def __init__(self, workdir, name, primary_port, quorum=2):
        self.workdir = workdir
        self.name = name
        self.primary_port = primary_port
        self.quorum = quorum
        self.port = None
        self.proc = None
        self.log_path = None

    @property
    def pid(self):
        return self.proc.pid

    def start(self):
        assert os.path.exists(REDIS_SENTINEL), \
            f"{REDIS_SENTINEL} missing (apt-get install redis-sentinel)"
        for _ in range(8):
            port = free_port()
            d = os.path.join(self.workdir, f"{self.name}-{port}")
            os.makedirs(d, exist_ok=True)
            conf = os.path.join(d, "sentinel.conf")
            with open(conf, "w") as f:
                f.write(f"port {port}\n"
                        "bind 127.0.0.1\n"
                        "daemonize no\n"
                        f"dir {d}\n"
                        'logfile ""\n'
                        f"sentinel monitor {MASTER} 127.0.0.1 {self.primary_port} {self.quorum}\n"
                        f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
                        f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}\n")
            self.log_path = os.path.join(d, "sentinel.log")
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen([REDIS_SENTINEL, conf], stdout=log,
                                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             env=child_env(), cwd=d)
            self.port = port
            deadline = time.monotonic() + T(10)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break  # port raced: another one
                try:
                    if self.cmd("PING") == "PONG":
                        return self
                except (OSError, RespError):
                    pass
                time.sleep(0.01)
            self.stop()
        raise AssertionError(f"{self.name} did not start; log:\n{tail(self.log_path)}")

    def cmd(self, *args):
        with Resp(self.port, timeout=2) as r:
            return r.cmd(*args)

    def master_info(self):
        v = self.cmd("SENTINEL", "master", MASTER)
        return {v[i].decode(): v[i + 1].decode() for i in range(0, len(v), 2)}

    def master_addr(self):
        host, port = self.cmd("SENTINEL", "get-master-addr-by-name", MASTER)
        return f"{host.decode()}:{port.decode()}"

    def thaw(self):
        if self.alive():
            os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=T(10))

    def alive(self):
        return self.proc is not None and self.proc.poll() is None


class SentinelSetup:
    """A primary, two replicas and three sentinels that know them all."""

    def __init__(self, harness):
        self.harness = harness
        self.topo = Topology(harness)
        self.sentinels = []
        for i in range(3):
            s = Sentinel(harness.tmp, f"sentinel{i}", self.topo.primary.port)
            harness.redises.append(s)  # stopped (first) and logged by the harness
            s.start()
            self.sentinels.append(s)

        def discovered():
            for s in self.sentinels:
                m = s.master_info()
                if m["num-other-sentinels"] != "2" or m["num-slaves"] != "2":
                    return False
            return True
        wait_until(discovered, 10 * BOUND_DISCOVERY,
                   "sentinels to know each other and both replicas")

    @property
    def redises(self):
        return [self.topo.primary] + self.topo.replicas

    def by_addr(self, addr):
        port = int(addr.rsplit(":", 1)[1])
        for r in self.redises:
            if r.port == port:
                return r
        raise AssertionError(f"{addr} is none of our Redis servers")

    def kcached(self, ini=None):
        sections = {"redis": {"primary": None, "command_timeout_ms": int(1000 * T(1)),
                              "reconnect_max_ms": 200},
                    "health": {"interval_ms": 100, "timeout_ms": int(250 * T(1))},
                    "sentinel": {"addresses": ",".join(f"127.0.0.1:{s.port}"
                                                       for s in self.sentinels),
                                 "master_name": MASTER},
                    "log": {"level": "info"}}
        for sec, kv in (ini or {}).items():
            sections.setdefault(sec, {}).update(kv)
        return self.harness.kcached(self.topo.primary, ini=sections)


def backends(k):
    return admin_json(k, "backends")


def wait_discovered(k, setup):
    """Polls until kcached's backends show the primary and both replicas the
    sentinels know, the replicas in rotation."""
    p = setup.topo.primary

    def ok():
        b = backends(k)
        if b["primary"] != f"127.0.0.1:{p.port}" or b["sentinel"] is None:
            return None
        if b["sentinel"]["primary"] != f"127.0.0.1:{p.port}":
            return None
        for r in setup.topo.replicas:
            n = node_of(b, r.port)
            if n["role"] != "replica" or n["state"] != "up" or not n["in_rotation"]:
                return None
        return b
    return wait_until(ok, 10, "kcached to discover the primary and replicas through Sentinel")


def write_lands_on(c, r, key):
    """A predicate: set (a new key each time) through kcached on connection c
    succeeds and the key is on redis-server r (the new primary). Compared by
    existence: kcached may store the value in an envelope."""
    def pred():
        pred.n += 1
        k = f"{key}:{pred.n}"
        err, res = c.call("set", k, b"x", timeout=10)
        if (err, res) != (None, True):
            pred.last = (k, err, res)
            return False
        n = r.cmd("EXISTS", b"kc:" + k.encode())
        pred.last = (k, "EXISTS on the new primary:", n)
        return n == 1 and c.call("get", k) == (None, b"x")
    pred.n = 0
    pred.last = None
    return pred


def assert_follows(k, setup, new, c):
    b = backends(k)
    addr = f"127.0.0.1:{new.port}"
    assert b["primary"] == addr, b
    assert b["sentinel"]["master_name"] == MASTER, b
    assert b["sentinel"]["primary"] == addr, b
    assert b["sentinel"]["failovers"] >= 1, b
    assert node_of(b, new.port)["role"] == "primary", b
    # The client connection opened before is the same and still open.
    assert not c.eof
    assert c.call("ping") == (None, "pong")


def test_sentinel_manual_failover(harness):
    setup = SentinelSetup(harness)
    k = setup.kcached()
    pid = k.pid
    c = k.client()
    assert c.call("set", "before", b"1") == (None, True)
    wait_discovered(k, setup)
    assert c.call("get", "before") == (None, b"1")
    old = setup.topo.primary

    wait_until(lambda: setup.sentinels[0].cmd("SENTINEL", "failover", MASTER) == "OK", 10,
               "SENTINEL failover accepted")
    new_addr = wait_until(lambda: (a := setup.sentinels[0].master_addr()) != f"127.0.0.1:{old.port}"
                          and a, 30, "the sentinels to name a new primary")
    new = setup.by_addr(new_addr)
    pred = write_lands_on(c, new, "after-failover")
    try:
        wait_until(pred, 30, "writes through the same client connection to reach the new primary")
    except AssertionError as e:
        raise AssertionError(f"{e}; last attempt: {pred.last!r}") from None
    wait_until(lambda: backends(k)["primary"] == new_addr, 10, "backends to name the new primary")
    assert_follows(k, setup, new, c)
    assert c.call("get", "before") == (None, b"1")
    assert k.alive() and k.pid == pid


def test_sentinel_primary_killed(harness):
    setup = SentinelSetup(harness)
    k = setup.kcached()
    pid = k.pid
    c = k.client()
    wait_discovered(k, setup)
    assert c.call("set", "before", b"1") == (None, True)
    old = setup.topo.primary
    old.stop()  # SIGKILL
    new_addr = wait_until(lambda: (a := setup.sentinels[1].master_addr()) != f"127.0.0.1:{old.port}"
                          and a, 10 * BOUND_FAILOVER, "the sentinels to fail over")
    new = setup.by_addr(new_addr)
    pred = write_lands_on(c, new, "after-kill")
    try:
        wait_until(pred, 30, "writes through the same client connection to reach the new primary")
    except AssertionError as e:
        raise AssertionError(f"{e}; last attempt: {pred.last!r}") from None
    wait_until(lambda: backends(k)["primary"] == new_addr, 10, "backends to name the new primary")
    assert_follows(k, setup, new, c)
    assert k.alive() and k.pid == pid


# --------------------------------------------------------------------------
# Configuration: Sentinel or static nodes, not both.
# --------------------------------------------------------------------------

def check_config(harness, sections, env=None):
    """Runs `kcached -t` on an INI built from the harness defaults plus sections."""
    k = harness.kcached(redis_port=6390, ini=sections, start=False)
    k.write_ini()
    return subprocess.run([KCACHED, "-t", "-c", k.ini_path], capture_output=True, text=True,
                          env=kcached_env(**(env or {})), timeout=T(10))


SENTINEL_INI = {"sentinel": {"addresses": "127.0.0.1:26390,127.0.0.1:26391",
                             "master_name": MASTER}}


@pytest.mark.parametrize("case", ["file-primary", "file-replicas", "env-primary", "ok"])
def test_sentinel_excludes_static_nodes(harness, case):
    ini = {sec: dict(kv) for sec, kv in SENTINEL_INI.items()}
    env = {}
    ini["redis"] = {"primary": None}  # the harness default sets one
    if case == "file-primary":
        ini["redis"]["primary"] = "127.0.0.1:6390"
    elif case == "file-replicas":
        ini["redis"]["replicas"] = "127.0.0.1:6391"
    elif case == "env-primary":
        env = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": "6390"}
    p = check_config(harness, ini, env)
    if case == "ok":
        assert p.returncode == 0, p.stderr
        assert "127.0.0.1:26390" in p.stdout
    else:
        assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
        assert "sentinel" in p.stderr.lower(), p.stderr


def test_sentinel_needs_master_name(harness):
    p = check_config(harness, {"redis": {"primary": None},
                               "sentinel": {"addresses": "127.0.0.1:26390"}})
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    assert "master_name" in p.stderr, p.stderr

