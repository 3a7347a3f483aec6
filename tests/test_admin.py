# SPDX-License-Identifier: MIT
"""kcached's admin socket: the line protocol, its limits, and its life cycle."""

import json
import os
import socket
import stat
import subprocess

from conftest import (T, AdminClient, ConnectionClosed, assert_healthy, free_port, tail,
                      wait_until)


def admin_json(kcd, cmd):
    line = kcd.admin(cmd)
    try:
        return json.loads(line)
    except ValueError:
        raise AssertionError(f"{cmd}: not JSON: {line[:300]!r}")


def recv_eof(a, timeout=5.0):
    """Reads until the server closes; returns what came before EOF."""
    a.sock.settimeout(T(timeout))
    data = a.buf
    while True:
        chunk = a.sock.recv(65536)
        if not chunk:
            return data
        data += chunk


# --- health --------------------------------------------------------------

def test_health_live_and_ready(kcd):
    assert kcd.admin("health live") == "ok"
    wait_until(lambda: kcd.admin("health ready") == "ok", 5, "health ready ok")
    assert kcd.admin("health") == "ok"


def test_health_ready_down_without_redis(harness):
    kcd = harness.kcached(redis_port=free_port())
    assert kcd.admin("health live") == "ok"
    wait_until(lambda: kcd.admin("health ready").startswith("down: "), 5, "health ready down")
    answer = kcd.admin("health")
    assert answer.startswith("down: ") and len(answer) > len("down: "), answer


def test_health_usage(kcd):
    assert kcd.admin("health sideways") == "error: usage: health [live|ready]"
    assert kcd.admin("health live now").startswith("error: usage: health")


def test_health_live_answers_during_startup(harness, redis):
    """The admin socket is bound before the client socket: while the first
    Redis attempt hangs (a frozen Redis never answers SELECT), live is ok."""
    redis.freeze()
    try:
        kcd = harness.kcached(redis, start=False,
                              ini={"redis": {"db": 1, "connect_timeout_ms": int(3000 * T(1))}})
        kcd.start(wait=False)
        wait_until(lambda: os.path.exists(kcd.admin_sock), 2, "admin socket")
        assert kcd.admin("health live") == "ok"
        if not os.path.exists(kcd.sock):
            assert kcd.admin("health ready") == "down: starting"
    finally:
        redis.thaw()
    kcd.wait_ready()
    assert kcd.admin("health live") == "ok"


# --- stats and backends ----------------------------------------------------

def test_stats_counts_requests(kcd):
    c = kcd.client()
    before = admin_json(kcd, "stats")
    for i in range(3):
        assert c.call("get", f"admin:stats:{i}") == (None, None)
    after = admin_json(kcd, "stats")
    assert after["requests_by_method"]["get"] - before["requests_by_method"]["get"] == 3
    assert after["requests"] - before["requests"] >= 3
    for key in ("uptime_s", "clients", "requests", "notifications", "protocol_errors",
                "inflight", "ttl_clamped", "late_redis_replies", "replies_after_deadline",
                "errors_by_code", "requests_by_method"):
        assert key in after, key
    assert after["clients"] >= 1
    assert after["replies_after_deadline"] == 0
    assert after["uptime_s"] >= 0
    assert "UNAVAILABLE" in after["errors_by_code"]
    assert all(isinstance(v, int) for v in after["errors_by_code"].values())


def test_backends_names_the_primary(kcd, redis):
    def primary_up():
        b = admin_json(kcd, "backends")
        assert isinstance(b["nodes"], list)
        for n in b["nodes"]:
            if n.get("role") == "primary" and str(redis.port) in n.get("addr", n.get("name", "")):
                return n["state"] == "up"
        raise AssertionError(f"no primary node in {b!r}")
    wait_until(primary_up, 5, "primary up in backends")


# --- loglevel --------------------------------------------------------------

def test_loglevel(kcd):
    def accept_lines():
        return kcd.log_text().count("module=admin event=accept")

    assert kcd.admin("loglevel error") == "ok"
    assert "event=loglevel" in kcd.log_text()
    n = accept_lines()
    assert kcd.admin("health live") == "ok"  # logged at debug: not shown now
    assert kcd.admin("loglevel debug") == "ok"
    assert accept_lines() == n
    assert kcd.admin("health live") == "ok"
    wait_until(lambda: accept_lines() > n, 5, "debug lines again")
    assert kcd.admin("loglevel loud") == "error: unknown level"
    assert kcd.admin("loglevel").startswith("error: usage: loglevel")


# --- the line protocol -----------------------------------------------------

def test_help_lists_commands(kcd):
    answer = kcd.admin("help")
    for cmd in ("help", "health", "stats", "backends", "loglevel", "quit"):
        assert cmd in answer, answer


def test_unknown_command_and_long_line_keep_connection(kcd):
    with kcd.admin_client() as a:
        assert a.cmd("frobnicate now") == "error: unknown command 'frobnicate'"
        assert a.cmd("x" * 5000) == "error: line too long"
        assert a.cmd("health live") == "ok"
        # Peer bytes are escaped and truncated in the echo.
        assert a.cmd("it's\x01") == "error: unknown command 'it\\x27s\\x01'"
        assert a.cmd("y" * 100) == "error: unknown command '" + "y" * 64 + "...'"
        assert a.cmd("health live") == "ok"


