# SPDX-License-Identifier: MIT
"""kcached's command line and configuration: -t, --version, env overrides."""

import os
import re
import stat
import subprocess

from conftest import stored_payload, KCACHED, T, assert_healthy, kcached_env, free_port, render_ini


def run_kcached(*args, env=None, timeout=10):
    return subprocess.run([KCACHED, *args], capture_output=True, text=True,
                          env=kcached_env(**(env or {})), timeout=T(timeout),
                          stdin=subprocess.DEVNULL)


def write(harness, name, text):
    path = os.path.join(harness.tmp, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def dump_line(out, key):
    """The `key = value ...` line of a config dump, with the `; source`
    comment that follows it (on the same line or the next one)."""
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if re.match(rf"^\s*{re.escape(key)}\s*=", line):
            if i + 1 < len(lines) and lines[i + 1].lstrip().startswith(";"):
                return line + " " + lines[i + 1]
            return line
    raise AssertionError(f"no line for {key!r} in:\n{out}")


def test_version():
    p = run_kcached("--version")
    assert p.returncode == 0
    assert p.stdout.strip() == "kcached 0.1.0"


def test_check_valid_file_shows_sources(harness):
    port = free_port()
    path = write(harness, "ok.ini", "; a comment\n[server]\nsocket = /tmp/x.sock\n\n"
                                    f"[redis]\nprimary = 127.0.0.1:{port}\n"
                                    "command_timeout_ms = 250\n"
                                    "[cache]\ndefault_ttl = 60\n")
    p = run_kcached("-t", "-c", path)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    line = dump_line(out, "primary")
    assert f"127.0.0.1:{port}" in line and f"{path}:6" in line, line
    line = dump_line(out, "socket")
    assert "/tmp/x.sock" in line and f"{path}:3" in line, line
    line = dump_line(out, "command_timeout_ms")
    assert "250" in line and f"{path}:7" in line, line
    line = dump_line(out, "default_ttl")
    assert "60" in line and f"{path}:9" in line, line
    line = dump_line(out, "max_ttl")
    assert "2592000" in line and "default" in line, line
    line = dump_line(out, "max_batch_keys")
    assert "10000" in line and "default" in line, line
    assert "[server]" in out and "[redis]" in out and "[cache]" in out and "[log]" in out


def test_check_bad_key_reports_file_line(harness):
    path = write(harness, "bad.ini", "[server]\nsocket = /tmp/x.sock\n\n[redis]\nbogus_key = 1\n")
    p = run_kcached("-t", "-c", path)
    assert p.returncode == 1
    assert f"{path}:5" in p.stderr, p.stderr
    assert "bogus_key" in p.stderr


def test_check_bad_value_reports_file_line(harness):
    path = write(harness, "badval.ini", "[cache]\ndefault_ttl = soon\n")
    p = run_kcached("-t", "-c", path)
    assert p.returncode == 1
    assert f"{path}:2" in p.stderr and "default_ttl" in p.stderr, p.stderr


def test_check_unknown_section(harness):
    path = write(harness, "badsec.ini", "[server]\n[nosuch]\nkey = 1\n")
    p = run_kcached("-t", "-c", path)
    assert p.returncode == 1
    assert f"{path}:" in p.stderr, p.stderr


def test_check_duplicate_key(harness):
    path = write(harness, "dup.ini", "[cache]\ndefault_ttl = 5\ndefault_ttl = 6\n")
    p = run_kcached("-t", "-c", path)
    assert p.returncode == 1
    assert f"{path}:3" in p.stderr, p.stderr


def test_check_out_of_range(harness):
    path = write(harness, "range.ini", "[server]\nmax_clients = -3\n")
    p = run_kcached("-t", "-c", path)
    assert p.returncode == 1
    assert f"{path}:2" in p.stderr, p.stderr


def test_check_long_line_refused(harness):
    path = write(harness, "long.ini", "[cache]\nkey_prefix = " + "x" * 300 + "\n")
    p = run_kcached("-t", "-c", path)
    assert p.returncode == 1
    assert f"{path}:2" in p.stderr, p.stderr


def test_check_env_override_shown(harness):
    path = write(harness, "env.ini", "[redis]\nprimary = 127.0.0.1:7001\n")
    p = run_kcached("-t", "-c", path, env={"REDIS_PORT": "7777"})
    assert p.returncode == 0, p.stderr
    line = dump_line(p.stdout, "primary")
    assert "7777" in line and "env" in line and "REDIS_PORT" in line, line


def test_check_env_timeout_sets_both(harness):
    path = write(harness, "envt.ini", "[redis]\ncommand_timeout_ms = 100\n")
    p = run_kcached("-t", "-c", path, env={"REDIS_TIMEOUT": "3"})
    assert p.returncode == 0, p.stderr
    for key in ("command_timeout_ms", "connect_timeout_ms"):
        line = dump_line(p.stdout, key)
        assert "3000" in line and "REDIS_TIMEOUT" in line, line


def test_check_password_not_shown(harness):
    path = write(harness, "pw.ini", "[redis]\npassword = hunter2secret\n")
    p = run_kcached("-t", "-c", path)
    assert p.returncode == 0, p.stderr
    assert "hunter2secret" not in p.stdout + p.stderr


def test_check_missing_file(harness):
    p = run_kcached("-t", "-c", os.path.join(harness.tmp, "nope.ini"))
    assert p.returncode != 0
    assert "nope.ini" in p.stderr


def test_env_override_used_at_run_time(harness, redis):
    # The file points at a dead port; REDIS_PORT points at the live Redis.
    dead = free_port()
    k = harness.kcached(redis_port=dead, env={"REDIS_PORT": redis.port})
    c = k.client()
    assert c.call("set", "envk", b"v") == (None, True)
    assert stored_payload(redis.cmd("GET", b"kc:envk")) == b"v"


def test_socket_mode(harness, redis):
    k = harness.kcached(redis, ini={"server": {"socket_mode": "0600"}})
    assert stat.S_IMODE(os.stat(k.sock).st_mode) == 0o600
    assert_healthy(k)


def test_socket_mode_default(kcd):
    assert stat.S_IMODE(os.stat(kcd.sock).st_mode) == 0o660


def test_start_with_bad_config_exits_1(harness):
    path = write(harness, "bad2.ini", "[server]\nsocket = " + os.path.join(harness.tmp, "s.sock")
                 + "\nmax_nesting = lots\n")
    p = run_kcached("-c", path)
    assert p.returncode == 1
    assert f"{path}:3" in p.stderr, p.stderr
    assert not os.path.exists(os.path.join(harness.tmp, "s.sock"))


def test_logs_are_logfmt(kcd):
    text = kcd.log_text()
    lines = [ln for ln in text.splitlines() if ln.startswith("ts=")]
    assert lines, text
    assert any("level=" in ln and "msg=" in ln for ln in lines), text


def test_render_ini_helper_roundtrip(harness):
    # The harness's own INI writer produces files kcached -t accepts.
    path = write(harness, "h.ini", render_ini({"server": {"socket": "/tmp/h.sock"},
                                              "log": {"level": "debug"}}))
    p = run_kcached("-t", "-c", path)
    assert p.returncode == 0, p.stderr


def test_redis_password(harness):
    r = harness.redis(password="s3cret-pw")
    k = harness.kcached(r, ini={"redis": {"password": "s3cret-pw"}})
    c = k.client()
    assert c.call("set", "pw", b"v") == (None, True)
    assert stored_payload(r.cmd("GET", b"kc:pw")) == b"v"
    assert "s3cret-pw" not in k.log_text()


def test_redis_password_file(harness):
    r = harness.redis(password="file-pw")
    pw = write(harness, "pw.txt", "file-pw\n")
    k = harness.kcached(r, ini={"redis": {"password_file": pw}})
    assert k.client().call("set", "pwf", b"v") == (None, True)
    assert stored_payload(r.cmd("GET", b"kc:pwf")) == b"v"


def test_redis_password_from_env(harness):
    r = harness.redis(password="env-pw")
    k = harness.kcached(r, env={"REDIS_PASSWORD": "env-pw"})
    assert k.client().call("set", "pwe", b"v") == (None, True)
    assert stored_payload(r.cmd("GET", b"kc:pwe")) == b"v"


def test_redis_db(harness, redis):
    k = harness.kcached(redis, ini={"redis": {"db": 3}})
    assert k.client().call("set", "indb", b"v") == (None, True)
    with redis.client() as r:
        assert r.cmd("EXISTS", b"kc:indb") == 0
        r.cmd("SELECT", 3)
        assert stored_payload(r.cmd("GET", b"kc:indb")) == b"v"


def test_redis_unix_socket(harness):
    r = harness.redis(extra_args=["--unixsocket", "{dir}/redis.sock", "--unixsocketperm", "700"])
    path = os.path.join(os.path.dirname(r.log_path), "redis.sock")
    k = harness.kcached(r, ini={"redis": {"primary": f"unix:{path}"}})
    assert k.client().call("set", "ux", b"v") == (None, True)
    assert stored_payload(r.cmd("GET", b"kc:ux")) == b"v"


def test_replicas_from_env(harness, redis, replica):
    path = write(harness, "rep.ini", "[redis]\nprimary = 127.0.0.1:7001\n")
    p = run_kcached("-t", "-c", path,
                    env={"REDIS_REPLICAS_HOST_PORT": f"127.0.0.1:{replica.port}"})
    assert p.returncode == 0, p.stderr
    line = dump_line(p.stdout, "replicas")
    assert f"127.0.0.1:{replica.port}" in line and "REDIS_REPLICAS_HOST_PORT" in line, line
    k = harness.kcached(redis, env={"REDIS_REPLICAS_HOST_PORT": f"127.0.0.1:{replica.port}"})
    c = k.client()
    assert c.call("set", "re", b"v") == (None, True)
    from conftest import wait_until
    wait_until(lambda: c.call("get", "re") == (None, b"v"), 5, "get with replica from env")
