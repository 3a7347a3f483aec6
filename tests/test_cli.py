# SPDX-License-Identifier: MIT
"""The kcache command line tool: exit codes 0 (ok/hit), 1 (miss), 2 (error);
`kcache admin` on kcached's admin socket, and `admin health` as a probe
(0 ok, 1 degraded, 2 down, 3 could not ask)."""

import errno
import json
import os
import pty
import select
import subprocess
import time

from conftest import stored_payload, KCACHE_CLI, T, child_env, free_port, wait_until


def run(*args, input=None, timeout=10, env=None):
    return subprocess.run([KCACHE_CLI, *args], capture_output=True, input=input,
                          timeout=T(timeout),
                          env=env or child_env(KCACHE_SOCKET=None, KCACHE_ADMIN_SOCKET=None))


def test_version():
    p = run("--version")
    assert p.returncode == 0
    assert b"0.1.0" in p.stdout


def test_set_get(kcd, redis):
    p = run("-s", kcd.sock, "set", "k", "v")
    assert p.returncode == 0, p.stderr
    assert stored_payload(redis.cmd("GET", b"kc:k")) == b"v"
    p = run("-s", kcd.sock, "get", "k")
    assert p.returncode == 0, p.stderr
    # stdout is the raw value, nothing added.
    assert p.stdout == b"v"


def test_get_binary_value_raw(kcd, redis):
    v = b"\x00\x01\xff\n\x00"
    redis.cmd("SET", b"kc:bin", v)
    p = run("-s", kcd.sock, "get", "bin")
    assert p.returncode == 0, p.stderr
    assert p.stdout == v


def test_get_miss_exit_1(kcd):
    p = run("-s", kcd.sock, "get", "missing")
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert p.stdout == b""


def test_no_daemon_exit_2(harness):
    p = run("-s", os.path.join(harness.tmp, "nobody.sock"), "get", "k")
    assert p.returncode == 2
    assert p.stderr != b""


def test_redis_down_exit_2(harness):
    from conftest import free_port
    k = harness.kcached(redis_port=free_port())
    p = run("-s", k.sock, "get", "k")
    assert p.returncode == 2
    assert b"UNAVAILABLE" in p.stderr


def test_bad_usage_exit_2(kcd):
    p = run("-s", kcd.sock, "frobnicate")
    assert p.returncode == 2
    p = run("-s", kcd.sock, "get")
    assert p.returncode == 2


def test_socket_from_environment(kcd):
    p = subprocess.run([KCACHE_CLI, "set", "envk", "v"], capture_output=True, timeout=T(10),
                       env=child_env(KCACHE_SOCKET=kcd.sock))
    assert p.returncode == 0, p.stderr
    p = subprocess.run([KCACHE_CLI, "get", "envk"], capture_output=True, timeout=T(10),
                       env=child_env(KCACHE_SOCKET=kcd.sock))
    assert p.returncode == 0 and p.stdout == b"v"


# --- kcache admin --------------------------------------------------------------

def admin(k, *args, timeout_ms=None):
    """`kcache [-t MS] admin -a ADMIN_SOCKET ARGS...` against kcached k."""
    opts = ["-t", str(int(timeout_ms))] if timeout_ms is not None else []
    return run(*opts, "admin", "-a", k.admin_sock, *args)


def test_admin_health_live(kcd):
    p = admin(kcd, "health", "live")
    assert (p.returncode, p.stdout, p.stderr) == (0, b"ok\n", b"")


def test_admin_health_ready_with_redis_up(kcd):
    wait_until(lambda: admin(kcd, "health", "ready").returncode == 0, 5, "health ready: exit 0")
    p = admin(kcd, "health", "ready")
    assert (p.returncode, p.stdout) == (0, b"ok\n"), p.stderr
    p = admin(kcd, "health")
    assert (p.returncode, p.stdout) == (0, b"ok\n"), p.stderr


def test_admin_health_ready_primary_on_dead_port_exit_2(harness):
    k = harness.kcached(redis_port=free_port())
    wait_until(lambda: admin(k, "health", "ready").returncode == 2, 5, "health ready: exit 2")
    p = admin(k, "health", "ready")
    assert p.returncode == 2 and p.stdout.startswith(b"down: "), (p.stdout, p.stderr)
    # The process itself is fine: live says so.
    assert admin(k, "health", "live").returncode == 0


def test_admin_health_ready_fail_open_exit_1(harness):
    k = harness.kcached(redis_port=free_port(), ini={"health": {"fail_open": "yes"}})
    wait_until(lambda: admin(k, "health", "ready").returncode == 1, 5, "health ready: exit 1")
    assert admin(k, "health", "ready").stdout.startswith(b"degraded: ")


