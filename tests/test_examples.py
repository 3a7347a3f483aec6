# SPDX-License-Identifier: MIT
"""The examples in examples/ run against a real kcached and Redis, as a
reader would run them: the C program built with cc against the build tree's
libkcache, the FastAPI app served by uvicorn and asked over HTTP, and the CLI
session script."""

import os
import re
import shutil
import signal
import subprocess
import sys

import httpx
import pytest

from conftest import KCACHE_CLI, LIBKCACHE, SRC_ROOT, T, child_env, free_port, tail, wait_until

sys.path.insert(0, os.path.join(SRC_ROOT, "client", "python"))
import kcache  # noqa: E402

EXAMPLES = os.path.join(SRC_ROOT, "examples")


def _sanitizer_flags(lib):
    """(compiler, flags) to link a program against lib: a libkcache built
    with sanitizers needs the program built with them too, by the same
    compiler family."""
    try:
        out = subprocess.run(["ldd", lib], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    flags = []
    if re.search(r"lib(clang_rt\.)?asan", out):
        flags.append("address")
    if re.search(r"lib(clang_rt\.)?ubsan", out):
        flags.append("undefined")
    cc = "clang" if "clang_rt" in out else (os.environ.get("CC") or "cc")
    return cc, (["-fsanitize=" + ",".join(flags)] if flags else [])


@pytest.fixture(scope="module")
def getorset_bin(tmp_path_factory):
    assert os.path.exists(LIBKCACHE), f"libkcache not built: {LIBKCACHE}"
    cc, san = _sanitizer_flags(LIBKCACHE)
    assert shutil.which(cc), f"no C compiler {cc!r}"
    out = str(tmp_path_factory.mktemp("examples") / "getorset")
    libdir = os.path.dirname(os.path.abspath(LIBKCACHE))
    cmd = [cc, "-std=c11", "-Wall", "-Wextra", "-Wpedantic", "-Werror", *san,
           "-I", os.path.join(SRC_ROOT, "client"), os.path.join(EXAMPLES, "c", "getorset.c"),
           "-L", libdir, "-lkcache", f"-Wl,-rpath,{libdir}", "-o", out]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=child_env())
    assert p.returncode == 0, f"{' '.join(cmd)}\n{p.stdout}{p.stderr}"
    return out


def test_c_getorset(kcd, getorset_bin):
    def run(*keys):
        return subprocess.run([getorset_bin, "-s", kcd.sock, "-t", str(int(T(2000))), *keys],
                              capture_output=True, text=True, timeout=T(30), env=child_env())

    p = run("user:1", "user:2")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert [ln.split(" = ")[0] for ln in lines] == ["user:1", "user:2"]
    assert lines[0].startswith("user:1 = value of user:1, computed by pid ")
    assert "loading user:1" in p.stderr and "loader ran 2 time(s)" in p.stderr

    again = run("user:1", "user:2")
    assert again.returncode == 0 and again.stdout == p.stdout  # from the cache
    assert "loader ran 0 time(s)" in again.stderr

    c = kcache.Client(kcd.sock, timeout=T(2))
    assert c.get("user:1", ns="examples") == lines[0].split(" = ", 1)[1].encode()
    assert 50 <= c.ttl("user:1", ns="examples") <= 60

    # Four processes asking for one cold key at once: one loads, three wait.
    procs = [subprocess.Popen([getorset_bin, "-s", kcd.sock, "-t", str(int(T(5000))), "cold"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=child_env()) for _ in range(4)]
    outs = [pr.communicate(timeout=T(30)) for pr in procs]
    assert all(pr.returncode == 0 for pr in procs), outs
    assert len({o for o, _ in outs}) == 1
    assert sum(e.count("loading cold") for _, e in outs) == 1, outs

    bad = subprocess.run([getorset_bin], capture_output=True, text=True, env=child_env())
    assert bad.returncode == 1 and "usage" in bad.stderr


def test_cli_session(kcd):
    p = subprocess.run(["bash", os.path.join(EXAMPLES, "cli-session.sh"), kcd.sock],
                       capture_output=True, text=True, timeout=T(60),
                       env=child_env(KCACHE_CLI=KCACHE_CLI, KCACHE_SOCKET=None))
    assert p.returncode == 0, f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    assert p.stdout.rstrip().endswith("# session ok")
    assert "$ kcache get-or-set" in p.stdout
    # runs again against the same kcached
    p = subprocess.run(["bash", os.path.join(EXAMPLES, "cli-session.sh")], capture_output=True,
                       text=True, timeout=T(60),
                       env=child_env(KCACHE_CLI=KCACHE_CLI, KCACHE_SOCKET=kcd.sock))
    assert p.returncode == 0, f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}"


@pytest.fixture
def app_server(kcd, harness):
    """examples/fastapi_app.py under uvicorn on a free loopback port."""
    log_path = os.path.join(harness.tmp, "fastapi_app.log")
    harness.extra_logs.append(("fastapi_app log", log_path))
    proc = None
    for _ in range(5):
        port = free_port()
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(["/usr/bin/python3", os.path.join(EXAMPLES, "fastapi_app.py"),
                                     "--port", str(port)],
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=child_env(KCACHE_SOCKET=kcd.sock,
                                                  PYTHONDONTWRITEBYTECODE=1))
        base = f"http://127.0.0.1:{port}"

        def up():
            if proc.poll() is not None:
                return "exited"
            try:
                return httpx.get(base + "/stats", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False
        state = wait_until(up, 20, "the FastAPI example to answer")
        if state is True:
            break
        proc.wait()  # the port was taken meanwhile: try another
    else:
        raise AssertionError(f"the FastAPI example did not start:\n{tail(log_path)}")
    try:
        yield base
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=T(10))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_fastapi_app(kcd, app_server):
    with httpx.Client(base_url=app_server, timeout=T(5)) as h:
        first = h.get("/users/ada/posts")
        assert first.status_code == 200
        assert first.json() == [{"id": 1, "title": "Engines"}]
        assert h.get("/users/ada/posts").json() == first.json()
        assert h.get("/stats").json()["posts"] == 1  # the second came from kcached

        assert h.get("/users/nobody/posts").status_code == 404  # errors are not cached
        assert h.get("/users/nobody/posts").status_code == 404
        assert h.get("/stats").json()["posts"] == 3

        r = h.post("/users/ada/posts", json={"id": 2, "title": "Notes"})
        assert r.status_code == 201
        assert h.get("/users/ada/posts").json() == [{"id": 1, "title": "Engines"},
                                                    {"id": 2, "title": "Notes"}]
        assert h.get("/stats").json()["posts"] == 4  # busted by the POST, reloaded

        s1 = h.get("/search", params={"q": "in", "limit": 5}).json()
        assert s1["hits"] == [{"user": "ada", "title": "Engines"},
                              {"user": "alan", "title": "Machines"}]
        assert h.get("/search", params={"limit": 5, "q": "in"}).json() == s1
        assert h.get("/stats").json()["search"] == 1

        p = h.get("/users/alan").json()
        assert p["profile"] == {"username": "alan", "posts": 1} and p["loads"] == 1
        assert h.get("/users/alan").json()["loads"] == 1

    c = kcache.Client(kcd.sock, timeout=T(2))
    assert c.get("ada_posts", ns="posts") is not None
    assert c.stats()["namespaces"]["posts"]["hits"] >= 1
    # kcached going away does not take the app down: it fails open
    kcd.kill()
    with httpx.Client(base_url=app_server, timeout=T(10)) as h:
        assert h.get("/users/ada/posts").status_code == 200
        assert h.get("/stats").json()["posts"] == 5
