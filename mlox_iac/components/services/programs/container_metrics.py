"""Prometheus metrics of the Compose project's containers, read from Docker's own files.

cAdvisor cannot be had here and Docker's ``metrics-addr`` reports only the engine, so
this reads, read-only and without the Docker socket (which would give root on the host):

- ``/host/docker/containers/<id>/config.v2.json`` and ``hostconfig.json``: name, Compose
  service, running, health status, memory limit (dockerd rewrites them on every change);
- the container's cgroup under ``/host/cgroup`` (v1 ``memory/docker/<id>``, or v2
  ``system.slice/docker-<id>.scope`` / ``docker/<id>``): memory working set (usage minus
  inactive file pages, as cAdvisor and ``docker stats`` count it) and CPU time.

Serves ``/metrics`` on port 9101 (env ``PORT``). Standard library only.
"""

from __future__ import annotations

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

DOCKER = Path(os.environ.get("DOCKER_DIR", "/host/docker"))
CGROUP = Path(os.environ.get("CGROUP_DIR", "/host/cgroup"))
PROJECT = os.environ.get("COMPOSE_PROJECT", "mlox")


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _stat(text: str | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


def cgroup_usage(cid: str) -> tuple[int | None, float | None]:
    """(memory working set in bytes, CPU seconds) of a container, or None where not found."""
    for base in (CGROUP / "system.slice" / f"docker-{cid}.scope", CGROUP / "docker" / cid):  # v2
        current = _read(base / "memory.current")
        if current is not None:
            inactive = _stat(_read(base / "memory.stat")).get("inactive_file", 0)
            cpu = _stat(_read(base / "cpu.stat")).get("usage_usec")
            return max(int(current) - inactive, 0), (cpu / 1e6 if cpu is not None else None)
    memory = cpu = None
    for base in (CGROUP / "memory" / "docker" / cid, CGROUP / "memory" / "system.slice" / f"docker-{cid}.scope"):  # v1
        usage = _read(base / "memory.usage_in_bytes")
        if usage is not None:
            inactive = _stat(_read(base / "memory.stat")).get("total_inactive_file", 0)
            memory = max(int(usage) - inactive, 0)
            break
    for controller in ("cpuacct", "cpu,cpuacct", "cpu"):
        for base in (CGROUP / controller / "docker" / cid, CGROUP / controller / "system.slice" / f"docker-{cid}.scope"):
            usage = _read(base / "cpuacct.usage")
            if usage is not None:
                return memory, int(usage) / 1e9
    return memory, cpu


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def collect() -> str:
    """The metrics page for every container of the Compose project."""
    lines = [
        "# HELP mlox_container_running 1 if the container is running.",
        "# TYPE mlox_container_running gauge",
        "# HELP mlox_container_healthy 1 if its health check passes, 0 if not (absent without a health check).",
        "# TYPE mlox_container_healthy gauge",
        "# HELP mlox_container_memory_bytes Memory working set (usage minus inactive file pages).",
        "# TYPE mlox_container_memory_bytes gauge",
        "# HELP mlox_container_memory_limit_bytes Memory limit (0: none).",
        "# TYPE mlox_container_memory_limit_bytes gauge",
        "# HELP mlox_container_cpu_seconds_total CPU time used.",
        "# TYPE mlox_container_cpu_seconds_total counter",
    ]
    rows: list[str] = []
    for path in sorted(DOCKER.glob("containers/*/config.v2.json")):
        try:
            config = json.loads(path.read_text())
            host = json.loads(_read(path.parent / "hostconfig.json") or "{}")
        except (OSError, ValueError):
            continue  # being rewritten right now: it is back on the next scrape
        labels = (config.get("Config") or {}).get("Labels") or {}
        if labels.get("com.docker.compose.project") != PROJECT or labels.get("com.docker.compose.oneoff") == "True":
            continue
        cid = config.get("ID", path.parent.name)
        state = config.get("State") or {}
        tags = f'service="{_label(labels.get("com.docker.compose.service", ""))}",container="{_label(config.get("Name", "").lstrip("/"))}"'
        rows.append(f"mlox_container_running{{{tags}}} {1 if state.get('Running') else 0}")
        health = (state.get("Health") or {}).get("Status")
        if health:
            rows.append(f"mlox_container_healthy{{{tags}}} {1 if health == 'healthy' else 0}")
        rows.append(f"mlox_container_memory_limit_bytes{{{tags}}} {int(host.get('Memory') or 0)}")
        if state.get("Running"):
            memory, cpu = cgroup_usage(cid)
            if memory is not None:
                rows.append(f"mlox_container_memory_bytes{{{tags}}} {memory}")
            if cpu is not None:
                rows.append(f"mlox_container_cpu_seconds_total{{{tags}}} {cpu:.6f}")
    return "\n".join(lines + rows) + "\n"


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path != "/metrics":
            self.send_error(404)
            return
        body = collect().encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # scraped every 15 s: no access log
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "9101"))), Handler).serve_forever()