def test_admin_health_missing_socket_exit_3(harness):
    path = os.path.join(harness.tmp, "nobody-admin.sock")
    p = run("admin", "-a", path, "health", "live")
    assert p.returncode == 3, (p.stdout, p.stderr)
    assert p.stdout == b"" and path.encode() in p.stderr
    # Other commands: a plain error.
    assert run("admin", "-a", path, "stats").returncode == 2


def test_admin_health_frozen_kcached_exit_3_within_timeout(kcd):
    assert admin(kcd, "health", "live").returncode == 0
    kcd.freeze()
    try:
        t0 = time.monotonic()
        p = admin(kcd, "health", "live", timeout_ms=300)
        dt = time.monotonic() - t0
    finally:
        kcd.thaw()
    assert p.returncode == 3, (p.stdout, p.stderr)
    assert b"no answer within 300 ms" in p.stderr, p.stderr
    assert 0.25 <= dt < 0.3 + T(2.0), f"gave up after {dt:.3f}s"
    assert admin(kcd, "health", "live").returncode == 0


def test_admin_health_bad_argument_exit_3(kcd):
    # 2 would read as "down" to a probe: a typo in a probe must not restart kcached.
    for args in (["health", "sideways"], ["health", "live", "now"]):
        p = admin(kcd, *args)
        assert p.returncode == 3, (args, p.stdout, p.stderr)


def test_admin_stats_json(kcd):
    p = admin(kcd, "stats")
    assert p.returncode == 0, p.stderr
    assert p.stdout.endswith(b"\n") and p.stdout.count(b"\n") == 1  # raw: not a terminal
    stats = json.loads(p.stdout)
    assert "inflight" in stats and "uptime_s" in stats, stats


def test_admin_stats_pretty_on_a_terminal(kcd):
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([KCACHE_CLI, "admin", "-a", kcd.admin_sock, "stats"],
                                stdout=slave, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                env=child_env(KCACHE_SOCKET=None, KCACHE_ADMIN_SOCKET=None))
        os.close(slave)
        slave = -1
        out = b""
        deadline = time.monotonic() + T(10)
        while time.monotonic() < deadline:
            r, _, _ = select.select([master], [], [], 0.1)
            if not r:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError as e:  # EIO: every slave end is closed
                assert e.errno == errno.EIO
                break
            if not data:
                break
            out += data
        assert proc.wait(timeout=T(10)) == 0, proc.stderr.read()
        proc.stderr.close()
    finally:
        os.close(master)
        if slave != -1:
            os.close(slave)
    text = out.replace(b"\r\n", b"\n").decode()
    assert text.startswith("{\n  \""), text[:200]
    assert text.endswith("\n}\n"), text[-200:]
    assert "\n    " in text, "nested objects are indented by 2 more"
    assert "inflight" in json.loads(text)


def test_admin_metrics_without_terminator(kcd):
    p = admin(kcd, "metrics")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.decode().split("\n")
    assert lines[-1] == "", "the answer ends with a newline"
    assert lines[-2] != "." and "." not in lines, "the framing line is stripped"
    assert any(line.startswith("# TYPE kcache_") for line in lines), p.stdout[:300]


def test_admin_config_without_terminator(kcd):
    p = admin(kcd, "config")
    assert p.returncode == 0, p.stderr
    text = p.stdout.decode()
    assert "[server]" in text and text.endswith("\n") and not text.endswith("\n.\n")


def test_admin_unknown_command_exit_2(kcd):
    p = admin(kcd, "nope")
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert p.stdout == b"" and b"error: unknown command" in p.stderr


def test_admin_command_with_argument(kcd):
    p = admin(kcd, "flush", "somens")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(b"ok generation="), p.stdout
    p = admin(kcd, "loglevel", "sideways")
    assert p.returncode == 2 and b"error:" in p.stderr


def test_admin_socket_from_environment(kcd):
    p = run("admin", "health", "live",
            env=child_env(KCACHE_SOCKET=None, KCACHE_ADMIN_SOCKET=kcd.admin_sock))
    assert (p.returncode, p.stdout) == (0, b"ok\n"), p.stderr
    # -a wins over the environment.
    p = run("admin", "-a", kcd.admin_sock, "health",
            env=child_env(KCACHE_SOCKET=None, KCACHE_ADMIN_SOCKET="/nonexistent/admin.sock"))
    assert p.returncode == 0, p.stderr


def test_admin_usage(kcd):
    assert b"admin" in run("--help").stdout
    for args in (["admin"], ["admin", "-a"], ["admin", "-a", kcd.admin_sock],
                 ["admin", "-a", kcd.admin_sock, "stats\nquit"]):
        p = run(*args)
        assert p.returncode == 2, (args, p.stdout, p.stderr)
