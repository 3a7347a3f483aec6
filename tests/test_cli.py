# SPDX-License-Identifier: MIT
"""The kcache command line tool: exit codes 0 (ok/hit), 1 (miss), 2 (error)."""

import os
import subprocess

from conftest import stored_payload, KCACHE_CLI, T, child_env


def run(*args, input=None, timeout=10):
    return subprocess.run([KCACHE_CLI, *args], capture_output=True, input=input,
                          timeout=T(timeout), env=child_env(KCACHE_SOCKET=None))


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
