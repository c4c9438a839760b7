"""HTTP Basic authentication against web.password (user `admin`), read live on every request."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from aiohttp import web

USER = "admin"
REALM = 'Basic realm="Inference Engine console", charset="UTF-8"'


def _digest(value: str) -> bytes:
    # Comparing fixed-length digests keeps the comparison's time independent of lengths too.
    return hashlib.sha256(value.encode("utf-8")).digest()


def credentials_ok(header: str | None, password: str) -> bool:
    """True when `password` is empty (console open) or the Authorization header carries it."""
    if not password:
        return True
    user, given = "", ""
    if header and header[:6].lower() == "basic ":
        try:
            user, _, given = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            user, given = "", ""
    user_ok = hmac.compare_digest(_digest(user), _digest(USER))
    password_ok = hmac.compare_digest(_digest(given), _digest(password))
    return user_ok & password_ok


def challenge() -> web.HTTPUnauthorized:
    """The 401 that makes a browser ask for the password."""
    return web.HTTPUnauthorized(text="401: password required", headers={"WWW-Authenticate": REALM})
