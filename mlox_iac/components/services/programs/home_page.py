"""The stack's home page: every service with its link and health, the last backup, the
monitoring pages. Standard library only; runs with MLflow's image behind the proxy's basic
auth (which is the page's only protection, so it shows no secret).

- ``LISTING`` (``/mlox/home.json``): what to list, rendered by ``mlox_iac/components/services/home.py``;
- ``BACKUP_STATE`` (``/mlox/backup``, the server's ``/var/lib/mlox-backup`` read-only, mounted
  when the stack backs up): ``status.json``, written by the backup tooling after each run.

``GET /`` is the page (``Accept: application/json``: the same as JSON); ``GET /healthz`` is
the container's health check. Each service is probed on the Compose network, past the
proxy, at most every ``CACHE_S`` seconds, all at once with a short timeout.
"""

from __future__ import annotations

import html
import json
import os
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PORT = int(os.environ.get("PORT", "8080"))
LISTING = Path(os.environ.get("LISTING", "/mlox/home.json"))
BACKUP_STATE = Path(os.environ.get("BACKUP_STATE", "/mlox/backup"))
TIMEOUT_S = float(os.environ.get("PROBE_TIMEOUT_S", "3"))
CACHE_S = 5.0


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # a redirect is an answer: the service is up
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def probe(url: str) -> dict:
    """One service's health, asked directly: up on any answer below 500."""
    started = time.monotonic()
    try:
        with _OPENER.open(urllib.request.Request(url, headers={"User-Agent": "mlox-home"}), timeout=TIMEOUT_S) as r:
            status = r.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return {"up": False, "status": None, "detail": f"no answer: {reason}",
                "ms": round((time.monotonic() - started) * 1000)}
    up = status < 500
    return {"up": up, "status": status, "detail": "ok" if up else f"HTTP {status}",
            "ms": round((time.monotonic() - started) * 1000)}


def backup_state(enabled: bool, now: float) -> dict:
    """The last backup's result and age (from the backup tooling's status file)."""
    if not enabled:
        return {"configured": False, "ok": None, "detail": "no backups configured (mlox:backup)"}
    try:
        state = json.loads((BACKUP_STATE / "status.json").read_text())
    except (OSError, ValueError):
        return {"configured": True, "ok": None, "detail": "no backup yet"}
    last, last_ok = state.get("last") or {}, state.get("last_ok") or {}
    finished = last.get("finished_at")
    out = {"configured": True, "ok": bool(last.get("ok")), "finished_at": finished,
           "age_s": (now - finished) if finished else None, "snapshot": last.get("snapshot"),
           "check": last.get("check")}
    out["detail"] = "ok" if last.get("ok") else f"failed: {last.get('error', 'unknown error')}"
    if last_ok.get("finished_at"):
        out["last_ok_age_s"] = now - last_ok["finished_at"]
    return out


def age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} s"


