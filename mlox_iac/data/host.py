"""The server as the data modules see it: commands, compose, env files, progress events.

Runs on the server (as root). ``plan`` is the bundle's ``backup/plan.json``, rendered from
the services' ``Data`` declarations by ``mlox_iac/render/backup.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence


class DataError(Exception):
    """A failed data step, with a one-line reason a user can act on."""


def read_env_file(path: str | Path) -> dict[str, str]:
    """``KEY='value'`` lines as written by the stack's env files (see base.env_line)."""
    values: dict[str, str] = {}
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror} (is the stack deployed?)") from None
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep or key.startswith("#"):
            continue
        if len(value) >= 2 and value[0] == value[-1] == "'":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def diff_manifests(expected: Mapping[str, Any], actual: Mapping[str, Any], *, changed: Callable[[Any, Any], str],
                   name: Callable[[str], str] = str, limit: int = 5) -> list[str]:
    """One line per entry that is missing, extra or changed (at most ``limit``, then a count)."""
    problems = []
    for key in sorted(set(expected) | set(actual)):
        if key not in actual:
            problems.append(f"{name(key)}: missing")
        elif key not in expected:
            problems.append(f"{name(key)}: not in the backup")
        elif expected[key] != actual[key]:
            problems.append(f"{name(key)}: {changed(expected[key], actual[key])}")
    if len(problems) > limit:
        return problems[:limit] + [f"... and {len(problems) - limit} more"]
    return problems


def last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


