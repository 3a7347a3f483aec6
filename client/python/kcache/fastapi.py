# SPDX-License-Identifier: MIT
"""FastAPI helpers: cache an endpoint's result in kcached, bust it on writes.

    from kcache.fastapi import cached, cache_busting

    @app.get("/users/{username}/posts", response_model=list[Post])
    @cached(ns="posts", ttl=300, key="{username}_posts", model=list[Post])
    async def posts(username: str): ...

    @app.post("/users/{username}/posts")
    @cache_busting(ns="posts", keys=["{username}_posts"])
    async def add_post(username: str, post: Post): ...

The decorator goes below the route decorator. It keeps the endpoint's
signature, so FastAPI's parameters and dependencies work as before; sync
endpoints use a kcache.Client, async ones a kcache.AsyncClient (either may
be passed as client=: its twin for the other kind is made on the same socket).

Keys: key=None hashes the function's qualified name with its arguments sorted
by name (leaving out the Request, Response, BackgroundTasks, WebSocket and
Depends() parameters); key="{username}_posts" is a template filled from the
arguments; key=callable is called with the arguments it names (or all of them
if it takes **kwargs) and returns the key.

Values: with model= (a Pydantic model, or a type such as List[Model]) the
value is the model's JSON and the schema tag the SHA-256 of its JSON schema,
so a changed model misses the values cached by the old one; without it, the
endpoint's return value as JSON (FastAPI's jsonable_encoder) and no tag. A
return annotation that is a Pydantic model serves as model= by default.
An endpoint that returns a Response object is not cached.

Misses use get_or_set: one caller (across workers and pods) runs the
endpoint, the others wait for its value. The loaded value is returned even if
storing it fails.

Fail-open: when kcached is unreachable, answers UNAVAILABLE or TIMEOUT, or the
call times out (any kcache.KcacheError), the endpoint runs directly and a
warning is logged on the "kcache.fastapi" logger. fail_open=False raises
HTTPException instead: 503 for UNAVAILABLE and connection failures, 504 for
TIMEOUT, 500 for anything else.
"""

import asyncio
import functools
import inspect
import logging
import threading
import typing
import weakref

from fastapi import BackgroundTasks, HTTPException, Request, Response, WebSocket
from fastapi import params as fastapi_params
from starlette.requests import HTTPConnection

from . import keys as _keys
from .aio import AsyncClient
from .client import Client
from .errors import ConnectionError, KcacheError, Timeout, Unavailable

__all__ = ["cached", "cache_busting", "get_or_set", "aget_or_set", "configure", "sync_client",
           "async_client", "http_exception"]

log = logging.getLogger("kcache.fastapi")

_NOT_KEY_TYPES = (Request, Response, BackgroundTasks, WebSocket, HTTPConnection)

# -- clients ---------------------------------------------------------------

_lock = threading.Lock()
_settings = {"socket_path": None, "timeout": 1.0}
_defaults = {}  # "sync" / "async" -> the default clients
_twins = weakref.WeakKeyDictionary()


def configure(socket_path=None, timeout=None, client=None, async_client=None):
    """Sets the default clients the helpers use when given no client=: by
    socket path and timeout, or as objects. Default: $KCACHE_SOCKET (else
    /run/kcache/kcached.sock), timeout 1 s."""
    with _lock:
        if socket_path is not None:
            _settings["socket_path"] = socket_path
        if timeout is not None:
            _settings["timeout"] = timeout
        _defaults.clear()
        if client is not None:
            _defaults["sync"] = client
        if async_client is not None:
            _defaults["async"] = async_client


def sync_client(client=None):
    """The kcache.Client to use: client itself, the sync twin of an
    AsyncClient, or the default one."""
    if isinstance(client, Client):
        return client
    if isinstance(client, AsyncClient):
        return _twin(client, Client)
    if client is not None:
        raise TypeError(f"client must be a kcache.Client or AsyncClient, not {client!r}")
    with _lock:
        c = _defaults.get("sync")
        if c is None:
            c = _defaults["sync"] = Client(_settings["socket_path"], _settings["timeout"])
        return c


