"""Airflow 3: trigger a DAG with its conf, wait for the run, read its state and task logs,
through the REST API (``/api/v2``) and the JWT that ``/auth/token`` gives the stack's admin
(no extra: the standard library's HTTP)."""

from __future__ import annotations

import time
from typing import Any, Mapping
from urllib.parse import quote

from mlox_client import _http
from mlox_client._secret import reveal
from mlox_client.errors import RemoteError
from mlox_client.stack import Service, Stack

FINISHED = ("success", "failed")


class RunFailed(RemoteError):
    """A DAG run that ended in ``failed``."""


class Pipelines(Service):
    """The stack's Airflow."""

    FACE = "airflow"

    def __init__(self, stack: Stack) -> None:
        super().__init__(stack)
        self._token: str | None = None

    def __repr__(self) -> str:
        return f"<mlox_client.Pipelines {self.url}>"

    @property
    def url(self) -> str:
        return str(self._value("url")).rstrip("/")

    def _login(self) -> str:
        answer = _http.request_json("POST", self.url + "/auth/token", ca_file=self._stack.settings.ca_file, body={
            "username": str(self._value("user")), "password": reveal(self._value("password"))})
        return answer["access_token"]

    def api(self, method: str, path: str, body: Any = None, *, accept: str = "application/json",
            timeout: float = 60) -> Any:
        """One call of the REST API (``path`` under ``/api/v2``), logging in first or again."""
        for attempt in (1, 2):
            if self._token is None:
                self._token = self._login()
            headers = {"Authorization": f"Bearer {self._token}", "Accept": accept}
            try:
                return _http.request_json(method, f"{self.url}/api/v2{path}", ca_file=self._stack.settings.ca_file,
                                          headers=headers, body=body, timeout=timeout)
            except RemoteError as error:
                if error.status != 401 or attempt == 2:
                    raise
                self._token = None  # expired: log in again
        raise AssertionError("unreachable")

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None, *, unpause: bool = True) -> str:
        """Start a run of ``dag_id`` with ``conf``; its run id. New DAGs start paused: ``unpause``."""
        dag = quote(dag_id, safe="")
        if unpause:
            self.api("PATCH", f"/dags/{dag}", {"is_paused": False})
        run = self.api("POST", f"/dags/{dag}/dagRuns", {"logical_date": None, "conf": dict(conf or {})})
        return run["dag_run_id"]

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        """The run as the API has it (``state``, dates, ``conf``)."""
        return self.api("GET", f"/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}")

    def state(self, dag_id: str, run_id: str) -> str:
        return self.run(dag_id, run_id)["state"]

    def wait(self, dag_id: str, run_id: str, *, timeout: float = 1800, poll: float = 5, check: bool = True) -> str:
        """Wait for the run to finish; its state. With ``check`` a failed run raises
        :class:`RunFailed` naming the failed tasks."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                state = self.state(dag_id, run_id)
            except RemoteError as error:
                if error.status is not None and error.status < 500:
                    raise
                state = "unknown"  # a busy API server: not finished yet
            if state in FINISHED:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the run {run_id} of {dag_id} is still {state} after {timeout:.0f}s")
            time.sleep(poll)
        if state == "failed" and check:
            failed = [t["task_id"] for t in self.tasks(dag_id, run_id) if t.get("state") == "failed"]
            raise RunFailed(f"the run {run_id} of {dag_id} failed (tasks: {', '.join(failed) or 'none'}); "
                            f"stack.airflow.task_logs({dag_id!r}, {run_id!r}) has their logs")
        return state

    def tasks(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        answer = self.api("GET", f"/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}/taskInstances")
        return answer.get("task_instances", [])

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
        """One task try's log as text (Airflow 3 serves structured events; their messages, in order)."""
        path = (f"/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}/taskInstances/"
                f"{quote(task_id, safe='')}/logs/{try_number}")
        answer = self.api("GET", path)
        content = answer.get("content", []) if isinstance(answer, dict) else answer
        if isinstance(content, str):
            return content
        return "\n".join(str(e.get("event", "")) if isinstance(e, dict) else str(e) for e in content)

    def task_logs(self, dag_id: str, run_id: str) -> dict[str, str]:
        """Every task's log of the run (its last try), by task id; "" for a task that never
        started (upstream_failed, skipped: Airflow has no log, nor a try, for it)."""
        return {t["task_id"]: self.task_log(dag_id, run_id, t["task_id"], int(t["try_number"]))
                if t.get("try_number") else "" for t in self.tasks(dag_id, run_id)}
