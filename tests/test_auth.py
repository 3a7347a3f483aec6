# SPDX-License-Identifier: MIT
"""Who may connect to kcached, and how kcached authenticates to Redis.

Client side: [server] allowed_uids / allowed_gids (SO_PEERCRED at accept),
socket_group, socket_mode, and the socket's parent directory. Another user is
played by `setpriv --reuid=65534 --regid=65534 --clear-groups` (nobody:
nogroup), so these tests need root - they fail, never skip, without it.

Redis side: [redis] username + password (ACL) or password alone (requirepass);
wrong credentials keep kcached running with `health ready` down for "auth",
logged, and the secret never written anywhere."""

import json
import os
import re
import stat
import time

import pytest

from conftest import (T, admin_stats, assert_healthy, counted, err_code, run_as, stat_of,
                      stored_payload, wait_until)

NOBODY = 65534

# What the peer run as nobody does: connect, send a `set` and a `ping`, and
# report what came back ("answered", "closed" with no answer, or the errno).
PEER = r"""
import json, socket, sys
out = {}
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(3)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print(json.dumps({"connect": e.errno})); sys.exit(0)
key = sys.argv[2].encode()
req = (b"\x94\x00\x01\xa3set\x92" + bytes([0xc4, len(key)]) + key + b"\xc4\x01v"
       + b"\x94\x00\x02\xa4ping\x90")
try:
    s.sendall(req)
    data = b""
    while True:
        d = s.recv(4096)
        if not d:
            break
        data += d
        if b"pong" in data:
            break
    out["got"] = data.hex()
    out["result"] = "answered" if b"pong" in data else "closed"
except OSError as e:
    out["result"] = "closed"
    out["errno"] = e.errno
print(json.dumps(out))
"""


def peer(k, uid=NOBODY, gid=NOBODY, key="peer"):
    p = run_as(uid, gid, PEER, k.sock, key)
    assert p.returncode == 0, f"peer as {uid}:{gid} failed: {p.stderr}"
    return json.loads(p.stdout)


@pytest.fixture
def open_dir(harness):
    """The test directory traversable by nobody, so only kcached's checks refuse."""
    assert os.geteuid() == 0, "these tests play another user with setpriv: run them as root"
    os.chmod(harness.tmp, 0o755)
    return harness.tmp


def start(harness, redis, **server):
    server.setdefault("socket_mode", "0666")
    return harness.kcached(redis, ini={"server": server})


# --------------------------------------------------------------------------
# allowed_uids / allowed_gids
# --------------------------------------------------------------------------

def test_open_socket_serves_another_user(harness, redis, open_dir):
    """The control: mode 0666 and no lists, nobody is served."""
    k = start(harness, redis)
    assert peer(k)["result"] == "answered"
    assert stored_payload(redis.cmd("GET", "kc:peer")) == b"v"


def test_allowed_uids_refuses_other_uid_at_accept(harness, redis, open_dir):
    k = start(harness, redis, allowed_uids="12345")
    with counted(k, "clients_refused") as cc:
        r = peer(k, key="refused")
        assert r["result"] == "closed" and not r.get("got"), r
    # Nothing the refused peer sent was read, let alone executed.
    assert redis.cmd("GET", "kc:refused") is None
    assert cc.delta("requests") == 0, "requests of a refused peer were counted"
    log = k.log_text()
    lines = [x for x in log.splitlines() if "uid 65534" in x or "uid=65534" in x]
    assert lines, f"the refusal is not logged with the uid:\n{log[-2000:]}"
    assert re.search(r"pid[ =]\d+", lines[-1]), f"the refusal does not name the pid: {lines[-1]}"
    # root (the test) is always allowed; so is kcached's own uid (root here too).
    assert_healthy(k)


def test_allowed_uids_lists_the_peer(harness, redis, open_dir):
    k = start(harness, redis, allowed_uids=f"12345,{NOBODY}")
    before = admin_stats(k)
    assert peer(k, key="listed")["result"] == "answered"
    assert stored_payload(redis.cmd("GET", "kc:listed")) == b"v"
    assert stat_of(admin_stats(k), "clients_refused") == stat_of(before, "clients_refused")


