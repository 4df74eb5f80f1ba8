"""A small JSON-over-HTTPS client on the standard library, TLS verification always on."""

from __future__ import annotations

import base64
import json
from typing import Any, Mapping

from mlox_client._secret import Secret, reveal
from mlox_client.errors import RemoteError


def ssl_context(ca_file: str | None):
    """Verification against the stack's CA (or the system's roots); never off."""
    import ssl

    return ssl.create_default_context(cafile=ca_file)


def basic_auth(user: str, password: str | Secret) -> str:
    token = base64.b64encode(f"{user}:{reveal(password)}".encode()).decode()
    return f"Basic {token}"


def request(method: str, url: str, *, ca_file: str | None = None, headers: Mapping[str, str] | None = None,
            body: Any = None, data: bytes | None = None, timeout: float = 60) -> tuple[int, bytes]:
    """Send one request; an answer of 400 or more is a :class:`RemoteError` naming the status
    and the URL (never the request's headers)."""
    import urllib.error
    import urllib.request

    headers = dict(headers or {})
    if body is not None:
        data = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    headers.setdefault("Accept", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    context = ssl_context(ca_file) if url.startswith("https:") else None
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read(300).decode(errors="replace").strip().replace("\n", " ")
        raise RemoteError(f"{method} {url}: HTTP {exc.code}{': ' + detail if detail else ''}", exc.code) from None
    except urllib.error.URLError as exc:
        raise RemoteError(f"{method} {url}: {exc.reason}") from None


def request_json(method: str, url: str, **kwargs) -> Any:
    _, payload = request(method, url, **kwargs)
    return json.loads(payload) if payload else None
