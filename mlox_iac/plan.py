"""The offline plan: run the real program for a stack under Pulumi mocks and record
every resource ``pulumi up`` would create (type, name, parent, inputs, dependencies).

No Pulumi CLI, no cloud account and no network are involved. Provider-computed values
(addresses, ids) are stand-ins; generated secrets are stand-ins unless the caller
passes a ``secret_source`` (the end-to-end tests do, to deploy for real).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

SECRET_SIG = "4dabf18193072939515e22adb298388d"
SECRET_VALUE = "1b47061264138c4ac30d75fd1eb44270"
SECRET_MASK = "[secret]"

# Stand-in addresses for provider-computed values (TEST-NET-3, never routed).
PLAN_ADDRESSES = {"hcloud": "203.0.113.10", "digitalocean": "203.0.113.20", "aws": "203.0.113.30"}


@dataclass
class RecordedResource:
    """One resource as the engine would receive it."""

    type: str
    name: str
    urn: str
    parent: str | None
    inputs: dict
    dependencies: list[str] = field(default_factory=list)
    custom: bool = True
    delete_before_replace: bool = False
    protect: bool = False
    replace_on_changes: list[str] = field(default_factory=list)
    ignore_changes: list[str] = field(default_factory=list)


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SECRET_SIG) == SECRET_VALUE


def unwrap(value: Any) -> Any:
    """Inputs with secret wrappers removed (for code that must use the values)."""
    if is_secret(value):
        return unwrap(value.get("value"))
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


def mask(value: Any) -> Any:
    """Inputs with every secret replaced by ``[secret]`` and assets by their description."""
    if is_secret(value):
        return SECRET_MASK
    if isinstance(value, dict):
        return {k: mask(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask(v) for v in value]
    path = getattr(value, "path", None)
    if path is not None and type(value).__module__.startswith("pulumi"):
        return f"{type(value).__name__}({path})"
    return value


def default_secret(name: str, length: int) -> str:
    """A stand-in for a generated password: stable, obviously fake."""
    return ("plan" + hashlib.sha256(name.encode()).hexdigest())[:length]


def default_bcrypt(password: str) -> str:
    return "$2a$10$" + hashlib.sha256(password.encode()).hexdigest()[:53]


# Outputs of the computed values that the real providers mark secret.
SECRET_OUTPUTS = {"privateKeyOpenssh", "privateKeyPem", "result", "bcryptHash"}


def _mocks(secret_source: Callable[[str, int], str], bcrypt: Callable[[str], str],
           computed: Mapping[str, Mapping[str, Any]]):
    import pulumi

    class Mocks(pulumi.runtime.Mocks):
        def new_resource(self, args: pulumi.runtime.MockResourceArgs):
            outputs = dict(args.inputs)
            if not args.custom:
                return f"{args.name}-component", {}
            number = str(int(hashlib.sha256(args.name.encode()).hexdigest()[:7], 16))
            package = args.typ.split(":", 1)[0]
            if args.typ == "random:index/randomPassword:RandomPassword":
                password = secret_source(args.name, int(args.inputs.get("length", 32)))
                outputs["result"] = pulumi.Output.secret(password)
                outputs["bcryptHash"] = pulumi.Output.secret(bcrypt(password))
            elif args.typ == "random:index/randomBytes:RandomBytes":
                import base64

                raw = secret_source(args.name, int(args.inputs.get("length", 32))).encode()
                outputs["base64"] = pulumi.Output.secret(base64.b64encode(raw).decode())
                outputs["hex"] = pulumi.Output.secret(raw.hex())
            elif args.typ == "tls:index/privateKey:PrivateKey":
                outputs["privateKeyOpenssh"] = pulumi.Output.secret("-----BEGIN OPENSSH PRIVATE KEY-----\nplan\n-----END OPENSSH PRIVATE KEY-----\n")
                outputs["publicKeyOpenssh"] = f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAplan{number} mlox-deploy"
            elif args.typ in ("hcloud:index/server:Server", "digitalocean:index/droplet:Droplet"):
                outputs["ipv4Address"] = PLAN_ADDRESSES[package]
            elif args.typ == "digitalocean:index/sshKey:SshKey":
                outputs["fingerprint"] = hashlib.md5(str(args.inputs.get("publicKey")).encode()).hexdigest()
            elif args.typ == "aws:ec2/eip:Eip":
                outputs["publicIp"] = PLAN_ADDRESSES["aws"]
            elif args.typ == "aws:ec2/instance:Instance":
                outputs.setdefault("availabilityZone", "eu-central-1a")
            elif args.typ == "aws:ec2/keyPair:KeyPair":
                outputs["keyName"] = args.name
            elif args.typ == "aws:ebs/volume:Volume":
                return f"vol-0{number:0>16}", outputs
            for key, value in (computed.get(args.typ) or {}).items():
                outputs[key] = pulumi.Output.secret(value) if key in SECRET_OUTPUTS else value
            return number if package in ("hcloud", "digitalocean") else f"{args.name}-id", outputs

        def call(self, args: pulumi.runtime.MockCallArgs):
            if args.token == "aws:ec2/getAmi:getAmi":
                return {"id": "ami-0123456789abcdef0", "name": "debian-12-amd64-plan", "architecture": "x86_64"}
            return {}

    return Mocks()


def _monitor(mocks, recorded: list[RecordedResource], loops: set):
    from pulumi.runtime import rpc
    from pulumi.runtime.mocks import MockMonitor
    from pulumi.runtime.sync_await import _ensure_event_loop

    class RecordingMonitor(MockMonitor):
        # The mock monitor runs in worker threads and gives each its own event loop; they
        # are collected here and closed after the run (left open, they make noise at exit).
        def Invoke(self, request):
            response = super().Invoke(request)
            loops.add(_ensure_event_loop())
            return response

        def RegisterResource(self, request):
            response = super().RegisterResource(request)
            loops.add(_ensure_event_loop())
            if request.type != "pulumi:pulumi:Stack":
                inputs = rpc.deserialize_properties(request.object, keep_unknowns=True)
                recorded.append(RecordedResource(
                    type=request.type,
                    name=request.name,
                    urn=response.urn,
                    parent=request.parent or None,
                    inputs=dict(inputs),
                    dependencies=sorted(set(request.dependencies)),
                    custom=bool(request.custom),
                    delete_before_replace=bool(request.deleteBeforeReplace),
                    protect=bool(request.protect),
                    replace_on_changes=list(request.replaceOnChanges),
                    ignore_changes=list(request.ignoreChanges),
                ))
            return response

    return RecordingMonitor(mocks)


def flatten_config(raw: dict[str, Any]) -> dict[str, str]:
    """``mlox:`` settings as Pulumi passes config to a program: strings, objects as JSON."""
    return {f"mlox:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()}


def record_program(
    raw: dict[str, Any],
    secret_keys: set[str],
    stack: str,
    *,
    secret_source: Callable[[str, int], str] = default_secret,
    bcrypt: Callable[[str], str] = default_bcrypt,
    computed: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[list[RecordedResource], dict[str, Any]]:
    """Run the program under mocks; return the recorded resources and the stack outputs.

    ``computed`` replaces provider-computed outputs by resource type (e.g. a cloud server's
    ``ipv4Address`` or the deploy key): the end-to-end tests put mocked cloud servers on
    their real target hosts this way."""
    import pulumi
    from pulumi.runtime import config as rc
    from pulumi.runtime import settings
    from pulumi.runtime.mocks import test as run_test

    from mlox_iac.program import program

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    settings.ROOT.set(None)
    # Pulumi marks a whole top-level key secret when any value inside it is secure.
    rc.set_all_config(flatten_config(raw), sorted({"mlox:" + k.split(".")[0].split("[")[0] for k in secret_keys}))
    recorded: list[RecordedResource] = []
    mocks = _mocks(secret_source, bcrypt, computed or {})
    worker_loops: set = set()
    pulumi.runtime.set_mocks(mocks, project="mlox", stack=stack, preview=False,
                             monitor=_monitor(mocks, recorded, worker_loops))
    outputs: dict[str, Any] = {}
    original_export = pulumi.export

    def capture(name: str, value: Any) -> None:
        outputs[name] = value
        original_export(name, value)

    pulumi.export = capture
    try:
        run_test(program)()
        resolved = {}
        for key, value in outputs.items():
            resolved[key] = _resolve(value)
    finally:
        pulumi.export = original_export
        rc.set_all_config({}, [])
        for other in worker_loops - {loop}:
            if not other.is_running() and not other.is_closed():
                other.close()
        loop.close()
    _check_unique(recorded)
    return recorded, resolved


def _resolve(value: Any) -> Any:
    """The plain value of an output (secrets unwrapped; callers mask them)."""
    import pulumi
    from pulumi.runtime.sync_await import _sync_await

    output = pulumi.Output.from_input(value)

    async def get():
        return await output.future(with_unknowns=True), await output.is_secret()

    plain, secret = _sync_await(get())
    return {SECRET_SIG: SECRET_VALUE, "value": plain} if secret else plain


def _check_unique(recorded: list[RecordedResource]) -> None:
    """The real engine rejects duplicate URNs; the mocks do not."""
    seen: set[str] = set()
    for r in recorded:
        if r.urn in seen:
            raise RuntimeError(f"duplicate resource {r.type} {r.name!r}")
        seen.add(r.urn)


def plan_stack_file(path: Path) -> tuple[list[RecordedResource], dict[str, Any]]:
    """Validate a stack file, then record its program. Raises ConfigError on bad input."""
    from mlox_iac.config.loader import read_stack_file, stack_name_of, validate

    raw, secret = read_stack_file(path)
    validate(raw, secret, str(path), stack_name_of(path))  # first: nothing runs on bad input
    return record_program(raw, secret, stack_name_of(path))
