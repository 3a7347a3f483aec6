# SPDX-License-Identifier: MIT
"""kcached's admin socket: the line protocol, its limits, and its life cycle."""

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import textwrap

import pytest

from conftest import (T, AdminClient, ConnectionClosed, RpcClient, assert_healthy, child_env,
                      free_port, gen_key, tail, wait_until)


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
    for cmd in ("help", "health", "stats", "clients", "backends", "config", "metrics",
                "flush NAMESPACE", "reset-stats", "loglevel", "quit"):
        assert cmd in answer, answer
    assert 'then a line "."' in answer, answer


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


# --- helpers for the admin socket issue ------------------------------------

def admin_block(a, cmd):
    """A multi-line answer (config, metrics) on AdminClient a: its lines
    without the final "." line."""
    a.send(cmd + "\n")
    lines = []
    while True:
        line = a.line()
        if line == ".":
            return lines
        if not lines and line.startswith("error: "):
            raise AssertionError(f"{cmd}: {line}")
        lines.append(line)


def promtool():
    """The promtool binary. Missing is a failure, not a skip: CI must check the format."""
    path = shutil.which("promtool")
    assert path, "promtool not found: install the Debian package prometheus (scripts/test does)"
    return path


def promtool_check(text):
    p = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True,
                       text=True, timeout=T(30), env=child_env())
    assert p.returncode == 0, f"promtool check metrics failed:\n{p.stdout}{p.stderr}"
    return p


SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$')


def parse_metrics(lines):
    """({family: type}, {series: value}) of a Prometheus text exposition."""
    types, samples = {}, {}
    for line in lines:
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ", 3)
            assert name not in types, f"TYPE twice for {name}"
            types[name] = typ
        elif line.startswith("#") or not line:
            continue
        else:
            m = SAMPLE_RE.match(line)
            assert m, f"not a sample line: {line!r}"
            series = m.group(1) + (m.group(2) or "")
            assert series not in samples, f"series twice: {series}"
            samples[series] = float(m.group(3))
    return types, samples


def family_of(series, types):
    name = series.split("{", 1)[0]
    if name in types:
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and types.get(name[:-len(suffix)]) == "histogram":
            return name[:-len(suffix)]
    raise AssertionError(f"no TYPE for {series}")


def scrape(kcd):
    with kcd.admin_client() as a:
        return parse_metrics(admin_block(a, "metrics"))