def test_allowed_gids_lists_the_peer_group(harness, redis, open_dir):
    k = start(harness, redis, allowed_gids=str(NOBODY))
    assert peer(k, key="bygid")["result"] == "answered"
    # Another gid for the same uid: refused.
    with counted(k, "clients_refused"):
        assert peer(k, gid=12345, key="othergid")["result"] == "closed"
    assert redis.cmd("GET", "kc:othergid") is None


def test_allowed_gids_refuses_other_group(harness, redis, open_dir):
    k = start(harness, redis, allowed_gids="12345")
    with counted(k, "clients_refused"):
        assert peer(k, key="gidref")["result"] == "closed"
    assert redis.cmd("GET", "kc:gidref") is None


def test_refused_peers_do_not_disturb_others(harness, redis, open_dir):
    k = start(harness, redis, allowed_uids="12345")
    c = k.client()
    assert c.call("set", "mine", b"1") == (None, True)
    with counted(k, ("clients_refused", 5)):
        for i in range(5):
            assert peer(k, key=f"r{i}")["result"] == "closed"
            assert c.call("get", "mine") == (None, b"1")


def test_socket_mode_decides_without_lists(harness, redis, open_dir):
    """No lists: a socket the peer cannot open refuses it in the kernel."""
    k = start(harness, redis, socket_mode="0660")
    r = peer(k)
    assert r.get("connect") == 13, f"nobody connected to a 0660 root socket: {r}"  # EACCES


# --------------------------------------------------------------------------
# socket_group and the parent directory
# --------------------------------------------------------------------------

@pytest.mark.parametrize("group", ["nogroup", str(NOBODY)])
def test_socket_group(harness, redis, open_dir, group):
    k = start(harness, redis, socket_group=group, socket_mode="0660")
    st = os.stat(k.sock)
    assert st.st_gid == NOBODY, f"socket group {st.st_gid}, want {NOBODY}"
    assert stat.S_IMODE(st.st_mode) == 0o660
    # Group members get in through the group bits; others do not.
    assert peer(k, key="grp")["result"] == "answered"
    assert peer(k, uid=12345, gid=12345).get("connect") == 13


def test_socket_group_unknown_refused(harness, redis):
    k = harness.kcached(redis, ini={"server": {"socket_group": "no-such-group-kc"}},
                        start=False)
    k.start(wait=False)
    assert k.wait_exit(10) != 0, "kcached started with a socket_group that does not exist"
    assert "no-such-group-kc" in k.log_text()


