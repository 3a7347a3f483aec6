# SPDX-License-Identifier: MIT
"""kcache: a pure-Python client for kcached (proto/PROTOCOL.md).

    import kcache
    c = kcache.Client("/run/kcache/kcached.sock", timeout=0.5)
    c.set("user:42", b"...", ttl=60, ns="users")
    c.get("user:42", ns="users")

kcache.Client is synchronous and thread-safe; kcache.AsyncClient is its
asyncio twin. kcache.fastapi holds decorators for FastAPI endpoints (it
imports FastAPI, so it is not imported here).
"""

from ._wire import DEFAULT_SOCKET, DEFAULT_TIMEOUT, GetOrSetResult
from .aio import AsyncClient, AsyncPipeline
from .client import Client, Pipeline
from .errors import (Backend, BadRequest, ConnectionError, Internal, KcacheError, LeaseInvalid,
                     NoMethod, ProtocolError, Timeout, TooLarge, Unavailable)

__version__ = "0.1.0"

__all__ = [
    "Client", "Pipeline", "AsyncClient", "AsyncPipeline", "GetOrSetResult", "DEFAULT_SOCKET",
    "DEFAULT_TIMEOUT", "KcacheError", "BadRequest", "NoMethod", "TooLarge", "Unavailable",
    "Timeout", "Backend", "Internal", "LeaseInvalid", "ConnectionError", "ProtocolError",
]