def tcp_session(port, data, timeout=5.0):
    """Sends data on a TCP connection, half-closes, returns everything until EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=T(timeout)) as s:
        s.sendall(data if isinstance(data, bytes) else data.encode())
        s.shutdown(socket.SHUT_WR)
        out = b""
        while True:
            d = s.recv(65536)
            if not d:
                return out
            out += d


def http_get(port, target):
    raw = tcp_session(port, f"GET {target} HTTP/1.1\r\nHost: kcached\r\nAccept: */*\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    headers = dict(h.split(b": ", 1) for h in head.split(b"\r\n")[1:])
    assert int(headers[b"Content-Length"]) == len(body), raw[:300]
    return status, headers, body.decode()


def kcached_with_listen(harness, redis, ini=None, **kw):
    """A kcached with [admin] listen on a free loopback port (retried if it was taken)."""
    for _ in range(5):
        port = free_port()
        sections = {"admin": {"listen": f"127.0.0.1:{port}"}}
        for sec, kv in (ini or {}).items():
            sections.setdefault(sec, {}).update(kv)
        kcd = harness.kcached(redis, ini=sections, start=False, **kw)
        kcd.start(wait=False)
        try:
            kcd.wait_ready()
            return kcd, port
        except AssertionError:
            if "Address already in use" not in kcd.log_text():
                raise
    raise AssertionError("no free port for [admin] listen")


# --- stats, clients, config ------------------------------------------------

def test_stats_latency_and_cache(kcd):
    c = kcd.client()
    for i in range(20):
        assert c.call("set", f"lat:{i}", b"v", {"ns": "latns"}) == (None, True)
        assert c.call("get", f"lat:{i}", {"ns": "latns"}) == (None, b"v")
    assert c.call("nosuchmethod")[0]["code"] == "NO_METHOD"
    st = admin_json(kcd, "stats")
    for method in ("get", "set"):
        lat = st["latency"][method]
        for window in ("since_start", "last_60s"):
            w = lat[window]
            assert w["count"] == 20, (method, window, w)
            assert 0 < w["p50_us"] <= w["p90_us"] <= w["p99_us"] <= w["p999_us"] <= w["max_us"], w
            # Bucket upper bounds: powers of two, unless capped by the exact max.
            for q in ("p50_us", "p90_us", "p99_us", "p999_us"):
                assert w[q] & (w[q] - 1) == 0 or w[q] == w["max_us"], (q, w)
    assert st["latency"]["hdel"]["since_start"]["count"] == 0
    assert st["errors_by_code"]["NO_METHOD"] == 1
    # An unknown method is not timed under any method (the harness's readiness ping is).
    assert sum(v["since_start"]["count"] for v in st["latency"].values()) == \
        40 + st["requests_by_method"]["ping"]
    cache = st["cache"]
    assert cache["totals"]["sets"] >= 20 and cache["totals"]["hits"] >= 20, cache["totals"]
    assert cache["namespaces"]["latns"]["hits"] == 20, cache["namespaces"]
    assert st["admin_refused"] == 0


def test_clients_lists_our_connection(kcd):
    c = kcd.client()
    for _ in range(3):
        assert c.call("ping") == (None, "pong")
    other = kcd.client()
    assert other.call("ping") == (None, "pong")
    info = admin_json(kcd, "clients")
    assert info["n_clients"] == 2 and len(info["clients"]) == 2 and not info["truncated"], info
    mine = sorted(info["clients"], key=lambda e: e["id"])
    for e in mine:
        assert e["pid"] == os.getpid() and e["uid"] == os.getuid() and e["gid"] == os.getgid(), e
        assert e["inflight"] == 0 and e["in_bytes"] == 0 and e["out_bytes"] == 0, e
        assert e["age_s"] >= 0 and not e["closing"], e
    assert [e["requests"] for e in mine] == [3, 1], mine
    other.close()
    wait_until(lambda: admin_json(kcd, "clients")["n_clients"] == 1, 5, "closed client gone")


def test_config_sources_and_secrets(harness):
    secret = "s3cr3t-admin-pw"
    redis = harness.redis(password=secret)
    kcd = harness.kcached(redis, ini={"redis": {"password": secret},
                                      "sentinel": {"password": "another-secret"}},
                          env={"REDIS_TIMEOUT": str(2 * T(1))})
    assert_healthy(kcd)
    with kcd.admin_client() as a:
        lines = admin_block(a, "config")
        text = "\n".join(lines)
        assert secret not in text and "another-secret" not in text, text
        assert any(re.fullmatch(rf"password = \*\*\* ; {re.escape(kcd.ini_path)}:\d+", line)
                   for line in lines), text
        assert text.count("password = *** ;") == 2, text
        assert any(line.startswith("command_timeout_ms = ") and line.endswith("; env REDIS_TIMEOUT")
                   for line in lines), text
        assert "\nmax_clients = 1024 ; default" in text, text
        assert "\n[admin]\n" in text and "\nfail_open = no ; default" in text, text
        # The block ended with "." and the session goes on.
        assert a.cmd("health live") == "ok"


# --- metrics -----------------------------------------------------------------

def test_metrics_pass_promtool(kcd):
    c = kcd.client()
    for i in range(10):
        assert c.call("set", f"m:{i}", b"v", {"ns": 'we"ird\\ns\n'}) == (None, True)
        assert c.call("get", f"m:{i}") == (None, None)
    with kcd.admin_client() as a:
        lines = admin_block(a, "metrics")
        assert a.cmd("health live") == "ok"
    promtool_check("\n".join(lines) + "\n")
    types, samples = parse_metrics(lines)
    assert all(name.startswith("kcache_") for name in types), sorted(types)
    for name, typ in types.items():
        assert (typ == "counter") == name.endswith("_total"), (name, typ)
        assert f"# HELP {name} " in "\n".join(lines), name
    assert types["kcache_request_duration_seconds"] == "histogram"
    assert samples['kcache_request_duration_seconds_count{method="get"}'] == 10
    assert samples['kcache_request_duration_seconds_bucket{method="get",le="+Inf"}'] == 10
    assert samples['kcache_method_requests_total{method="set"}'] == 10
    assert samples["kcache_requests_total"] == 20 + samples['kcache_method_requests_total{method="ping"}']
    assert samples['kcache_errors_total{code="TIMEOUT"}'] == 0
    assert samples["kcache_cache_sets_total"] == 10 and samples["kcache_cache_misses_total"] == 10
    assert samples["kcache_clients_connected"] == 1
    node = [s for s in samples if s.startswith("kcache_redis_node_up{")]
    assert node == [f'kcache_redis_node_up{{role="primary",addr="127.0.0.1:{kcd_port(kcd)}"}}'], node
    assert samples[node[0]] == 1
    assert types["kcache_redis_command_duration_seconds"] == "histogram"


def test_metrics_per_namespace(kcd):
    c = kcd.client()
    weird = 'we"ird\\ns\n\u00e9'
    for i in range(3):
        assert c.call("set", f"n:{i}", b"v", {"ns": "alpha"}) == (None, True)
    assert c.call("set", "n:0", b"v", {"ns": weird}) == (None, True)
    assert c.call("set", "plain", b"v") == (None, True)
    with kcd.admin_client() as a:
        lines = admin_block(a, "metrics")
    _, samples = parse_metrics(lines)
    if not any('{namespace="' in s for s in samples):
        pytest.skip("this kcached has no cache_foreach_ns(): totals only (see daemon/admin.c)")
    promtool_check("\n".join(lines) + "\n")
    assert samples["kcache_cache_sets_total"] == 5
    assert samples['kcache_cache_sets_total{namespace="alpha"}'] == 3
    # Quote escaped; backslash, newline and non-ASCII bytes spelled \xNN (backslash escaped).
    assert samples['kcache_cache_sets_total{namespace="we\\"ird\\\\x5cns\\\\x0a\\\\xc3\\\\xa9"}'] \
        == 1, [s for s in samples if s.startswith("kcache_cache_sets_total")]
    assert samples['kcache_cache_sets_total{namespace="_other",tracked="false"}'] == 0


def kcd_port(kcd):
    return int(kcd.sections["redis"]["primary"].rsplit(":", 1)[1])


def test_metrics_counters_monotonic(kcd):
    c = kcd.client()
    assert c.call("set", "mono", b"1") == (None, True)
    types1, s1 = scrape(kcd)
    for i in range(25):
        assert c.call("get", "mono") == (None, b"1")
        assert c.call("set", f"mono:{i}", b"x", {"ns": "mono"}) == (None, True)
    c.call("nosuchmethod")
    types2, s2 = scrape(kcd)
    assert types1 == types2
    checked = grew = 0
    for series, v1 in s1.items():
        if types1[family_of(series, types1)] not in ("counter", "histogram"):
            continue
        assert series in s2, f"{series} disappeared"
        assert s2[series] >= v1, f"{series} went back: {v1} -> {s2[series]}"
        checked += 1
        grew += s2[series] > v1
    assert checked > 50 and grew >= 6, (checked, grew)
    assert s2["kcache_requests_total"] - s1["kcache_requests_total"] == 51
    assert s2['kcache_method_requests_total{method="get"}'] - \
        s1['kcache_method_requests_total{method="get"}'] == 25
    assert s2['kcache_errors_total{code="NO_METHOD"}'] == 1


# --- flush and reset-stats ---------------------------------------------------

def test_flush_namespace_makes_keys_miss(kcd, redis):
    c = kcd.client()
    o = {"ns": "admflush"}
    assert c.call("set", "k1", b"in-ns", o) == (None, True)
    assert c.call("set", "k1", b"plain") == (None, True)
    assert c.call("set", "k1", b"other", {"ns": "admother"}) == (None, True)
    assert c.call("get", "k1", o) == (None, b"in-ns")
    answer = kcd.admin("flush admflush")
    m = re.fullmatch(r"ok generation=(\d+)", answer)
    assert m, answer
    assert int(redis.cmd("GET", gen_key("kc:", "admflush"))) == int(m.group(1))
    assert c.call("get", "k1", o) == (None, None)
    assert c.call("get", "k1") == (None, b"plain")
    assert c.call("get", "k1", {"ns": "admother"}) == (None, b"other")
    assert admin_json(kcd, "stats")["cache"]["totals"]["invalidations"] >= 1
    log = kcd.log_text()
    assert "event=flush" in log and f"pid {os.getpid()}" in log, tail(kcd.log_path)
    # A second flush moves the generation on.
    m2 = re.fullmatch(r"ok generation=(\d+)", kcd.admin("flush admflush"))
    assert m2 and int(m2.group(1)) > int(m.group(1))


def test_flush_usage_and_answer_at_eof(kcd):
    with kcd.admin_client() as a:
        assert a.cmd("flush") == "error: usage: flush NAMESPACE"
        assert a.cmd("flush a b") == "error: usage: flush NAMESPACE"
        # Pipelined after a flush: answered after it, in order.
        a.send("flush pipens\nhealth live\n")
        assert a.line().startswith("ok generation=")
        assert a.line() == "ok"
    # `printf 'flush ns' | socat ...`: the half-closed peer still gets the answer.
    with kcd.admin_client() as a:
        a.send("flush eofns")
        a.sock.shutdown(socket.SHUT_WR)
        assert re.fullmatch(rb"ok generation=\d+\n", recv_eof(a, timeout=10))


def test_flush_without_redis_answers_error(harness, redis):
    kcd = harness.kcached(redis)
    with kcd.admin_client(timeout=30) as a:
        redis.freeze()
        try:
            # Waiting for a frozen Redis: an error within command_timeout_ms, then the
            # next command, in order.
            a.send("flush frozenns\nhealth live\n")
            answer = a.line()
            assert answer.startswith("error: "), answer
            assert a.line() == "ok"
        finally:
            redis.thaw()
        redis.stop()
        wait_until(lambda: a.cmd("health ready").startswith("down: "), 10, "ready down")
        assert a.cmd("flush gone") == "error: no Redis node is reachable"
        assert a.cmd("health live") == "ok"


def test_close_during_flush(harness, redis):
    """A peer that goes away while its flush waits: the call is cancelled, the
    daemon stays sane (ASan builds check the memory)."""
    kcd = harness.kcached(redis)
    redis.freeze()
    try:
        for i in range(3):
            a = kcd.admin_client()
            a.send(f"flush gone{i}\n")
            a.close()
        assert kcd.admin("health live") == "ok"
    finally:
        redis.thaw()
    wait_until(lambda: kcd.admin("health ready") == "ok", 10, "ready again")
    assert_healthy(kcd)


def test_reset_stats_zeroes_counters_keeps_gauges(kcd):
    c = kcd.client()
    for i in range(5):
        assert c.call("set", f"r:{i}", b"v", {"ns": "resetns"}) == (None, True)
        assert c.call("get", f"r:{i}", {"ns": "resetns"}) == (None, b"v")
    c.call("nosuchmethod")
    before = admin_json(kcd, "stats")
    assert before["requests"] == 11 + before["requests_by_method"]["ping"], before
    assert before["cache"]["totals"]["hits"] == 5
    assert kcd.admin("reset-stats") == "ok"
    after = admin_json(kcd, "stats")
    assert after["requests"] == 0 and after["clients_accepted"] == 0, after
    assert all(v == 0 for v in after["requests_by_method"].values())
    assert all(v == 0 for v in after["errors_by_code"].values())
    for lat in after["latency"].values():
        assert lat["since_start"]["count"] == 0 and lat["last_60s"]["count"] == 0, lat
    assert all(v == 0 for v in after["cache"]["totals"].values()), after["cache"]
    assert all(v == 0 for v in after["cache"]["namespaces"]["resetns"].values())
    # Gauges describe the present: our client is still connected.
    assert after["clients"] == 1 and after["clients_connected"] == 1
    assert after["uptime_s"] >= before["uptime_s"]
    assert "event=reset_stats" in kcd.log_text()
    # Counting goes on from zero.
    assert c.call("get", "r:0", {"ns": "resetns"}) == (None, b"v")
    again = admin_json(kcd, "stats")
    assert again["requests"] == 1 and again["latency"]["get"]["since_start"]["count"] == 1


# --- health ------------------------------------------------------------------

def test_health_live_ok_while_every_redis_down(harness, redis):
    replica = harness.redis(replicaof=redis.port)
    kcd = harness.kcached(redis, ini={"redis": {"replicas": f"127.0.0.1:{replica.port}"}})
    wait_until(lambda: kcd.admin("health ready") == "ok", 10, "ready ok")
    redis.stop()
    replica.stop()
    wait_until(lambda: kcd.admin("health ready").startswith("down: "), 10, "ready down")
    assert "no Redis node reachable" in kcd.admin("health ready")
    for _ in range(5):
        assert kcd.admin("health live") == "ok"
    _, samples = scrape(kcd)
    assert sum(v for s, v in samples.items() if s.startswith("kcache_redis_node_up{")) == 0


def test_health_ready_fail_open(harness):
    kcd = harness.kcached(redis_port=free_port(), ini={"health": {"fail_open": "yes"}})
    wait_until(lambda: kcd.admin("health ready").startswith("degraded: "), 5, "degraded")
    assert "no Redis node reachable" in kcd.admin("health ready")
    assert kcd.admin("health live") == "ok"


# --- access: peer credentials, socket group ------------------------------------

PEER_SCRIPT = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(float(sys.argv[2]))
    s.connect(sys.argv[1])
    data = b""
    try:
        s.sendall(b"health live\\n")
        while not data.endswith(b"\\n"):
            d = s.recv(4096)
            if not d:
                break
            data += d
    except (BrokenPipeError, ConnectionResetError):
        pass
    sys.stdout.write(data.hex())
""")

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching uid (setpriv) needs root")


