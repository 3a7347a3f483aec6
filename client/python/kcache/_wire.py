# SPDX-License-Identifier: MIT
"""What the sync client, the asyncio client and their pipelines share: the
method set (argument checks, options, result decoding), msgpack framing and
the message shapes of proto/PROTOCOL.md.

Each public method of Methods builds one request and hands it to
self._call(method, params, kind, decode, timeout, ...), which the concrete
class implements: Client runs it and returns the result, AsyncClient returns a
coroutine, a pipeline queues it. So the method set is written once.
"""

import collections
import os

import msgpack

READ = "read"    # idempotent: retried once on a broken connection
WRITE = "write"  # never retried once a byte of it may have been sent

DEFAULT_SOCKET = "/run/kcache/kcached.sock"
DEFAULT_TIMEOUT = 1.0
# kcached's default lease_ttl_ms, which is also the default wait_ms of get_or_set.
DEFAULT_WAIT_MS = 5000
# Pattern and tag invalidations may take many Redis round trips: kcached gives
# them 120 s (PROTOCOL.md section 9); the client waits a little longer.
LONG_INVALIDATION_TIMEOUT = 121.0
# Late replies still owed for abandoned requests before the connection is
# remade, so that nothing grows without bound (as libkcache does).
MAX_ABANDONED = 16
MAX_MSGID = 0xFFFFFFFF

GetOrSetResult = collections.namedtuple("GetOrSetResult", "value lease stale")
GetOrSetResult.__doc__ = """Answer of get_or_set_begin(): `value` (bytes or None), `lease` (the
token to fill or release, or None), `stale` (True when value is past its ttl)."""


def default_socket_path():
    return os.environ.get("KCACHE_SOCKET") or DEFAULT_SOCKET


def unpacker():
    # Values are bin (bytes); everything else kcached sends is str. Map keys
    # may be bin (hgetall). surrogateescape keeps a non-UTF-8 namespace name
    # in `stats` from breaking the connection.
    return msgpack.Unpacker(raw=False, strict_map_key=False, unicode_errors="surrogateescape",
                            max_buffer_size=1 << 30)


def pack_request(msgid, method, params):
    return msgpack.packb([0, msgid, method, params], use_bin_type=True)


def blob(x, what="key"):
    """A key, field or value as kcached takes it: bytes or str."""
    if isinstance(x, (bytes, str)):
        return x
    if isinstance(x, (bytearray, memoryview)):
        return bytes(x)
    raise TypeError(f"{what} must be bytes or str, not {type(x).__name__}")


def blobs(items, what="key"):
    # f(["a", "b"]) and f("a", "b") both work for the *keys methods.
    if len(items) == 1 and isinstance(items[0], (list, tuple, set, frozenset)):
        items = items[0]
    return [blob(x, what) for x in items]


def opts(**kw):
    """The options map: only the options that are set."""
    out = {}
    for k, v in kw.items():
        if v is None:
            continue
        if k == "tags":
            if isinstance(v, (str, bytes)):
                v = [v]
            v = [blob(t, "tag") for t in v]
        elif k in ("ns", "schema", "field"):
            v = blob(v, k)
        out[k] = v
    return out


def params_with(args, o):
    return args + [o] if o else args


def _ident(x):
    return x


def _as_bool(x):
    return bool(x)


def _as_int(x):
    return int(x) if isinstance(x, int) else x


def _as_bytes_or_none(x):
    if isinstance(x, str):  # another kcached version could answer str
        return x.encode("utf-8", "surrogateescape")
    return x


def _as_list(x):
    return [_as_bytes_or_none(v) for v in x] if isinstance(x, list) else x


def _as_hash(x):
    if not isinstance(x, dict):
        return x
    return {_as_bytes_or_none(k): _as_bytes_or_none(v) for k, v in x.items()}


def _as_gos(x):
    if not isinstance(x, dict):
        return GetOrSetResult(None, None, False)
    return GetOrSetResult(_as_bytes_or_none(x.get("value")), x.get("lease"),
                          bool(x.get("stale", False)))


def _deleted(x):
    return x.get("deleted") if isinstance(x, dict) else x


def _generation(x):
    return x.get("generation") if isinstance(x, dict) else x


def gos_deadline(wait_ms):
    """The least deadline of get_or_set: kcached may wait wait_ms for another
    caller's lease (PROTOCOL.md section 8)."""
    return ((wait_ms if wait_ms is not None else DEFAULT_WAIT_MS) + 1000) / 1000.0