def test_socket_parent_directory_created(harness, redis):
    d = os.path.join(harness.tmp, "run-kc")
    assert not os.path.exists(d)
    k = harness.kcached(redis, sock=os.path.join(d, "kcached.sock"))
    st = os.stat(d)
    assert stat.S_ISDIR(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o755, oct(st.st_mode)
    assert_healthy(k)
    # An existing directory is left as it is.
    k.terminate()
    os.chmod(d, 0o750)
    k.start()
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o750
    assert_healthy(k)


# --------------------------------------------------------------------------
# Redis authentication
# --------------------------------------------------------------------------

SECRET = "s3cr3t-Hunter2-kc"
WRONG = "wr0ng-Pa55-kc-7"
USER = "kcuser"
AUTH_INI = {"redis": {"connect_timeout_ms": int(T(1) * 1000), "reconnect_max_ms": 200},
            "health": {"interval_ms": 100}}


def ini(extra):
    out = {s: dict(kv) for s, kv in AUTH_INI.items()}
    for s, kv in extra.items():
        out.setdefault(s, {}).update(kv)
    return out


def acl_setuser(r, user, password, *rules):
    assert r.cmd("ACL", "SETUSER", user, "reset", "on", f">{password}", *rules) == "OK"


def kcached_users(r):
    """The users of the Redis connections that are not ours (CLIENT LIST)."""
    text = r.cmd("CLIENT", "LIST").decode()
    return [m.group(1) for m in re.finditer(r"\buser=(\S+)", text)]


def assert_secret_absent(k, *secrets):
    texts = {"log": k.log_text()}
    try:
        texts["admin config"] = k.admin("config")
    except Exception:  # noqa: BLE001 - the admin socket may not answer config on one line
        pass
    for name, text in texts.items():
        for s in secrets:
            assert s not in text, f"the password {s!r} appears in kcached's {name}"


def test_acl_username_and_password(harness, redis):
    acl_setuser(redis, USER, SECRET, "~*", "&*", "+@all")
    k = harness.kcached(redis, ini=ini({"redis": {"username": USER, "password": SECRET}}))
    c = k.client()
    assert c.call("set", "acl", b"v") == (None, True)
    assert c.call("get", "acl") == (None, b"v")
    assert USER in kcached_users(redis), "kcached did not authenticate as the ACL user"
    assert k.admin("health ready").startswith("ok"), k.admin("health ready")
    assert_secret_absent(k, SECRET)


def test_password_only(harness):
    r = harness.redis(password=SECRET)
    k = harness.kcached(r, ini=ini({"redis": {"password": SECRET}}))
    c = k.client()
    assert c.call("set", "pwonly", b"v") == (None, True)
    assert stored_payload(r.cmd("GET", "kc:pwonly")) == b"v"
    assert_secret_absent(k, SECRET)


def auth_failed_checks(k, *secrets):
    """kcached keeps running, health ready says down for auth, the log says
    so (a bounded number of times: once per backoff step), never the secret;
    requests answer UNAVAILABLE at once."""
    wait_until(lambda: k.admin("health ready").startswith("down"), 5,
               "health ready to say down")
    h = k.admin("health ready")
    assert "auth" in h.lower(), f"health ready does not say auth: {h!r}"
    c = k.client()
    t0 = time.monotonic()
    err, _ = c.call("get", "x", timeout=10)
    assert err_code(err) == "UNAVAILABLE", err
    assert time.monotonic() - t0 < T(1)
    assert c.call("ping") == (None, "pong")
    assert k.alive()
    n0 = len(auth_lines(k))
    assert n0 >= 1, f"the log does not say the authentication failed:\n{k.log_text()[-2000:]}"
    time.sleep(T(2))
    n = len(auth_lines(k)) - n0
    assert n <= 40, f"{n} auth failure lines in 2 s: not once per backoff step"
    assert k.alive()
    assert_secret_absent(k, *secrets)


def auth_lines(k):
    return [x for x in k.log_text().splitlines()
            if "auth" in x.lower() and ("level=warn" in x or "level=error" in x)]


def test_acl_wrong_password(harness, redis):
    acl_setuser(redis, USER, SECRET, "~*", "&*", "+@all")
    k = harness.kcached(redis, ini=ini({"redis": {"username": USER, "password": WRONG}}))
    auth_failed_checks(k, WRONG, SECRET)
    # Fixed on the Redis side: kcached recovers by itself.
    acl_setuser(redis, USER, WRONG, "~*", "&*", "+@all")
    wait_until(lambda: k.admin("health ready").startswith("ok"), 10,
               "kcached to authenticate once the password is right")
    assert k.client().call("set", "late", b"v") == (None, True)
    assert_secret_absent(k, WRONG, SECRET)


def test_acl_wrong_username(harness, redis):
    acl_setuser(redis, USER, SECRET, "~*", "&*", "+@all")
    k = harness.kcached(redis, ini=ini({"redis": {"username": "nosuchuser", "password": SECRET}}))
    auth_failed_checks(k, SECRET)


def test_acl_disabled_user(harness, redis):
    acl_setuser(redis, USER, SECRET, "~*", "&*", "+@all")
    assert redis.cmd("ACL", "SETUSER", USER, "off") == "OK"
    k = harness.kcached(redis, ini=ini({"redis": {"username": USER, "password": SECRET}}))
    auth_failed_checks(k, SECRET)


def test_requirepass_wrong_password(harness):
    r = harness.redis(password=SECRET)
    k = harness.kcached(r, ini=ini({"redis": {"password": WRONG}}))
    auth_failed_checks(k, WRONG, SECRET)


def test_requirepass_no_password(harness):
    r = harness.redis(password=SECRET)
    k = harness.kcached(r, ini=ini({}))
    wait_until(lambda: k.admin("health ready").startswith("down"), 5, "health ready down")
    h = k.admin("health ready")
    assert "auth" in h.lower(), f"health ready does not say why (NOAUTH): {h!r}"
    assert k.alive()


# --------------------------------------------------------------------------
# The minimal ACL a kcached user needs (documented in README/kcached.ini by
# the lead; determined by running test_methods, test_cache, test_leases and
# test_invalidate against a user with exactly this list).
# --------------------------------------------------------------------------

# Keys: "~" is the empty key (the KEYS[1] kcached's scripts declare for a key
# without namespace), then the key prefix and kcached's own kcache* keys
# (metadata, heartbeat); channel: kcache* (lease and generation events).
MINIMAL_ACL = ["resetkeys", "~", "~kc:*", "~kcache*", "resetchannels", "&kcache*", "-@all",
               "+ping", "+select", "+get", "+set", "+del", "+unlink", "+mget", "+exists", "+ttl",
               "+expire", "+scan", "+eval", "+eval_ro", "+subscribe", "+publish",
               # called by kcached's Lua scripts
               "+pexpire", "+pttl", "+incr", "+sadd", "+smembers", "+hget", "+hset",
               "+hdel", "+hgetall", "+time",
               # optional: the maxmemory-policy check at start (else logged as unknown)
               "+config|get"]


def test_minimal_acl_user_works(harness, redis):
    acl_setuser(redis, USER, SECRET, *MINIMAL_ACL)
    k = harness.kcached(redis, ini=ini({"redis": {"username": USER, "password": SECRET}}))
    c = k.client()
    assert c.call("set", "m1", b"v", {"ttl": 60, "tags": ["t1"]}) == (None, True)
    assert c.call("get", "m1") == (None, b"v")
    assert c.call("mget", ["m1", "nope"]) == (None, [b"v", None])
    assert c.call("exists", ["m1"]) == (None, 1)
    err, ttl = c.call("ttl", "m1")
    assert err is None and 0 < ttl <= 60
    assert c.call("expire", "m1", 120) == (None, True)
    assert c.call("mset", {"m2": b"a", "m3": b"b"}) == (None, True)
    assert c.call("del", ["m2"]) == (None, 1)
    assert c.call("set", "n1", b"v", {"ns": "ns1"}) == (None, True)
    assert c.call("get", "n1", {"ns": "ns1"}) == (None, b"v")
    assert c.call("hset", "h", {"f": b"x"}) == (None, True)
    assert c.call("hget", "h", "f") == (None, b"x")
    assert c.call("hgetall", "h") == (None, {b"f": b"x"})
    assert c.call("hdel", "h", ["f"]) == (None, 1)
    err, res = c.call("get_or_set", "gos")
    assert err is None and "lease" in res, (err, res)
    assert c.call("fill", "gos", res["lease"], b"filled") == (None, True)
    assert c.call("get_or_set", "gos") == (None, {"value": b"filled"})
    err, res = c.call("get_or_set", "gos2")
    assert c.call("release", "gos2", res["lease"]) == (None, True)
    assert c.call("invalidate", {"keys": ["m3"]}) == (None, {"deleted": 1})
    err, res = c.call("invalidate", {"pattern": "m*"})
    assert err is None, err
    err, res = c.call("invalidate", {"tags": ["t1"]})
    assert err is None, err
    err, res = c.call("invalidate", {"namespace": "ns1"})
    assert err is None and "generation" in res, (err, res)
    assert c.call("get", "n1", {"ns": "ns1"}) == (None, None)
    assert k.admin("health ready").startswith("ok")
    log = k.log_text()
    assert "NOPERM" not in log and "noperm" not in log.lower(), \
        "\n".join(x for x in log.splitlines() if "perm" in x.lower())
