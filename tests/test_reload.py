"""Live reload (admin `reload`, SIGHUP): settings and backends change without
dropping client connections or failing requests in flight; an invalid file
is refused and the running configuration stays."""
import os
import signal
import time

from conftest import (T, Topology, ReadLoad, admin_json, node_of, stored_payload, wait_until,
                      wait_replica_link)


def kcached_with(topo, replicas, extra=None):
    ini = {"redis": {"command_timeout_ms": 2000, "reconnect_max_ms": 200},
           "health": {"interval_ms": 100, "timeout_ms": 500},
           "cache": {"default_ttl": 100},
           "log": {"level": "info"}}
    for sec, kv in (extra or {}).items():
        ini.setdefault(sec, {}).update(kv)
    return topo.kcached(ini=ini, replica_ports=[r.port for r in replicas])


def requests_of(k, port):
    return node_of(admin_json(k, "backends"), port)["requests"]


def test_reload_ttl_and_replica_under_load(harness):
    topo = Topology(harness, n_replicas=2)
    first, second = topo.replicas
    k = kcached_with(topo, [first])
    keys = topo.preset(k)
    wait_until(lambda: node_of(admin_json(k, "backends"), first.port)["in_rotation"], T(10),
               "the first replica in rotation")
    assert all(n["addr"] != f"127.0.0.1:{second.port}"
               for n in admin_json(k, "backends")["nodes"])
    c = k.client()
    with ReadLoad(k.sock, keys, conns=20) as load:
        load.wait_ok(500)
        # The new file: another default_ttl and a second replica.
        k.sections["cache"]["default_ttl"] = 777
        k.sections["redis"]["replicas"] = f"127.0.0.1:{first.port},127.0.0.1:{second.port}"
        k.write_ini()
        answer = k.admin("reload")
        assert answer.startswith("ok "), answer
        assert "default_ttl" in answer and "replicas" in answer, answer
        # The new replica joins and serves reads, while the load goes on.
        wait_until(lambda: (node_of(admin_json(k, "backends"), second.port) or {}).get(
            "in_rotation"), T(10), "the added replica in rotation")
        base = requests_of(k, second.port)
        wait_until(lambda: requests_of(k, second.port) > base + 50, T(10),
                   "reads on the added replica")
        t = load.mark("after reload")
        wait_until(lambda: load.ok_since(t) >= 500, T(10), "reads after the reload")
    load.stop()
    assert not load.failures and not load.anomalies, load.describe_failures()
    # The new default_ttl is used for writes after the reload.
    assert c.call("set", "after", b"v") == (None, True)
    ttl = topo.primary.cmd("TTL", b"kc:after")
    assert 700 < ttl <= 777, ttl
    assert k.alive()


def test_invalid_reload_refused_old_config_kept(harness):
    topo = Topology(harness, n_replicas=0)
    k = kcached_with(topo, [])
    c = k.client()
    with open(k.ini_path, "a") as f:
        f.write("[cache]\nno_such_key = 1\n")
    answer = k.admin("reload")
    assert answer.startswith("error: "), answer
    assert "no_such_key" in answer and ":" in answer, answer
    # Still serving, with the old default_ttl.
    assert c.call("set", "k", b"v") == (None, True)
    assert 90 < topo.primary.cmd("TTL", b"kc:k") <= 100
    assert k.alive()


def test_sighup_reloads(harness):
    topo = Topology(harness, n_replicas=0)
    k = kcached_with(topo, [])
    c = k.client()
    k.sections["cache"]["default_ttl"] = 555
    k.write_ini()
    os.kill(k.pid, signal.SIGHUP)

    def ttl_is_new():
        assert c.call("set", "h", b"v") == (None, True)
        return 500 < topo.primary.cmd("TTL", b"kc:h") <= 555
    wait_until(ttl_is_new, T(5), "SIGHUP to apply default_ttl 555")
    # The client connection survived the reload.
    assert c.call("ping") == (None, "pong")


def test_reload_pool_size_keeps_requests(harness):
    topo = Topology(harness, n_replicas=0)
    k = kcached_with(topo, [], {"redis": {"pool_size": 4}})
    keys = topo.preset(k)
    with ReadLoad(k.sock, keys, conns=10, depth=4) as load:
        load.wait_ok(500)
        for size in (1, 6, 2):
            k.sections["redis"]["pool_size"] = size
            k.write_ini()
            assert k.admin("reload").startswith("ok "), size
            wait_until(lambda: node_of(admin_json(k, "backends"), topo.primary.port)[
                "pool_size"] == size, T(5), f"pool size {size}")
            t = load.mark(f"pool {size}")
            wait_until(lambda: load.ok_since(t) >= 200, T(10), f"reads with pool {size}")
    load.stop()
    assert not load.failures and not load.anomalies, load.describe_failures()