class Methods:
    """The protocol's methods (proto/PROTOCOL.md section 3), keyword options
    named as on the wire. Every method takes `timeout=` (seconds) to override
    the client's deadline for that call."""

    def _call(self, method, params, kind, decode, timeout, min_timeout=None, lease_of=None):
        raise NotImplementedError

    # -- local
    def hello(self, *, timeout=None):
        """Server facts: {"server", "version", "protocol", "limits", "methods", "options"}."""
        return self._call("hello", [], READ, _ident, timeout)

    def ping(self, *, timeout=None):
        """"pong"."""
        return self._call("ping", [], READ, _ident, timeout)

    def stats(self, *, timeout=None):
        """Cache counters: {"totals": {...}, "namespaces": {ns: {...}}}."""
        return self._call("stats", [], READ, _ident, timeout)

    def call(self, method, *params, read=False, timeout=None):
        """Any method with raw params (the options map, if any, last); the result
        as kcached sent it. Retried like a read only when read=True."""
        return self._call(method, list(params), READ if read else WRITE, _ident, timeout)

    # -- plain keys
    def get(self, key, *, ns=None, schema=None, consistency=None, timeout=None):
        """The value (bytes), or None for a miss."""
        o = opts(ns=ns, schema=schema, consistency=consistency)
        return self._call("get", params_with([blob(key)], o), READ, _as_bytes_or_none, timeout)

    def set(self, key, value, *, ttl=None, ttl_ms=None, stale_ttl=None, stale_ttl_ms=None,
            ns=None, schema=None, tags=None, timeout=None):
        """Stores value; True."""
        o = opts(ttl=ttl, ttl_ms=ttl_ms, stale_ttl=stale_ttl, stale_ttl_ms=stale_ttl_ms, ns=ns,
                 schema=schema, tags=tags)
        return self._call("set", params_with([blob(key), blob(value, "value")], o), WRITE,
                          _ident, timeout)

    def delete(self, *keys, ns=None, timeout=None):
        """`del`: deletes keys; how many existed."""
        return self._call("del", params_with([blobs(keys)], opts(ns=ns)), WRITE, _as_int, timeout)

    def mget(self, keys, *, ns=None, schema=None, consistency=None, timeout=None):
        """[bytes or None, ...] in the order of keys."""
        o = opts(ns=ns, schema=schema, consistency=consistency)
        return self._call("mget", params_with([blobs([list(keys)])], o), READ, _as_list, timeout)

    def mset(self, mapping, *, ttl=None, ttl_ms=None, stale_ttl=None, stale_ttl_ms=None, ns=None,
             schema=None, tags=None, timeout=None):
        """Stores every pair of mapping at once (all or none); True."""
        m = {blob(k): blob(v, "value") for k, v in dict(mapping).items()}
        o = opts(ttl=ttl, ttl_ms=ttl_ms, stale_ttl=stale_ttl, stale_ttl_ms=stale_ttl_ms, ns=ns,
                 schema=schema, tags=tags)
        return self._call("mset", params_with([m], o), WRITE, _ident, timeout)

    def exists(self, *keys, ns=None, consistency=None, timeout=None):
        """How many of the keys exist (a key named twice counts twice)."""
        o = opts(ns=ns, consistency=consistency)
        return self._call("exists", params_with([blobs(keys)], o), READ, _as_int, timeout)

    def ttl(self, key, *, ns=None, consistency=None, timeout=None):
        """Seconds left; -1: no expiry; -2: missing."""
        o = opts(ns=ns, consistency=consistency)
        return self._call("ttl", params_with([blob(key)], o), READ, _as_int, timeout)

    def expire(self, key, seconds, *, ns=None, timeout=None):
        """True if the key existed (and now expires in seconds)."""
        return self._call("expire", params_with([blob(key), seconds], opts(ns=ns)), WRITE,
                          _as_bool, timeout)

    # -- leases (low level; see get_or_set() of the clients for the whole protocol)
    def get_or_set_begin(self, key, *, ns=None, schema=None, field=None, lease_ms=None,
                         wait_ms=None, timeout=None):
        """`get_or_set`: a GetOrSetResult(value, lease, stale). With a lease the
        caller must fill() or release() it on this client. Without timeout=, the
        deadline is at least wait_ms + 1 s."""
        o = opts(ns=ns, schema=schema, field=field, lease_ms=lease_ms, wait_ms=wait_ms)
        return self._call("get_or_set", params_with([blob(key)], o), WRITE, _as_gos, timeout,
                          min_timeout=gos_deadline(wait_ms),
                          lease_of=(blob(key), opts(ns=ns, field=field)))

    def fill(self, key, token, value, *, ns=None, schema=None, ttl=None, ttl_ms=None,
             stale_ttl=None, stale_ttl_ms=None, field=None, tags=None, timeout=None):
        """Stores the value loaded under a lease; True, or LeaseInvalid."""
        o = opts(ns=ns, schema=schema, ttl=ttl, ttl_ms=ttl_ms, stale_ttl=stale_ttl,
                 stale_ttl_ms=stale_ttl_ms, field=field, tags=tags)
        return self._call("fill", params_with([blob(key), blob(token, "token"),
                                               blob(value, "value")], o), WRITE, _ident, timeout)

    def release(self, key, token, *, ns=None, field=None, timeout=None):
        """Gives a lease up; True if it was still ours."""
        o = opts(ns=ns, field=field)
        return self._call("release", params_with([blob(key), blob(token, "token")], o), WRITE,
                          _as_bool, timeout)

    # -- invalidation
    def invalidate(self, *, keys=None, pattern=None, tags=None, namespace=None, ns=None,
                   timeout=None):
        """One selector: {"deleted": n}, or {"generation": g} for namespace=."""
        given = [(n, v) for n, v in (("keys", keys), ("pattern", pattern), ("tags", tags),
                                     ("namespace", namespace)) if v is not None]
        if len(given) != 1:
            raise TypeError("invalidate takes exactly one of keys=, pattern=, tags=, namespace=")
        name, v = given[0]
        if name in ("keys", "tags"):
            v = [v] if isinstance(v, (str, bytes)) else list(v)
        return self._invalidate(name, v, ns, timeout, _ident)

    def _invalidate(self, name, v, ns, timeout, decode):
        if name in ("keys", "tags"):
            v = blobs([v], name[:-1])
        else:
            v = blob(v, name)
        if name in ("namespace", "tags") and ns is not None:
            raise TypeError(f"invalidate {name}= takes no ns=")
        long = name in ("pattern", "tags")
        return self._call("invalidate", params_with([{name: v}], opts(ns=ns)), WRITE, decode,
                          timeout, min_timeout=LONG_INVALIDATION_TIMEOUT if long else None)

    def invalidate_keys(self, *keys, ns=None, timeout=None):
        """Deletes keys and revokes their leases; how many existed."""
        return self._invalidate("keys", blobs(keys), ns, timeout, _deleted)

    def invalidate_pattern(self, pattern, *, ns=None, timeout=None):
        """Deletes every key matching the Redis glob (in ns, if given); how many.
        Without timeout=, the deadline is at least 121 s (kcached's own)."""
        return self._invalidate("pattern", pattern, ns, timeout, _deleted)

    def invalidate_tags(self, *tags, timeout=None):
        """Deletes every key recorded under any of the tags; how many."""
        return self._invalidate("tags", blobs(tags, "tag"), None, timeout, _deleted)

    def invalidate_namespace(self, ns, *, timeout=None):
        """Moves ns to a new generation (its keys vanish at once); the generation."""
        return self._invalidate("namespace", ns, None, timeout, _generation)

    # -- hashes
    def hget(self, key, field, *, ns=None, schema=None, consistency=None, timeout=None):
        """A field's value (bytes), or None."""
        o = opts(ns=ns, schema=schema, consistency=consistency)
        return self._call("hget", params_with([blob(key), blob(field, "field")], o), READ,
                          _as_bytes_or_none, timeout)

    def hset(self, key, mapping, *, ns=None, schema=None, ttl=None, ttl_ms=None, timeout=None):
        """Stores fields of the hash at key (ttl: of the whole hash); True."""
        m = {blob(k, "field"): blob(v, "value") for k, v in dict(mapping).items()}
        o = opts(ns=ns, schema=schema, ttl=ttl, ttl_ms=ttl_ms)
        return self._call("hset", params_with([blob(key), m], o), WRITE, _ident, timeout)

    def hdel(self, key, *fields, ns=None, timeout=None):
        """Deletes fields; how many existed."""
        return self._call("hdel", params_with([blob(key), blobs(fields, "field")], opts(ns=ns)),
                          WRITE, _as_int, timeout)

    def hgetall(self, key, *, ns=None, schema=None, consistency=None, timeout=None):
        """{field: value} (bytes both); {} for a missing key."""
        o = opts(ns=ns, schema=schema, consistency=consistency)
        return self._call("hgetall", params_with([blob(key)], o), READ, _as_hash, timeout)