def async_client(client=None):
    """The kcache.AsyncClient to use (see sync_client())."""
    if isinstance(client, AsyncClient):
        return client
    if isinstance(client, Client):
        return _twin(client, AsyncClient)
    if client is not None:
        raise TypeError(f"client must be a kcache.Client or AsyncClient, not {client!r}")
    with _lock:
        c = _defaults.get("async")
        if c is None:
            c = _defaults["async"] = AsyncClient(_settings["socket_path"], _settings["timeout"])
        return c


def _twin(client, cls):
    with _lock:
        t = _twins.get(client)
        if t is None:
            t = _twins[client] = cls(client.socket_path, client.timeout)
        return t


# -- errors ----------------------------------------------------------------

def http_exception(e):
    """The HTTPException for a kcache error when failing closed: 503 when
    kcached or Redis is unreachable, 504 on a timeout, else 500."""
    if isinstance(e, (Unavailable, ConnectionError)):
        status = 503
    elif isinstance(e, Timeout):
        status = 504
    else:
        status = 500
    return HTTPException(status_code=status, detail=f"cache: {e}")


def _fail(e, fail_open, what, key):
    """Raises unless failing open; logs either way."""
    if not fail_open:
        log.error("kcache: %s (key %r) failed: %s", what, key, e)
        raise http_exception(e) from e
    log.warning("kcache: %s (key %r) failed, calling the loader directly: %s", what, key, e)


class _Uncacheable(Exception):
    def __init__(self, value):
        super().__init__()
        self.value = value


class _LoaderFailed(Exception):
    """A KcacheError raised by the loader itself: not a cache failure."""

    def __init__(self, exc):
        super().__init__(exc)
        self.exc = exc


# -- values ----------------------------------------------------------------

def _codec(model):
    if model is None:
        return _keys.json_codec()
    return _keys.model_codec(model)


def _model_from_annotation(func):
    try:
        ann = typing.get_type_hints(func).get("return")
    except Exception:  # noqa: BLE001 - unresolvable annotations: no default model
        ann = getattr(func, "__annotations__", {}).get("return")
    try:
        import pydantic
        if isinstance(ann, type) and issubclass(ann, pydantic.BaseModel):
            return ann
    except ImportError:
        pass
    return None


class _Value:
    """How one helper stores values: codec, schema tag and storage options."""

    def __init__(self, model, schema, ns, ttl, ttl_ms, stale_ttl, tags, lease_ms, wait_ms):
        self.dumps, self.loads = _codec(model)
        if schema is None and model is not None:
            schema = _keys.schema_tag(model)
        self.schema = schema
        self.ns = ns
        self.store = {"ttl": ttl, "ttl_ms": ttl_ms, "stale_ttl": stale_ttl}
        self.tags = tags
        self.lease = {"lease_ms": lease_ms, "wait_ms": wait_ms}

    def kwargs(self, tags):
        return dict(ns=self.ns, schema=self.schema, tags=tags, **self.store, **self.lease)


def _sync_load(client, key, value, tags, loader, fail_open, what):
    loaded = []

    def load():
        try:
            result = loader()
        except KcacheError as e:
            raise _LoaderFailed(e) from e
        if isinstance(result, Response):
            raise _Uncacheable(result)
        loaded.append(result)
        return value.dumps(result)

    try:
        raw = client.get_or_set(key, load, **value.kwargs(tags))
    except _Uncacheable as u:
        return u.value
    except _LoaderFailed as f:
        raise f.exc from None
    except KcacheError as e:
        if loaded:  # cannot happen (get_or_set returns loaded values), but never load twice
            return loaded[0]
        _fail(e, fail_open, what, key)
        return loader()
    if loaded:
        return loaded[0]
    return value.loads(raw)