class Snapshot:
    """The page's data, refreshed at most every CACHE_S seconds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._at = 0.0
        self._data: dict = {}

    def get(self) -> dict:
        with self._lock:
            if time.monotonic() - self._at > CACHE_S:
                self._data = self._collect()
                self._at = time.monotonic()
            return self._data

    def _collect(self) -> dict:
        listing = json.loads(LISTING.read_text())
        routes = listing["routes"]
        with ThreadPoolExecutor(max_workers=max(len(routes), 1)) as pool:
            health = list(pool.map(lambda r: probe(r["probe"]), routes))
        now = time.time()
        services = [{k: v for k, v in r.items() if k != "probe"} | {"health": h} for r, h in zip(routes, health)]
        return {"stack": listing["stack"], "services": services, "internal": listing.get("internal", []),
                "monitoring": listing.get("monitoring", {}), "backup": backup_state(listing.get("backup", False), now),
                "checked_at": now}


STYLE = """body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:60rem;color:#1b1f24;padding:0 1rem}
h1{font-size:1.5rem}table{border-collapse:collapse;width:100%}td,th{padding:.45rem .6rem;border-bottom:1px solid #ddd;
text-align:left}.up{color:#116329;font-weight:600}.down{color:#b42318;font-weight:600}.dot{display:inline-block;
width:.7rem;height:.7rem;border-radius:50%;margin-right:.4rem}.dot.up{background:#1f883d}.dot.down{background:#d1242f}
.dot.unknown{background:#9a9a9a}.muted{color:#667}code{background:#f3f3f3;padding:.1rem .3rem}"""


def render(data: dict, host: str) -> str:
    e = html.escape
    rows = []
    for s in data["services"]:
        h = s["health"]
        state = "up" if h["up"] else "down"
        if s.get("link"):
            where = f'<a href="{e(s["link"])}">{e(s["link"])}</a>'
        elif s.get("address"):  # an API under its own path or host (Feast, a served model)
            address = f"https://{host}{s['address']}" if s["address"].startswith("/") else s["address"]
            where = f'<code>{e(address)}</code> <span class="muted">(API for clients)</span>'
        else:
            where = f'<code>https://{e(host)}</code> <span class="muted">(API for clients: signed requests)</span>'
        rows.append(f'<tr data-service="{e(s["name"])}"><td><span class="dot {state}"></span>{e(s["name"])}</td>'
                    f'<td>{where}</td><td class="{state}">{state}</td><td class="muted">{e(h["detail"])}</td>'
                    f'<td class="muted">{e(s.get("version") or "")}</td></tr>')
    b = data["backup"]
    if b["ok"] is None:
        backup = f'<p id="backup"><span class="dot unknown"></span>{e(b["detail"])}</p>'
    else:
        state = "up" if b["ok"] else "down"
        backup = (f'<p id="backup"><span class="dot {state}"></span>last backup {age(b.get("age_s"))} ago: '
                  f'<span class="{state}">{e(b["detail"])}</span>'
                  + (f', check {e(str(b["check"]))}' if b.get("check") else "")
                  + (f' (snapshot <code>{e(str(b["snapshot"])[:8])}</code>)' if b.get("snapshot") else "") + "</p>")
    monitoring = "".join(f'<li>{e(name.capitalize())}: <a href="{e(link)}">{e(link)}</a></li>'
                         for name, link in data["monitoring"].items() if link)
    monitoring = f"<ul id=\"monitoring\">{monitoring}</ul>" if monitoring else \
        '<p id="monitoring" class="muted">Monitoring is not enabled (mlox:services.monitoring).</p>'
    internal = ", ".join(e(n) for n in data["internal"]) or "none"
    checked = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(data["checked_at"]))
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{e(data["stack"])} · mlox</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head><body>
<h1>Stack {e(data["stack"])}</h1>
<table id="services"><thead><tr><th>service</th><th>address</th><th>health</th><th>detail</th><th>version</th></tr></thead>
<tbody>{"".join(rows)}</tbody></table>
<p class="muted">Internal services (no page of their own): {internal}. Checked {checked}.</p>
<h2>Backups</h2>{backup}
<h2>Monitoring</h2>{monitoring}
</body></html>"""


SNAPSHOT = Snapshot()


class Handler(BaseHTTPRequestHandler):
    server_version = "mlox-home"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path == "/healthz":
            return self._send(200, "text/plain", b"ok\n")
        if self.path != "/":
            return self._send(404, "text/plain", b"not found\n")
        data = SNAPSHOT.get()
        if "application/json" in (self.headers.get("Accept") or ""):
            return self._send(200, "application/json", json.dumps(data).encode())
        host = (self.headers.get("Host") or "").split(",")[0].strip()
        return self._send(200, "text/html; charset=utf-8", render(data, host).encode())

    do_HEAD = do_GET

    def _send(self, status: int, kind: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # the proxy logs requests; keep the health checks out
        pass


def main() -> None:
    ThreadingHTTPServer(("0.0.0.0", PORT), Handler).serve_forever()


if __name__ == "__main__":
    main()
