"""Live progress of an engine operation, fed by the Automation API's engine events.

:class:`ProgressState` is the pure part (events in, counts out) and is tested with
synthetic ``EngineEvent``s; :class:`ProgressDisplay` draws it with rich: a live line on a
terminal, one line per changed resource otherwise (CI logs).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:
    from pulumi.automation import EngineEvent
    from rich.console import Console

DOING = {
    "create": "creating", "update": "updating", "delete": "deleting", "replace": "replacing",
    "create-replacement": "creating replacement", "delete-replaced": "deleting replaced",
    "read": "reading", "read-replacement": "reading", "refresh": "refreshing", "import": "importing",
    "discard": "forgetting", "same": "checking",
}
DONE = {
    "create": "created", "update": "updated", "delete": "deleted", "replace": "replaced",
    "create-replacement": "created replacement", "delete-replaced": "deleted replaced",
    "read": "read", "read-replacement": "read", "refresh": "refreshed", "import": "imported",
    "discard": "forgot", "same": "unchanged",
}


def resource_name(urn: str) -> str:
    """The resource's own name: the part of the URN after the last ``::``."""
    return urn.rsplit("::", 1)[-1] if urn else "?"


@dataclass
class Step:
    """One resource step the engine announced."""

    urn: str
    type: str
    op: str
    started: float
    finished: Optional[float] = None
    failed: bool = False

    @property
    def name(self) -> str:
        return resource_name(self.urn)

    def describe(self, done: bool = False) -> str:
        verb = ("failed to " + self.op) if self.failed else (DONE if done else DOING).get(self.op, self.op)
        return f"{verb} {self.name} ({self.type})"


class ProgressState:
    """What an operation has done so far, from its engine events. Thread-safe: the
    Automation API calls :meth:`on_event` from its event-watcher thread."""

    def __init__(self, operation: str, expected_total: int | None = None, clock: Callable[[], float] = time.monotonic):
        self.operation = operation
        self.expected_total = expected_total
        self._clock = clock
        self.started_at = clock()
        self.steps: dict[str, Step] = {}
        self.errors: list[str] = []
        self.summary: dict[str, int] | None = None
        self._lock = threading.Lock()

    def on_event(self, event: "EngineEvent") -> Optional[Step]:
        """Take one event; return the step it finished, if any."""
        with self._lock:
            now = self._clock()
            if event.resource_pre_event is not None:
                md = event.resource_pre_event.metadata
                self.steps[md.urn] = Step(md.urn, md.type, str(getattr(md.op, "value", md.op)), now)
            elif event.res_outputs_event is not None:
                return self._finish(event.res_outputs_event.metadata, now, failed=False)
            elif event.res_op_failed_event is not None:
                return self._finish(event.res_op_failed_event.metadata, now, failed=True)
            elif event.diagnostic_event is not None:
                diag = event.diagnostic_event
                message = (diag.message or "").strip()
                if diag.severity == "error" and message and not diag.ephemeral:
                    where = f"{resource_name(diag.urn)}: " if diag.urn else ""
                    self.errors.append(where + message)
            elif event.summary_event is not None:
                changes = event.summary_event.resource_changes or {}
                self.summary = {str(getattr(k, "value", k)): int(v) for k, v in changes.items() if v}
        return None

    def _finish(self, md, now: float, failed: bool) -> Step:
        step = self.steps.get(md.urn)
        if step is None:  # an outputs event without a pre event: count it anyway
            step = self.steps[md.urn] = Step(md.urn, md.type, str(getattr(md.op, "value", md.op)), now)
        step.finished = now
        step.failed = failed
        return step

    @property
    def total(self) -> int:
        return max(self.expected_total or 0, len(self.steps))

    @property
    def done(self) -> int:
        return sum(1 for s in self.steps.values() if s.finished is not None)

    @property
    def failed(self) -> int:
        return sum(1 for s in self.steps.values() if s.failed)

    @property
    def current(self) -> Optional[Step]:
        """The most recently started unfinished step that changes something (else any)."""
        running = [s for s in self.steps.values() if s.finished is None]
        changing = [s for s in running if s.op != "same"]
        pool = changing or running
        return max(pool, key=lambda s: s.started) if pool else None

    @property
    def elapsed(self) -> float:
        return self._clock() - self.started_at

    def counts(self) -> dict[str, int]:
        """Finished steps by operation (what the summary would say so far)."""
        out: dict[str, int] = {}
        for step in self.steps.values():
            if step.finished is not None and not step.failed:
                out[step.op] = out.get(step.op, 0) + 1
        return out

    def line(self) -> str:
        """One line: ``12/40 resources · creating main-server (hcloud:...) · 1:23``."""
        current = self.current
        doing = current.describe() if current else "waiting for the engine"
        return f"{self.done}/{self.total} resources · {doing} · {format_elapsed(self.elapsed)}"


def format_elapsed(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


class ProgressDisplay:
    """Draws a :class:`ProgressState` on ``console`` while an operation runs.

    Use as a context manager and pass :meth:`on_event` to the automation function.
    """

    def __init__(self, console: "Console", state: ProgressState, title: str, enabled: bool = True):
        self.console = console
        self.state = state
        self.title = title
        self.enabled = enabled
        self._live = None

    def __enter__(self) -> "ProgressDisplay":
        if self.enabled and self.console.is_terminal:
            from rich.live import Live

            self._live = Live(self, console=self.console, refresh_per_second=4, transient=True)
            self._live.__enter__()
        elif self.enabled:
            self.console.print(f"{self.title} ...")
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None

    def on_event(self, event: "EngineEvent") -> None:
        finished = self.state.on_event(event)
        if self.enabled and self._live is None and finished is not None and (finished.op != "same" or finished.failed):
            self.console.print(f"  {finished.describe(done=True)}", markup=False)

    def __rich__(self):
        from rich.progress_bar import ProgressBar
        from rich.spinner import Spinner
        from rich.table import Table
        from rich.text import Text

        if not hasattr(self, "_spinner"):
            self._spinner = Spinner("dots")
        state = self.state
        grid = Table.grid(padding=(0, 1))
        bar = ProgressBar(total=max(state.total, 1), completed=state.done, width=30)
        grid.add_row(self._spinner, Text(self.title, style="bold"), bar,
                     Text(f"{state.done}/{state.total}"), Text(format_elapsed(state.elapsed), style="dim"))
        current = state.current
        grid.add_row("", Text(current.describe() if current else "waiting for the engine", style="dim"), "", "", "")
        return grid
