"""ProgressState from synthetic engine events; ProgressDisplay's line mode for CI logs."""

from __future__ import annotations

import io

from pulumi.automation import EngineEvent
from rich.console import Console

from mlox_iac.cli.progress import ProgressDisplay, ProgressState

SERVER = "urn:pulumi:dev::mlox::mlox:stack:Stack$mlox:server:Server$hcloud:index/server:Server::main-server"
BOOT = "urn:pulumi:dev::mlox::mlox:stack:Stack$mlox:server:Server$command:remote:Command::main-bootstrap"
STACK = "urn:pulumi:dev::mlox::pulumi:pulumi:Stack::mlox-dev"


def event(kind: str, op: str = "create", urn: str = SERVER, type_: str = "hcloud:index/server:Server", **extra) -> EngineEvent:
    if kind == "diagnostic":
        return EngineEvent.from_json({"diagnosticEvent": {"message": extra["message"], "color": "never",
                                                          "severity": extra.get("severity", "error"), "urn": urn}})
    if kind == "summary":
        return EngineEvent.from_json({"summaryEvent": {"resourceChanges": extra["changes"], "durationSeconds": 3}})
    metadata = {"op": op, "urn": urn, "type": type_, "provider": ""}
    key = {"pre": "resourcePreEvent", "done": "resOutputsEvent", "failed": "resOpFailedEvent"}[kind]
    return EngineEvent.from_json({key: {"metadata": metadata}})


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_counts_done_of_total_and_the_current_step():
    clock = Clock()
    state = ProgressState("update", clock=clock)
    state.on_event(event("pre", "same", STACK, "pulumi:pulumi:Stack"))
    state.on_event(event("pre"))
    clock.now += 1
    state.on_event(event("pre", urn=BOOT, type_="command:remote:Command"))
    assert (state.done, state.total) == (0, 3)
    assert state.current.describe() == "creating main-bootstrap (command:remote:Command)"
    finished = state.on_event(event("done", urn=BOOT, type_="command:remote:Command"))
    assert finished.describe(done=True) == "created main-bootstrap (command:remote:Command)"
    assert state.current.name == "main-server"  # a changing step beats the unchanged stack
    clock.now += 64
    assert state.line() == "1/3 resources · creating main-server (hcloud:index/server:Server) · 1:05"
    assert state.counts() == {"create": 1}


def test_expected_total_from_a_preview():
    state = ProgressState("update", expected_total=40)
    state.on_event(event("pre"))
    assert state.total == 40


def test_failures_and_error_diagnostics():
    state = ProgressState("update")
    state.on_event(event("pre"))
    state.on_event(event("diagnostic", message="  creating server: quota exceeded\n"))
    state.on_event(event("diagnostic", message="just info", severity="info"))
    failed = state.on_event(event("failed"))
    assert failed.failed and failed.describe(done=True) == "failed to create main-server (hcloud:index/server:Server)"
    assert state.failed == 1 and state.counts() == {}
    assert state.errors == ["main-server: creating server: quota exceeded"]


def test_summary_event():
    state = ProgressState("preview")
    state.on_event(event("summary", changes={"create": 5, "same": 2, "update": 0}))
    assert state.summary == {"create": 5, "same": 2}


def test_outputs_without_a_pre_event_still_count():
    state = ProgressState("refresh")
    state.on_event(event("done", "refresh"))
    assert (state.done, state.total) == (1, 1)


def test_line_mode_prints_changed_resources_only():
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=False, width=200)
    state = ProgressState("update")
    with ProgressDisplay(console, state, "Deploying dev") as display:
        display.on_event(event("pre", "same", STACK, "pulumi:pulumi:Stack"))
        display.on_event(event("done", "same", STACK, "pulumi:pulumi:Stack"))
        display.on_event(event("pre"))
        display.on_event(event("done"))
    assert buffer.getvalue() == "Deploying dev ...\n  created main-server (hcloud:index/server:Server)\n"


def test_live_mode_renders_the_bar():
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120)
    state = ProgressState("update", expected_total=2)
    with ProgressDisplay(console, state, "Deploying dev") as display:
        display.on_event(event("pre"))
        console.print(display)
    assert "Deploying dev" in buffer.getvalue() and "0/2" in buffer.getvalue()