def run_as(uid, gid, path):
    """Connects to path as uid/gid (no supplementary groups), sends one command;
    (pid of the peer, bytes it received before EOF)."""
    proc = subprocess.Popen(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
                             sys.executable, "-c", PEER_SCRIPT, path, str(T(5))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env(),
                            cwd="/")
    out, err = proc.communicate(timeout=T(20))
    assert proc.returncode == 0, f"peer as {uid}:{gid} failed: {err.decode()}"
    return proc.pid, bytes.fromhex(out.decode())


def open_to_everyone(harness, ini=None):
    """[admin] socket_mode 0666 in a traversable directory: only SO_PEERCRED may refuse."""
    os.chmod(harness.tmp, 0o755)
    sections = {"admin": {"socket_mode": "0666"}}
    for sec, kv in (ini or {}).items():
        sections.setdefault(sec, {}).update(kv)
    return sections


@needs_root
def test_peer_credentials_refused(harness, redis):
    kcd = harness.kcached(redis, ini=open_to_everyone(harness))
    assert stat.S_IMODE(os.stat(kcd.admin_sock).st_mode) == 0o666
    pid, got = run_as(65534, 65534, kcd.admin_sock)
    assert got == b"", f"a refused peer got {got!r}"
    wait_until(lambda: "event=refused" in kcd.log_text(), 5, "refusal logged")
    log = kcd.log_text()
    assert f"pid {pid} uid 65534 gid 65534" in log, tail(kcd.log_path)
    assert admin_json(kcd, "stats")["admin_refused"] == 1
    # We (root) are still welcome.
    assert kcd.admin("health live") == "ok"


