# SPDX-License-Identifier: MIT
"""kcache.fastapi against a real kcached and Redis, through FastAPI's
TestClient: cached endpoints (sync and async), keys (default hash, templates,
callables), cache busting, schema tags from Pydantic models, get_or_set with
leases, and failing open or closed when kcached is unavailable."""

import hashlib
import logging
import os
import sys
import threading
import time
from typing import List

import pytest
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import PlainTextResponse
from fastapi.testclient import TestClient
from pydantic import BaseModel

from conftest import T, data_key, gen_key, wait_until

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "client",
                                "python"))
import kcache  # noqa: E402
import kcache.fastapi as kf  # noqa: E402
from kcache.keys import hash_key, pydantic_version, schema_tag  # noqa: E402


class Post(BaseModel):
    id: int
    title: str


@pytest.fixture
def client(kcd):
    c = kcache.Client(kcd.sock, timeout=T(2))
    yield c
    c.close()


def stored_schema(redis, key, ns):
    """The schema tag of the envelope kcached stored for key in ns."""
    gen = redis.cmd("GET", gen_key("kc:", ns))
    raw = redis.cmd("GET", data_key("kc:", key, ns, gen))
    assert raw is not None and raw[:2] == b"\xc1K", raw
    return raw[5:5 + raw[4]].decode()


def test_pydantic_is_1_here():
    # The Pydantic 2 paths of kcache.keys are untested here; say so loudly if
    # this machine ever gets Pydantic 2.
    assert pydantic_version()[0] == 1


def test_cached_sync_endpoint_with_model_and_template(kcd, redis, client):
    app = FastAPI()
    loads = []

    def current_user(request: Request):
        return request.headers.get("x-user", "anon")

    @app.get("/users/{username}/posts", response_model=List[Post])
    @kf.cached(ns="posts", ttl=60, key="{username}_posts", model=List[Post], client=client)
    def posts(username: str, request: Request, user: str = Depends(current_user)):
        loads.append(username)
        return [Post(id=1, title=f"hello from {username}")]

    tc = TestClient(app)
    want = [{"id": 1, "title": "hello from ada"}]
    assert tc.get("/users/ada/posts").json() == want
    assert tc.get("/users/ada/posts", headers={"x-user": "bob"}).json() == want
    assert loads == ["ada"]  # second answer came from kcached
    assert tc.get("/users/alan/posts").status_code == 200
    assert loads == ["ada", "alan"]
    # the key is the template's, the value the model's JSON
    assert client.get("ada_posts", ns="posts") == b'[{"id":1,"title":"hello from ada"}]'
    assert stored_schema(redis, "ada_posts", "posts") == schema_tag(List[Post])
    assert 50 <= client.ttl("ada_posts", ns="posts") <= 60


def test_cached_async_endpoint_default_key(kcd, client):
    app = FastAPI()
    loads = []
    counter = iter(range(1000))

    def changing():
        return next(counter)  # a dependency: never part of the key

    @app.get("/search")
    @kf.cached(ns="search", ttl=60, client=client)
    async def search(q: str, request: Request, limit: int = 10, n: int = Depends(changing)):
        loads.append((q, limit))
        return {"q": q, "limit": limit, "n": n}

    tc = TestClient(app)
    first = tc.get("/search?q=x&limit=3").json()
    assert tc.get("/search?limit=3&q=x").json() == first  # same arguments, any order
    assert loads == [("x", 3)]
    tc.get("/search?q=x")
    tc.get("/search?q=y&limit=3")
    assert loads == [("x", 3), ("x", 10), ("y", 3)]
    # the default key: the qualified name and a hash of the sorted arguments
    name = f"{search.__module__}.{search.__qualname__}"
    key = hash_key(name, {"q": "x", "limit": 3})
    assert key.startswith(name + ":") and len(key) == len(name) + 1 + 64
    assert hash_key(name, {"limit": 3, "q": "x"}) == key
    assert client.get(key, ns="search") == b'{"q":"x","limit":3,"n":0}'


def test_key_callable_and_async_client(kcd, client):
    app = FastAPI()
    loads = []
    a = kcache.AsyncClient(kcd.sock, timeout=T(2))

    @app.get("/item/{item_id}")
    @kf.cached(ns="items", key=lambda item_id: f"item:{item_id % 10}", client=a)
    async def item(item_id: int):
        loads.append(item_id)
        return {"id": item_id}

    @app.get("/sync/{item_id}")
    @kf.cached(ns="items", key=lambda **kw: f"sync:{kw['item_id']}", client=a)
    def sync_item(item_id: int):  # a sync endpoint with an AsyncClient: its sync twin
        loads.append(-item_id)
        return {"id": item_id}

    tc = TestClient(app)
    assert tc.get("/item/3").json() == {"id": 3}
    assert tc.get("/item/13").json() == {"id": 3}  # same key by the callable
    assert tc.get("/sync/4").json() == tc.get("/sync/4").json() == {"id": 4}
    assert loads == [3, -4]
    assert client.get("item:3", ns="items") == b'{"id":3}'