class Host:
    """Runs commands on this server; every data module goes through it."""

    def __init__(self, plan: Mapping[str, Any], emit: Callable[[dict], None] | None = None):
        self.plan = plan
        self.compose = list(plan["compose"])
        self.data_dir = Path(plan["data_dir"])
        self._emit = emit or (lambda event: None)

    # ---- progress
    def progress(self, phase: str, message: str, **extra: Any) -> None:
        self._emit({"event": "progress", "phase": phase, "message": message, "time": time.time(), **extra})

    # ---- commands
    def run(self, argv: Sequence[str], *, input: str | bytes | None = None, env: Mapping[str, str] | None = None,
            stdin=None, stdout=None, check: bool = True, text: bool = True, what: str = "") -> subprocess.CompletedProcess:
        full_env = {**os.environ, **(env or {})}
        if stdin is None and input is None:
            stdin = subprocess.DEVNULL  # never read the caller's terminal or ssh channel
        done = subprocess.run(list(argv), input=input, stdin=stdin, stdout=stdout if stdout is not None else subprocess.PIPE,
                              stderr=subprocess.PIPE, env=full_env, text=text)
        if check and done.returncode != 0:
            err = done.stderr if isinstance(done.stderr, str) else (done.stderr or b"").decode(errors="replace")
            raise DataError(f"{what or argv[0]} failed (exit {done.returncode}): {last_line(err) or 'no message'}")
        return done

    def compose_run(self, *args: str, what: str = "") -> subprocess.CompletedProcess:
        return self.run([*self.compose, *args], what=what or f"docker compose {args[0]}")

    def compose_exec(self, service: str, argv: Sequence[str], **kw) -> subprocess.CompletedProcess:
        return self.run([*self.compose, "exec", "-T", service, *argv], **kw)

    @staticmethod
    def docker_argv(image: str, argv: Sequence[str], *, env: Mapping[str, str], mounts: Sequence[str] = (),
                    network: str | None = None, name: str | None = None) -> list[str]:
        """``docker run --rm`` with ``env`` passed by name only (values never on a command line):
        run it with ``env`` in the environment."""
        cmd = ["docker", "run", "--rm", "-i"]
        if name:
            cmd += ["--name", name]
        if network:
            cmd += ["--network", network]
        for key in sorted(env):
            cmd += ["-e", key]
        for mount in mounts:
            cmd += ["-v", mount]
        return [*cmd, image, *argv]

    def docker_run(self, image: str, argv: Sequence[str], *, env: Mapping[str, str], mounts: Sequence[str] = (),
                   network: str | None = None, what: str = "", **kw) -> subprocess.CompletedProcess:
        """:meth:`docker_argv`, run to completion."""
        return self.run(self.docker_argv(image, argv, env=env, mounts=mounts, network=network), env=env,
                        what=what or image, **kw)

    def postgres_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run where the Postgres client tools reach the database: in the stack's
        postgres container, or in the plan's ``container`` (the helper that reaches an external
        server, see ``parts.py``)."""
        container = self.plan["postgres"].get("container")
        if container:
            return ["docker", "exec", "-i", container, *argv]
        return [*self.compose, "exec", "-T", self.plan["postgres"]["service"], *argv]

    def with_plan(self, **changes: Any) -> "Host":
        """This host with parts of its plan replaced (another store or Postgres server)."""
        other = type(self).__new__(type(self))
        other.__dict__.update(self.__dict__)
        other.plan = {**self.plan, **changes}
        return other

    def compose_stop(self, services: Sequence[str]) -> None:
        if services:
            self.compose_run("stop", *services, what="stopping " + ", ".join(services))

    def compose_up(self, *services: str, recreate: bool = False, timeout: float = 600) -> None:
        """``docker compose up -d`` (the whole stack, or ``services`` alone with ``--no-deps``),
        then wait until every container it covers is running and passes its healthcheck."""
        args = ["up", "-d", *(["--no-deps"] if services else []), *(["--force-recreate"] if recreate else []), *services]
        self.compose_run(*args, what="starting " + (", ".join(services) if services else "the stack"))
        self.wait_ready(services, timeout)

    def wait_ready(self, services: Sequence[str] = (), timeout: float = 600) -> None:
        """Wait until the containers of ``services`` (all of the project's without) run and are healthy.

        Docker runs a container's first healthcheck one ``interval`` after it starts (10 s
        for most services here), so ``compose up --wait`` waits at least that long for a
        service that was ready in three. Here each container still starting gets its own
        healthcheck command run by ``docker exec`` about every second: it counts as ready
        as soon as that command passes, as Docker would find at its next check. A container
        that exits, restarts or is reported unhealthy fails at once, naming it.
        """
        deadline = time.monotonic() + timeout
        restarts: dict[str, int] = {}
        ready: set[str] = set()
        while True:
            ids = self.compose_run("ps", "-a", "-q", *services, what="listing the stack's containers").stdout.split()
            if not ids:
                raise DataError("no container to wait for" + (f" (services {', '.join(services)})" if services else ""))
            waiting = []
            for info in json.loads(self.run(["docker", "inspect", *ids], what="inspecting the stack's containers").stdout):
                cid, state = info["Id"], info["State"]
                name = (info["Config"].get("Labels") or {}).get("com.docker.compose.service") or info["Name"].lstrip("/")
                first = restarts.setdefault(cid, info.get("RestartCount", 0))
                if cid in ready:
                    continue
                if state.get("Status") != "running" or info.get("RestartCount", 0) > first:
                    logs = self.run(["docker", "logs", "--tail", "5", cid], check=False)
                    raise DataError(f"service {name} did not stay up ({state.get('Status')}, exit code "
                                    f"{state.get('ExitCode')}): {last_line(logs.stderr or logs.stdout) or 'no log'}")
                health = (state.get("Health") or {}).get("Status")
                test = (info["Config"].get("Healthcheck") or {}).get("Test") or []
                if health is None or health == "healthy" or not test or test[0] == "NONE":
                    ready.add(cid)
                elif health == "unhealthy":
                    raise DataError(f"service {name} is unhealthy")
                else:
                    waiting.append((cid, name, test))
            for cid, name, test in waiting:
                argv = test[1:] if test[0] == "CMD" else ["/bin/sh", "-c", test[1]]
                try:
                    probe = subprocess.run(["docker", "exec", cid, *argv], stdin=subprocess.DEVNULL,
                                           capture_output=True, timeout=10)
                except subprocess.TimeoutExpired:
                    continue
                if probe.returncode == 0:
                    ready.add(cid)
            if all(cid in ready for cid in ids):
                return
            if time.monotonic() > deadline:
                names = sorted(name for cid, name, _ in waiting if cid not in ready)
                raise DataError(f"{', '.join(names) or 'the stack'} did not become healthy within {timeout:.0f} s")
            time.sleep(1)


def emit_json(event: dict) -> None:
    """Progress for ``mlox-iac``: one JSON object per line on stdout, flushed at once.

    When the caller has gone (its ssh connection dropped, or the user interrupted
    ``mlox-iac``), the work goes on to its end instead of stopping halfway: stdout and stderr
    then lead to /dev/null and later events are dropped. A restore still verifies and starts
    the stack, and records how it ended in the backup state, which ``status`` reports."""
    try:
        sys.stdout.write(json.dumps(event, sort_keys=True) + "\n")
        sys.stdout.flush()
    except OSError:  # EPIPE: nobody reads any more; from now on the writes go to /dev/null
        devnull = os.open(os.devnull, os.O_WRONLY)
        for stream in (sys.stdout, sys.stderr):
            try:
                os.dup2(devnull, stream.fileno())
            except (OSError, ValueError):
                pass
        os.close(devnull)