def test_line_length_boundary(kcd):
    with kcd.admin_client() as a:
        line = "health live"
        assert a.cmd(line + " " * (4096 - len(line))) == "ok"
        assert a.cmd(line + " " * (4096 - len(line)) + "\r") == "ok"
        assert a.cmd(line + " " * (4097 - len(line))) == "error: line too long"
        # An over-long line arriving in pieces is refused once, then ignored to its end.
        a.send("z" * 3000)
        a.send("z" * 3000)
        assert a.line() == "error: line too long"
        a.send("z" * 3000 + "\nhealth live\n")
        assert a.line() == "ok"


def test_empty_lines_crlf_and_pipelining(kcd):
    with kcd.admin_client() as a:
        a.send("\n\r\n   \n\t\n")
        assert a.cmd("health live\r") == "ok"
        a.send("health live\nstats\nhealth live\n")
        assert a.line() == "ok"
        assert json.loads(a.line())["uptime_s"] >= 0
        assert a.line() == "ok"


def test_quit_closes_after_answers(kcd):
    with kcd.admin_client() as a:
        a.send("health live\nquit\nhealth live\n")
        assert recv_eof(a) == b"ok\n"


def test_last_line_without_newline_at_eof(kcd):
    with kcd.admin_client() as a:
        a.send("health live")
        a.sock.shutdown(socket.SHUT_WR)
        assert recv_eof(a) == b"ok\n"


def test_too_many_connections(kcd):
    clients = []
    try:
        for _ in range(16):
            a = kcd.admin_client()
            clients.append(a)
            assert a.cmd("health live") == "ok"
        extra = kcd.admin_client()
        clients.append(extra)
        assert recv_eof(extra) == b"error: too many admin connections\n"
        clients.pop().close()
        clients.pop(0).close()
        wait_until(lambda: kcd.admin("health live") == "ok", 5, "a slot again")
        assert clients[0].cmd("health live") == "ok"
    finally:
        for a in clients:
            a.close()
    assert_healthy(kcd)


def test_peer_that_does_not_read(kcd):
    """Answers pile up unread: kcached stops reading that peer instead of
    buffering without bound, and serves everyone else."""
    rss0 = kcd.rss_kb()
    stuck = kcd.admin_client()
    try:
        stuck.sock.setblocking(False)
        sent = 0
        try:
            while sent < 8 << 20:
                sent += stuck.sock.send(b"stats\n" * 1000)
        except BlockingIOError:
            pass
        assert kcd.admin("health live") == "ok"
        assert_healthy(kcd)
        assert kcd.rss_kb() - rss0 < 16 * 1024, "unread answers were buffered without bound"
    finally:
        stuck.close()
    wait_until(lambda: admin_json(kcd, "stats")["uptime_s"] >= 0, 5, "stats after stuck peer")


# --- the socket file -------------------------------------------------------

def test_socket_mode_is_0600(kcd):
    st = os.stat(kcd.admin_sock)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600


def test_socket_mode_configurable(harness, redis):
    kcd = harness.kcached(redis, ini={"admin": {"socket_mode": "0640"}})
    assert stat.S_IMODE(os.stat(kcd.admin_sock).st_mode) == 0o640


def test_disabled_with_empty_path(harness, redis):
    kcd = harness.kcached(redis, ini={"admin": {"socket": ""}})
    assert_healthy(kcd)
    assert not os.path.exists(kcd.admin_sock)


def test_stale_socket_removed_live_one_refused(harness, redis):
    kcd = harness.kcached(redis, start=False)
    # A socket file nobody listens on, as a crash leaves it.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(kcd.admin_sock)
    s.close()
    kcd.start()
    assert kcd.admin("health live") == "ok"
    assert kcd.terminate() == 0
    assert not os.path.exists(kcd.admin_sock)

    # Someone live on the admin path: refuse to start, leave it alone.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(kcd.admin_sock)
        live.listen(1)
        kcd.start(wait=False)
        try:
            status = kcd.proc.wait(timeout=T(10))
        except subprocess.TimeoutExpired:
            raise AssertionError(f"kcached started over a live admin socket:\n"
                                 f"{tail(kcd.log_path)}")
        assert status != 0
        assert "in use" in kcd.log_text()
        assert os.path.exists(kcd.admin_sock)


def test_open_during_drain_closed_at_exit(harness, redis):
    kcd = harness.kcached(redis)
    c = kcd.client()
    redis.freeze()
    try:
        msgid = c.request("get", ["admin:drain"])
        with kcd.admin_client() as a:
            assert a.cmd("health live") == "ok"
            kcd.signal(15)
            wait_until(lambda: not os.path.exists(kcd.sock), 5, "client socket gone")
            # The same session and a new one both still answer during the drain.
            assert a.cmd("health ready") == "down: draining"
            assert kcd.admin("health live") == "ok"
    finally:
        redis.thaw()
    c.recv_response(msgid, timeout=10)
    assert kcd.wait_exit() == 0
    assert not os.path.exists(kcd.admin_sock)


def test_admin_client_helper_uses_ini_path(harness, redis):
    """kcd.admin() follows an [admin] socket a test chose."""
    custom = os.path.join(harness.tmp, "other-admin.sock")
    kcd = harness.kcached(redis, ini={"admin": {"socket": custom}})
    assert kcd.admin("health live") == "ok"
    assert os.path.exists(custom)