def test_cache_busting(kcd, client):
    app = FastAPI()
    loads = []

    @app.get("/u/{username}/posts")
    @kf.cached(ns="busting", key="{username}_posts", tags=["user:{username}"], client=client)
    async def posts(username: str):
        loads.append(username)
        return {"user": username, "n": len(loads)}

    @app.post("/u/{username}/posts")
    @kf.cache_busting(ns="busting", keys=["{username}_posts"], client=client)
    async def add(username: str, post: Post):
        return post

    @app.post("/u/{username}/fail")
    @kf.cache_busting(ns="busting", keys=["{username}_posts"], client=client)
    def add_failing(username: str):
        raise HTTPException(status_code=409, detail="no")

    @app.post("/u/{username}/rename")
    @kf.cache_busting(tags=["user:{username}"], client=client)
    def rename(username: str):
        return {"ok": True}

    @app.post("/reset")
    @kf.cache_busting(ns="busting", namespace=True, client=client)
    def reset():
        return {"ok": True}

    tc = TestClient(app)
    assert tc.get("/u/ada/posts").json() == {"user": "ada", "n": 1}
    assert tc.get("/u/ada/posts").json()["n"] == 1
    assert tc.post("/u/ada/posts", json={"id": 2, "title": "t"}).status_code == 200
    assert tc.get("/u/ada/posts").json()["n"] == 2  # busted, reloaded
    assert tc.post("/u/ada/fail").status_code == 409  # a failed endpoint busts nothing
    assert tc.get("/u/ada/posts").json()["n"] == 2
    tc.post("/u/ada/rename")
    assert tc.get("/u/ada/posts").json()["n"] == 3  # by tag
    tc.get("/u/alan/posts")
    tc.post("/reset")
    assert tc.get("/u/ada/posts").json()["n"] == 5  # the whole namespace
    assert loads == ["ada", "ada", "ada", "alan", "ada"]
    with pytest.raises(TypeError):
        kf.cache_busting(ns="x")
    with pytest.raises(TypeError):
        kf.cache_busting(namespace=True)


def test_schema_tag_changes_with_the_model(kcd, redis, client):
    class PostV1(BaseModel):
        id: int
        title: str

    class PostV2(BaseModel):
        id: int
        title: str
        tags: List[str] = []

    assert schema_tag(PostV1) == hashlib.sha256(PostV1.schema_json().encode()).hexdigest()
    assert schema_tag(PostV1) != schema_tag(PostV2)
    loads = []

    def app_with(model):
        app = FastAPI()

        # the model comes from the return annotation
        @app.get("/post/{pid}")
        @kf.cached(ns="schema", key="post:{pid}", client=client)
        def get_post(pid: int) -> model:
            loads.append(model.__name__)
            return model(id=pid, title="t")
        return TestClient(app)

    v1, v2 = app_with(PostV1), app_with(PostV2)
    assert v1.get("/post/1").json() == {"id": 1, "title": "t"}
    assert v1.get("/post/1").status_code == 200
    assert stored_schema(redis, "post:1", "schema") == schema_tag(PostV1)
    # the new code's model has another schema: the old value is a miss
    assert v2.get("/post/1").json() == {"id": 1, "title": "t", "tags": []}
    assert v2.get("/post/1").status_code == 200
    assert loads == ["PostV1", "PostV2"]
    assert stored_schema(redis, "post:1", "schema") == schema_tag(PostV2)
    assert client.stats()["namespaces"]["schema"]["schema_mismatch"] >= 1


def test_not_cached_errors_and_responses(kcd, client):
    app = FastAPI()
    loads = []

    @app.get("/maybe/{x}")
    @kf.cached(ns="nc", client=client, lease_ms=2000)
    def maybe(x: int):
        loads.append(x)
        if x < 0:
            raise HTTPException(status_code=404, detail="nope")
        return PlainTextResponse(f"plain {x}")

    tc = TestClient(app)
    t0 = time.monotonic()
    assert tc.get("/maybe/-1").status_code == 404
    assert tc.get("/maybe/-1").status_code == 404  # the lease was released: no wait
    assert time.monotonic() - t0 < T(1)
    assert tc.get("/maybe/2").text == "plain 2"
    assert tc.get("/maybe/2").text == "plain 2"
    assert loads == [-1, -1, 2, 2]


