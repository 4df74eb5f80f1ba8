"""A recording ``PulumiCommand`` test double: what the Automation API would run, and canned answers.

It never starts a process. Each call is recorded as (args, cwd, env); answers imitate the
Pulumi CLI closely enough for ``pulumi.automation`` to parse them: stack select/init, config
set, up/preview/refresh/destroy (writing the given engine events to ``--event-log``), stack
output and stack history.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pulumi import automation as auto
from pulumi.automation._cmd import CommandResult
from pulumi.automation.errors import create_command_error
from semver import VersionInfo

# Older than 3.205 so the Automation API reads engine events from a log file, which the
# double writes; newer CLIs stream them over gRPC.
VERSION = "3.200.0"


@dataclass
class Call:
    args: list[str]
    cwd: str
    env: dict[str, str]

    @property
    def verb(self) -> str:
        """``stack select``, ``up``, ``config set``, ... (the first words of args)."""
        words = [a for a in self.args if not a.startswith("-")]
        return " ".join(words[:2]) if words and words[0] in ("stack", "config") else (words[0] if words else "")


def step(op: str, urn: str, type_: str) -> list[dict]:
    """The pre and outputs events of one resource step."""
    metadata = {"op": op, "urn": urn, "type": type_, "provider": ""}
    return [{"resourcePreEvent": {"metadata": metadata}}, {"resOutputsEvent": {"metadata": metadata}}]


def urn(name: str, type_: str = "command:remote:Command") -> str:
    return f"urn:pulumi:dev::mlox::mlox:stack:Stack${type_}::{name}"


@dataclass
class RecordingPulumiCommand(auto.PulumiCommand):
    """Records every call; answers from ``stacks``, ``outputs``, ``events`` and ``fail``."""

    stacks: set[str] = field(default_factory=set)
    outputs: dict[str, Any] = field(default_factory=dict)
    secret_outputs: set[str] = field(default_factory=set)
    events: list[dict] = field(default_factory=list)
    changes: dict[str, int] = field(default_factory=lambda: {"create": 2})
    fail: dict[str, str] = field(default_factory=dict)  # verb -> stderr of a failure
    config: dict[str, str] = field(default_factory=dict)  # key -> value of `config get` (decrypted)
    calls: list[Call] = field(default_factory=list)

    def __post_init__(self) -> None:
        # No super().__init__(): it would run `pulumi version`.
        self.command = "pulumi"
        self.version = VersionInfo.parse(VERSION)

    def run(self, args, cwd, additional_env, on_output=None, on_error=None) -> CommandResult:
        call = Call(list(args), cwd, dict(additional_env))
        self.calls.append(call)
        stack = args[args.index("--stack") + 1] if "--stack" in args else None
        if call.verb in self.fail:
            if "--event-log" in args:  # a failed operation still ends its event log
                with open(args[args.index("--event-log") + 1], "a", encoding="utf-8") as log:
                    log.write(json.dumps({"sequence": 0, "timestamp": 0, "cancelEvent": {}}) + "\n")
            raise create_command_error(CommandResult("", self.fail[call.verb], 255))
        if call.verb == "stack select":
            if stack not in self.stacks:
                raise create_command_error(CommandResult("", f"error: no stack named '{stack}' found", 255))
        elif call.verb == "stack init":
            self.stacks.add(args[2])
        elif call.verb in ("up", "preview", "refresh", "destroy"):
            if "--event-log" in args:
                self._write_events(args[args.index("--event-log") + 1], call.verb)
        elif call.verb == "stack output":
            shown = {k: (v if "--show-secrets" in args or k not in self.secret_outputs else "[secret]")
                     for k, v in self.outputs.items()}
            return CommandResult(json.dumps(shown), "", 0)
        elif call.verb == "config get":
            key = next(a for a in args[2:] if not a.startswith("-") and a != stack)
            if key not in self.config:
                raise create_command_error(CommandResult("", f"error: configuration key '{key}' not found for stack '{stack}'", 255))
            return CommandResult(json.dumps({"value": self.config[key], "secret": True}), "", 0)
        elif call.verb == "stack export":
            prefix = f"urn:pulumi:{stack}::mlox::mlox:stack:Stack$mlox:server:Server$command:remote:Command::"
            resources = [{"urn": prefix + name} for name in ("main-bootstrap", "main-bundle-compose-up")]
            return CommandResult(json.dumps({"version": 3, "deployment": {"resources": resources}}), "", 0)
        elif call.verb == "stack history":
            return CommandResult(json.dumps([self._history(call)]), "", 0)
        return CommandResult("", "", 0)

    def _write_events(self, path: str, verb: str) -> None:
        events = list(self.events)
        if verb == "preview":  # the Automation API requires a summary event from a preview
            events.append({"summaryEvent": {"resourceChanges": self.changes, "durationSeconds": 1}})
        events.append({"cancelEvent": {}})  # the engine's last event; it ends the log watcher
        with open(path, "a", encoding="utf-8") as log:
            for i, event in enumerate(events):
                log.write(json.dumps({"sequence": i, "timestamp": 0, **event}) + "\n")

    def _history(self, call: Call) -> dict:
        return {
            "kind": "update", "startTime": "2025-01-01T00:00:00.000000Z", "endTime": "2025-01-01T00:01:00.000000Z",
            "message": "", "environment": {}, "config": {}, "result": "succeeded", "version": 1,
            "resourceChanges": self.changes,
        }

    def verbs(self) -> list[str]:
        return [c.verb for c in self.calls]

    def call(self, verb: str) -> Call:
        return next(c for c in self.calls if c.verb == verb)