async def _async_load(client, key, value, tags, loader, fail_open, what):
    loaded = []

    async def load():
        try:
            result = loader()
            if inspect.isawaitable(result):
                result = await result
        except KcacheError as e:
            raise _LoaderFailed(e) from e
        if isinstance(result, Response):
            raise _Uncacheable(result)
        loaded.append(result)
        return value.dumps(result)

    try:
        raw = await client.get_or_set(key, load, **value.kwargs(tags))
    except _Uncacheable as u:
        return u.value
    except _LoaderFailed as f:
        raise f.exc from None
    except KcacheError as e:
        if loaded:
            return loaded[0]
        _fail(e, fail_open, what, key)
        result = loader()
        if inspect.isawaitable(result):
            result = await result
        return result
    if loaded:
        return loaded[0]
    return value.loads(raw)


def get_or_set(key, loader, *, ns=None, ttl=None, ttl_ms=None, stale_ttl=None, model=None,
               schema=None, tags=None, lease_ms=None, wait_ms=None, client=None, fail_open=True):
    """The cached value of key, or loader()'s (stored as JSON, or as model's
    JSON with its schema tag), one loader at a time per key (leases). Fails
    open like the decorators."""
    value = _Value(model, schema, ns, ttl, ttl_ms, stale_ttl, tags, lease_ms, wait_ms)
    return _sync_load(sync_client(client), key, value, tags, loader, fail_open, "get_or_set")


async def aget_or_set(key, loader, *, ns=None, ttl=None, ttl_ms=None, stale_ttl=None, model=None,
                      schema=None, tags=None, lease_ms=None, wait_ms=None, client=None,
                      fail_open=True):
    """get_or_set() for async code: loader may be an async function."""
    value = _Value(model, schema, ns, ttl, ttl_ms, stale_ttl, tags, lease_ms, wait_ms)
    return await _async_load(async_client(client), key, value, tags, loader, fail_open,
                             "get_or_set")


# -- keys ------------------------------------------------------------------

def _is_dependency(p):
    if isinstance(p.default, fastapi_params.Depends):
        return True
    ann = p.annotation
    for meta in getattr(ann, "__metadata__", ()):  # Annotated[..., Depends()]
        if isinstance(meta, fastapi_params.Depends):
            return True
    origin = getattr(ann, "__origin__", None)
    if origin is not None and getattr(ann, "__metadata__", None) is not None:
        ann = origin
    return isinstance(ann, type) and issubclass(ann, _NOT_KEY_TYPES)


