# SPDX-License-Identifier: MIT
"""A FastAPI app cached by kcached: kcache.fastapi's decorators and get_or_set.

Run it next to a kcached (socket from $KCACHE_SOCKET, else
/run/kcache/kcached.sock), with client/python on the path:

    PYTHONPATH=client/python KCACHE_SOCKET=/tmp/kcached.sock \
        /usr/bin/python3 examples/fastapi_app.py --port 8000

then:

    curl localhost:8000/users/ada/posts      # loads (see "loads" in the answer)
    curl localhost:8000/users/ada/posts      # cached: same answer, loads unchanged
    curl -X POST localhost:8000/users/ada/posts -H 'content-type: application/json' \
         -d '{"id": 2, "title": "Notes"}'   # stores, and busts ada's cached posts
    curl localhost:8000/users/ada/posts      # reloaded, with the new post
    curl localhost:8000/stats                # how often each loader ran

The "database" is a dict and every loader counts its runs, so the effect of
the cache is visible from outside.
"""

import os
import sys
import threading
from typing import List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "client", "python"))

from fastapi import FastAPI, HTTPException  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from kcache.fastapi import aget_or_set, cache_busting, cached  # noqa: E402


class Post(BaseModel):
    id: int
    title: str


class Profile(BaseModel):
    username: str
    posts: int


app = FastAPI(title="kcache example")

_db = {"ada": [Post(id=1, title="Engines")], "alan": [Post(id=1, title="Machines")]}
_db_lock = threading.Lock()
loads = {"posts": 0, "profile": 0, "search": 0}


# The key is a template of the path parameter; the value is the model's JSON
# and the schema tag the hash of its JSON schema: change Post, and values
# cached by the old code read as misses instead of failing validation.
@app.get("/users/{username}/posts", response_model=List[Post])
@cached(ns="posts", ttl=300, key="{username}_posts", model=List[Post])
def user_posts(username: str):
    loads["posts"] += 1
    with _db_lock:
        if username not in _db:
            raise HTTPException(status_code=404, detail="no such user")  # not cached
        return list(_db[username])


# A write busts the cached list of that user once it succeeded.
@app.post("/users/{username}/posts", response_model=Post, status_code=201)
@cache_busting(ns="posts", keys=["{username}_posts"])
def add_post(username: str, post: Post):
    with _db_lock:
        _db.setdefault(username, []).append(post)
    return post


# An async endpoint with the default key: a hash of the function's name and
# its arguments (q and limit here), so each query is cached on its own.
@app.get("/search")
@cached(ns="search", ttl=60)
async def search(q: str, limit: int = 10):
    loads["search"] += 1
    with _db_lock:
        hits = [{"user": u, "title": p.title} for u, ps in _db.items() for p in ps
                if q.lower() in p.title.lower()]
    return {"q": q, "hits": hits[:limit]}


# get_or_set inside an endpoint, for a value that is not the whole response.
@app.get("/users/{username}")
async def profile(username: str):
    def load():
        loads["profile"] += 1
        with _db_lock:
            return Profile(username=username, posts=len(_db.get(username, [])))
    p = await aget_or_set(f"profile:{username}", load, ns="profiles", ttl=30, model=Profile)
    return {"profile": p, "loads": loads["profile"]}


@app.get("/stats")
def stats():
    return dict(loads)


if __name__ == "__main__":
    import argparse

    import uvicorn

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    a = ap.parse_args()
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning")