def test_get_or_set_helper_one_loader(kcd, client):
    loads = []

    def loader():
        loads.append(1)
        time.sleep(0.2)
        return Post(id=7, title="shared")
    out = []
    ts = [threading.Thread(target=lambda: out.append(
        kf.get_or_set("p7", loader, ns="gos", ttl=60, model=Post, client=client)))
        for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(T(10))
    assert out == [Post(id=7, title="shared")] * 8
    assert len(loads) == 1
    assert kf.get_or_set("p7", loader, ns="gos", model=Post, client=client).title == "shared"
    assert len(loads) == 1


def test_waiters_get_a_loaded_value_when_storing_fails(harness, redis):
    # values over max_value_bytes are refused by fill: nothing is cached, yet
    # every caller gets a value (the lease passes on after each failed fill)
    k = harness.kcached(redis, ini={"cache": {"max_value_bytes": 64}})
    c = kcache.Client(k.sock, timeout=T(2))
    loads = []

    def loader():
        loads.append(1)
        time.sleep(0.1)
        return {"blob": "x" * 200}
    out = []
    ts = [threading.Thread(target=lambda: out.append(
        kf.get_or_set("big", loader, ns="big", client=c))) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(T(10))
    assert out == [{"blob": "x" * 200}] * 4
    assert 1 <= len(loads) <= 4
    assert c.get("big", ns="big") is None


def _app(client, fail_open, wait_ms=None):
    app = FastAPI()
    loads = []

    @app.get("/v/{x}")
    @kf.cached(ns="fo", client=client, fail_open=fail_open, wait_ms=wait_ms)
    def v(x: int):
        loads.append(x)
        return {"x": x}

    @app.get("/a/{x}")
    @kf.cached(ns="fo", client=client, fail_open=fail_open, wait_ms=wait_ms)
    async def a(x: int):
        loads.append(-x)
        return {"x": x}

    @app.post("/bust")
    @kf.cache_busting(ns="fo", namespace=True, client=client, fail_open=fail_open)
    def bust():
        return {"ok": True}
    return TestClient(app), loads


def test_fail_open_kcached_down(kcd, client, caplog):
    tc, loads = _app(client, fail_open=True)
    assert tc.get("/v/1").json() == {"x": 1}
    kcd.kill()
    with caplog.at_level(logging.WARNING, logger="kcache.fastapi"):
        assert tc.get("/v/1").json() == {"x": 1}
        assert tc.get("/a/2").json() == {"x": 2}
        assert tc.post("/bust").json() == {"ok": True}
    assert loads == [1, 1, -2]
    msgs = [r.getMessage() for r in caplog.records if r.name == "kcache.fastapi"]
    assert any("calling the loader directly" in m and "CONNECTION" in m for m in msgs), msgs
    assert any("may be stale" in m for m in msgs), msgs
    kcd.start()
    assert tc.get("/v/1").json() == {"x": 1}  # cached before, still in Redis
    assert tc.get("/v/5").json() == {"x": 5}  # back to caching
    assert tc.get("/v/5").json() == {"x": 5}
    assert loads == [1, 1, -2, 5]


def test_fail_open_kcached_stopped(kcd, caplog):
    c = kcache.Client(kcd.sock, timeout=0.2)
    tc, loads = _app(c, fail_open=True, wait_ms=100)
    kcd.freeze()
    try:
        with caplog.at_level(logging.WARNING, logger="kcache.fastapi"):
            t0 = time.monotonic()
            assert tc.get("/v/3").json() == {"x": 3}
            assert tc.get("/a/3").json() == {"x": 3}
            dt = time.monotonic() - t0
    finally:
        kcd.thaw()
    assert loads == [3, -3]
    assert dt < 2 * (1.1 + T(0.5))  # the get_or_set deadline: wait_ms + 1 s
    msgs = [r.getMessage() for r in caplog.records if r.name == "kcache.fastapi"]
    assert sum("TIMEOUT" in m for m in msgs) == 2, msgs


def test_fail_closed_status_codes(kcd, redis, caplog):
    c = kcache.Client(kcd.sock, timeout=0.2)
    tc, loads = _app(c, fail_open=False, wait_ms=100)
    assert tc.get("/v/1").status_code == 200
    kcd.freeze()
    try:
        r = tc.get("/v/2")
        assert r.status_code == 504 and "TIMEOUT" in r.json()["detail"]
        assert tc.get("/a/2").status_code == 504
    finally:
        kcd.thaw()
    redis.stop()

    def unavailable():
        try:
            c.get("x")
        except kcache.Unavailable:
            return True
        except kcache.KcacheError:
            return False
    wait_until(unavailable, 10, "kcached to answer UNAVAILABLE")
    r = tc.get("/v/3")
    assert r.status_code == 503 and "UNAVAILABLE" in r.json()["detail"]
    assert tc.post("/bust").status_code == 503
    kcd.kill()
    assert tc.get("/a/4").status_code == 503  # no kcached at all
    assert loads == [1]
    assert kf.http_exception(kcache.BadRequest(None, "x")).status_code == 500