@needs_root
def test_peer_credentials_allowed_uids_and_gids(harness, redis):
    kcd = harness.kcached(redis, ini=open_to_everyone(
        harness, {"admin": {"allowed_uids": "1000, nobody", "allowed_gids": "4242"}}))
    assert run_as(65534, 65534, kcd.admin_sock)[1] == b"ok\n"
    assert run_as(4000, 4242, kcd.admin_sock)[1] == b"ok\n"  # by primary group
    assert run_as(4000, 4000, kcd.admin_sock)[1] == b""
    assert admin_json(kcd, "stats")["admin_refused"] == 1


@needs_root
def test_socket_group(harness, redis):
    import grp
    gid = grp.getgrnam("nogroup").gr_gid
    kcd = harness.kcached(redis, ini={"admin": {"socket_group": "nogroup",
                                                "socket_mode": "0660"}})
    st = os.stat(kcd.admin_sock)
    assert st.st_gid == gid and stat.S_IMODE(st.st_mode) == 0o660
    assert kcd.admin("health live") == "ok"


# --- the TCP listener --------------------------------------------------------

def test_tcp_listener_serves_read_only_commands(harness, redis):
    kcd, port = kcached_with_listen(harness, redis)
    out = tcp_session(port, "health live\nhealth ready\nstats\nhelp\nquit\nhealth live\n")
    lines = out.decode().split("\n")
    assert lines[0] == "ok" and lines[1] == "ok", lines
    assert json.loads(lines[2])["uptime_s"] >= 0
    assert lines[3].startswith("commands: help, health [live|ready], stats, metrics, quit"), lines
    assert lines[4:] == [""], "quit ends the session"
    out = tcp_session(port, "metrics\n").decode()
    assert out.endswith("\n.\n")
    promtool_check(out[:-2])
    assert "kcache_admin_connections{listener=\"tcp\"} 1" in out