class _Keys:
    """Turns a call's arguments into keys and tags."""

    def __init__(self, func, key):
        self.func = func
        self.sig = inspect.signature(func)
        self.name = f"{func.__module__}.{func.__qualname__}"
        self.skip = {n for n, p in self.sig.parameters.items() if _is_dependency(p)}
        self.key = key
        if callable(key):
            ks = inspect.signature(key)
            self.key_all = any(p.kind == p.VAR_KEYWORD for p in ks.parameters.values())
            self.key_names = [n for n, p in ks.parameters.items()
                              if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        elif key is not None and not isinstance(key, str):
            raise TypeError(f"key must be None, a template string or a callable, not {key!r}")

    def arguments(self, args, kwargs):
        b = self.sig.bind_partial(*args, **kwargs)
        b.apply_defaults()
        return dict(b.arguments)

    def key_of(self, arguments):
        if self.key is None:
            return _keys.hash_key(self.name, {n: v for n, v in arguments.items()
                                              if n not in self.skip})
        if isinstance(self.key, str):
            return _keys.format_key(self.key, arguments)
        if self.key_all:
            k = self.key(**arguments)
        else:
            k = self.key(**{n: arguments[n] for n in self.key_names if n in arguments})
        if not isinstance(k, (str, bytes)):
            raise TypeError(f"key function of {self.name} returned {k!r}, not str or bytes")
        return k

    @staticmethod
    def templates(tpls, arguments):
        if tpls is None:
            return None
        if isinstance(tpls, str):
            tpls = [tpls]
        return [_keys.format_key(t, arguments) for t in tpls]


# -- decorators ------------------------------------------------------------

def cached(ns=None, ttl=None, key=None, model=None, *, schema=None, tags=None, ttl_ms=None,
           stale_ttl=None, lease_ms=None, wait_ms=None, client=None, fail_open=True):
    """Caches an endpoint's result in kcached (see the module's comment).

    ns: namespace; ttl/ttl_ms: expiry (default kcached's default_ttl);
    stale_ttl: seconds a value stays servable past its ttl while one caller
    refreshes it; key: None (hash of the arguments), a template or a callable;
    model: a Pydantic model (or type) for the values and the schema tag;
    schema: an explicit schema tag instead; tags: templates of tags to record
    the value under (for cache_busting(tags=...)); lease_ms/wait_ms: the lease
    protocol's (a waiter gives up after wait_ms, default kcached's lease_ttl_ms);
    client: a kcache.Client or AsyncClient (default: configure()'s);
    fail_open: False raises HTTPException 503/504/500 instead of calling the
    endpoint directly when kcached fails."""
    def deco(func):
        mdl = model if model is not None else _model_from_annotation(func)
        value = _Value(mdl, schema, ns, ttl, ttl_ms, stale_ttl, tags, lease_ms, wait_ms)
        ks = _Keys(func, key)

        if asyncio.iscoroutinefunction(func):
            @functools.wraps(func)
            async def async_wrapper(*args, **kwargs):
                arguments = ks.arguments(args, kwargs)
                k = ks.key_of(arguments)
                return await _async_load(async_client(client), k, value,
                                         ks.templates(tags, arguments),
                                         lambda: func(*args, **kwargs), fail_open, ks.name)
            return async_wrapper

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            arguments = ks.arguments(args, kwargs)
            k = ks.key_of(arguments)
            return _sync_load(sync_client(client), k, value, ks.templates(tags, arguments),
                              lambda: func(*args, **kwargs), fail_open, ks.name)
        return wrapper
    return deco


def cache_busting(ns=None, keys=None, *, namespace=False, tags=None, pattern=None, client=None,
                  fail_open=True):
    """Invalidates cached values after the endpoint returns (not when it
    raises): keys (templates filled from the endpoint's arguments, in ns),
    namespace=True (all of ns, in O(1)), tags (templates), or pattern (a
    template of a Redis glob, in ns). A failed invalidation is logged and the
    endpoint's result returned when fail_open; else HTTPException 503/504/500
    (the endpoint's own effects have happened by then)."""
    if not (keys or namespace or tags or pattern):
        raise TypeError("cache_busting needs keys=, namespace=True, tags= or pattern=")
    if namespace and not ns:
        raise TypeError("cache_busting(namespace=True) needs ns=")
    if isinstance(keys, str):
        keys = [keys]

    def plan(ks, arguments):
        ops = []
        if keys:
            ops.append(("invalidate_keys", (ks.templates(keys, arguments),), {"ns": ns}))
        if pattern:
            ops.append(("invalidate_pattern", (_keys.format_key(pattern, arguments),),
                        {"ns": ns}))
        if tags:
            ops.append(("invalidate_tags", (ks.templates(tags, arguments),), {}))
        if namespace:
            ops.append(("invalidate_namespace", (ns,), {}))
        return ops

    def failed(e, what):
        if not fail_open:
            log.error("kcache: %s failed: %s", what, e)
            raise http_exception(e) from e
        log.warning("kcache: %s failed, cached values may be stale: %s", what, e)

    def deco(func):
        ks = _Keys(func, None)

        if asyncio.iscoroutinefunction(func):
            @functools.wraps(func)
            async def async_wrapper(*args, **kwargs):
                result = await func(*args, **kwargs)
                c = async_client(client)
                for meth, a, kw in plan(ks, ks.arguments(args, kwargs)):
                    try:
                        await getattr(c, meth)(*a, **kw)
                    except KcacheError as e:
                        failed(e, f"{meth}{a!r} after {ks.name}")
                return result
            return async_wrapper

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            result = func(*args, **kwargs)
            c = sync_client(client)
            for meth, a, kw in plan(ks, ks.arguments(args, kwargs)):
                try:
                    getattr(c, meth)(*a, **kw)
                except KcacheError as e:
                    failed(e, f"{meth}{a!r} after {ks.name}")
            return result
        return wrapper
    return deco
