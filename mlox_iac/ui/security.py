"""The UI's guard: loopback only, a random token, CSRF protection on every change.

- The server binds to 127.0.0.1 (``mlox_iac.cli.ui_cmd``) and answers only requests whose
  ``Host`` is that address or ``localhost`` on its port (a page elsewhere cannot reach it by
  pointing a DNS name at 127.0.0.1).
- The URL printed and opened carries a random token (``?token=``, as Jupyter does). The first
  request with it gets the token in an ``HttpOnly; SameSite=Strict`` cookie and is sent on
  to the same URL without it (so it leaves the address bar and the history); every later
  request must carry the cookie. Anything else is refused with 403.
- Every state-changing request (POST) must carry the CSRF token (a hidden form field or the
  ``X-CSRF-Token`` header; derived from the session token, so it is useless elsewhere) and,
  when the browser sends one, an ``Origin`` of this server.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlencode

COOKIE = "mlox_ui"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"


def new_token() -> str:
    """A fresh session token: 256 random bits."""
    return secrets.token_urlsafe(32)


class Guard:
    """Checks every request against the session's token."""

    def __init__(self, token: str, port: int):
        self.token = token
        self.port = port
        self.csrf = hmac.new(token.encode(), b"mlox-ui-csrf", hashlib.sha256).hexdigest()

    def hosts(self) -> set[str]:
        return {f"127.0.0.1:{self.port}", f"localhost:{self.port}"}

    def host_ok(self, host: str | None) -> bool:
        return (host or "") in self.hosts()

    def origin_ok(self, origin: str | None) -> bool:
        return origin is None or origin in {f"http://{h}" for h in self.hosts()}

    def token_ok(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def csrf_ok(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.csrf.encode())

    def url(self, path: str = "/") -> str:
        """The address to open: with the token, once."""
        return f"http://127.0.0.1:{self.port}{path}?{urlencode({'token': self.token})}"