def test_tcp_listener_refuses_what_changes_state(harness, redis):
    kcd, port = kcached_with_listen(harness, redis)
    refused = ["reload", "flush tcpns", "reset-stats", "loglevel debug", "config", "clients",
               "backends", "frobnicate"]
    out = tcp_session(port, "".join(c + "\n" for c in refused) + "health live\n").decode()
    assert out.split("\n") == ["error: not allowed on the TCP listener"] * len(refused) + \
        ["ok", ""], out
    assert redis.cmd("GET", gen_key("kc:", "tcpns")) is None, "flush ran on the TCP listener"
    assert "event=reset_stats" not in kcd.log_text()


def test_tcp_listener_http(harness, redis):
    kcd, port = kcached_with_listen(harness, redis)
    c = kcd.client()
    assert c.call("get", "http:1") == (None, None)
    status, headers, body = http_get(port, "/metrics")
    assert status == 200 and headers[b"Content-Type"].startswith(b"text/plain; version=0.0.4")
    promtool_check(body)
    assert 'kcache_method_requests_total{method="get"} 1' in body
    status, _, body = http_get(port, "/health/ready")
    assert (status, body) == (200, "ok\n")
    status, _, body = http_get(port, "/stats")
    assert status == 200 and json.loads(body)["requests_by_method"]["get"] == 1
    assert http_get(port, "/nope")[0] == 404
    raw = tcp_session(port, "POST /metrics HTTP/1.0\r\n\r\n")
    assert raw.startswith(b"HTTP/1.0 405 ")
    redis.stop()
    wait_until(lambda: http_get(port, "/health/ready")[0] == 503, 10, "ready 503")
    assert http_get(port, "/health/live") == (200, http_get(port, "/health/live")[1], "ok\n")


def test_tcp_listener_port_in_use(harness, redis):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        kcd = harness.kcached(redis, ini={"admin": {"listen": f"127.0.0.1:{port}"}}, start=False)
        kcd.start(wait=False)
        assert kcd.wait_exit() != 0
        assert f"admin listen 127.0.0.1:{port}: bind: Address already in use" in kcd.log_text()
        assert not os.path.exists(kcd.admin_sock), "the Unix admin socket was left behind"


def test_tcp_only_without_unix_socket(harness, redis):
    kcd, port = kcached_with_listen(harness, redis, ini={"admin": {"socket": ""}})
    assert not os.path.exists(kcd.admin_sock)
    assert tcp_session(port, "health live\n") == b"ok\n"
