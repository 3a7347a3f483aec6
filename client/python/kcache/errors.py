# SPDX-License-Identifier: MIT
"""Exceptions of the kcache client.

Every failure is a KcacheError carrying a `code`: kcached's wire code
(proto/PROTOCOL.md section 5) for an error reply, or a local code for what
went wrong on this side ("CONNECTION", "PROTOCOL", and "TIMEOUT" when the
client's own deadline passed). Each code has its class, so callers can catch
what they care about; a code newer than this library becomes a plain
KcacheError (the protocol says: treat it as a server error).
"""

__all__ = [
    "KcacheError", "BadRequest", "NoMethod", "TooLarge", "Unavailable", "Timeout", "Backend",
    "Internal", "LeaseInvalid", "ConnectionError", "ProtocolError", "error_from_reply",
]


class KcacheError(Exception):
    """A failed kcache call. `code` is the wire code (or a local one), `message`
    a human-readable detail, `http_status` what an application should answer."""

    code = "SERVER"
    http_status = 500

    def __init__(self, code=None, message=""):
        if code is not None:
            self.code = code
        self.message = message
        super().__init__(self.code, message)

    def __str__(self):
        return f"{self.code}: {self.message}" if self.message else self.code

    def __repr__(self):
        return f"{type(self).__name__}({self.code!r}, {self.message!r})"


class BadRequest(KcacheError):
    code = "BAD_REQUEST"
    http_status = 400


class NoMethod(KcacheError):
    code = "NO_METHOD"
    http_status = 501


class TooLarge(KcacheError):
    code = "TOO_LARGE"
    http_status = 413


class Unavailable(KcacheError):
    """kcached reached no Redis node (answered at once, without waiting)."""
    code = "UNAVAILABLE"
    http_status = 503


class Timeout(KcacheError):
    """kcached's TIMEOUT, or the call's own deadline passing here (`local` is
    then True)."""
    code = "TIMEOUT"
    http_status = 504

    def __init__(self, code=None, message="", local=False):
        super().__init__(code, message)
        self.local = local


class Backend(KcacheError):
    code = "BACKEND"
    http_status = 502


class Internal(KcacheError):
    code = "INTERNAL"
    http_status = 500


class LeaseInvalid(KcacheError):
    code = "LEASE_INVALID"
    http_status = 409


class ConnectionError(KcacheError):  # noqa: A001 - kcache.ConnectionError, on purpose
    """kcached could not be reached or the connection broke during the call:
    a local failure (no socket, refused, reset). The next call reconnects."""
    code = "CONNECTION"
    http_status = 503


class ProtocolError(ConnectionError):
    """kcached sent something this client does not understand; the connection
    was closed."""
    code = "PROTOCOL"
    http_status = 502


_BY_CODE = {c.code: c for c in (BadRequest, NoMethod, TooLarge, Unavailable, Timeout, Backend,
                                Internal, LeaseInvalid)}


def error_from_reply(err):
    """The exception for the `error` element of a response."""
    if isinstance(err, dict):
        code = err.get("code")
        message = err.get("message")
    else:
        code, message = None, None
    if not isinstance(code, str):
        return ProtocolError(None, f"malformed error object: {err!r}")
    if not isinstance(message, str):
        message = "" if message is None else repr(message)
    cls = _BY_CODE.get(code)
    if cls is None:
        return KcacheError(code, message)
    return cls(code, message)
