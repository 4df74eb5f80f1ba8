"""Long actions (up, preview, backup, restore, a move) run as jobs: a thread each, whose
progress lines the page follows as Server-Sent Events while it runs.

An engine job turns the Automation API's events into the CLI's progress lines
(:class:`mlox_iac.cli.progress.ProgressState`, the same counting as ``mlox-iac up``) and, for
a preview, into a diff per resource (:func:`step_diff`). One job per stack at a time, as the
engine itself allows.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from mlox_iac.ui.backend import error_line

MAX_VALUE = 240  # characters of one property value shown in a diff


@dataclass
class Job:
    """One running or finished action."""

    id: str
    stack: str
    action: str
    twin: str
    lines: list[dict] = field(default_factory=list)  # {"kind": "line"|"diff"|"progress", ...}
    state: str = "running"  # running | done | failed
    result: Any = None
    error: Optional[str] = None
    started: float = field(default_factory=time.time)
    finished: Optional[float] = None
    changed: threading.Condition = field(default_factory=threading.Condition, repr=False)

    def add(self, kind: str, **data: Any) -> None:
        with self.changed:
            self.lines.append({"kind": kind, **data})
            self.changed.notify_all()

    def say(self, text: str) -> None:
        self.add("line", text=text)

    def end(self, state: str, result: Any = None, error: Optional[str] = None) -> None:
        with self.changed:
            self.state, self.result, self.error, self.finished = state, result, error, time.time()
            self.changed.notify_all()

    def follow(self, start: int = 0, wait: float = 15.0):
        """Yield (index, item) from ``start`` on; a ``{"kind": "end"}`` item when the job ends.
        Waits up to ``wait`` s for news, then yields ``None`` (a keep-alive)."""
        index = start
        while True:
            with self.changed:
                if index >= len(self.lines) and self.state == "running":
                    self.changed.wait(wait)
                fresh = self.lines[index:]
                state = self.state
            for item in fresh:
                yield index, item
                index += 1
            if state != "running" and index >= len(self.lines):
                yield index, {"kind": "end", "state": state, "error": self.error}
                return
            if not fresh:
                yield index, None


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= MAX_VALUE else text[:MAX_VALUE] + f"… ({len(text)} characters)"


def _lookup(inputs: Any, path: str) -> Any:
    """A value by a Pulumi property path (``environment.FOO``, ``ports[0]``); ``None`` if absent."""
    import re

    value = inputs
    for part in re.findall(r"[^.\[\]]+", path):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def step_diff(metadata) -> Optional[dict]:
    """A preview step as a diff: the resource, its operation, and ``-``/``+`` per changed
    property (values as the engine reports them: secrets stay ``[secret]``). None: unchanged."""
    op = str(getattr(metadata.op, "value", metadata.op))
    if op in ("same", "read", "refresh"):
        return None
    old = (metadata.old.inputs if metadata.old is not None else None) or {}
    new = (metadata.new.inputs if metadata.new is not None else None) or {}
    keys = list(metadata.detailed_diff or {}) or list(metadata.diffs or [])
    if not keys and op in ("create", "delete"):
        keys = sorted(new if op == "create" else old)
    rows = []
    for key in keys:
        before, after = _lookup(old, key), _lookup(new, key)
        if op != "create" and before is not None:
            rows.append(("-", key, _short(before)))
        if op != "delete" and after is not None:
            rows.append(("+", key, _short(after)))
        if before is None and after is None:
            rows.append(("~", key, "(computed when applied)"))
    return {"urn": metadata.urn, "name": metadata.urn.rsplit("::", 1)[-1], "type": metadata.type, "op": op, "rows": rows}


class Jobs:
    """Every job of this UI process, by id; one running job per stack."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def get(self, job_id: str) -> Optional[Job]:
        return self._jobs.get(job_id)

    def for_stack(self, stack: str) -> list[Job]:
        return [j for j in self._jobs.values() if j.stack == stack]

    def running(self, stack: str) -> Optional[Job]:
        return next((j for j in self._jobs.values() if j.stack == stack and j.state == "running"), None)

    def start(self, stack: str, action: str, twin: str, work: Callable[[Job], Any]) -> Job:
        """Run ``work(job)`` in a thread; refuse while another job of the stack runs."""
        with self._lock:
            busy = self.running(stack)
            if busy is not None:
                from mlox_iac.errors import MloxError

                raise MloxError(f"stack {stack} is busy: {busy.action} is running (job {busy.id})")
            job = Job(str(next(self._ids)), stack, action, twin)
            self._jobs[job.id] = job

        def run() -> None:
            try:
                result = work(job)
            except BaseException as error:  # every failure ends the job with its one line
                job.end("failed", error=error_line(error) if isinstance(error, Exception) else "interrupted")
            else:
                job.end("done", result)

        threading.Thread(target=run, name=f"mlox-ui-job-{job.id}", daemon=True).start()
        return job


def engine_events(job: Job, operation: str, diffs: bool) -> Callable:
    """An ``on_event`` for the Automation API: progress lines (as the CLI counts them) and,
    for a preview, each changed resource's diff."""
    from mlox_iac.cli.progress import ProgressState

    state = ProgressState(operation)

    def on_event(event) -> None:
        finished = state.on_event(event)
        if diffs and event.resource_pre_event is not None:
            diff = step_diff(event.resource_pre_event.metadata)
            if diff is not None:
                job.add("diff", **diff)
        if finished is not None and (finished.op != "same" or finished.failed):
            planned = operation == "preview" and not finished.failed
            job.say(f"would {finished.op} {finished.name} ({finished.type})" if planned else finished.describe(done=True))
        if event.diagnostic_event is not None and event.diagnostic_event.severity == "error":
            message = (event.diagnostic_event.message or "").strip()
            if message and not event.diagnostic_event.ephemeral:
                job.say(f"error: {message}")
        job.add("progress", done=state.done, total=state.total, line=state.line())

    return on_event
