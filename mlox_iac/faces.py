"""The readers of the services' client faces (each declared in its service's file, beside its
routes: ``base.Face``). Nothing here names a service.

- :func:`env_exports`: what ``mlox-iac env`` exports from a stack's outputs, and
  :func:`is_secret_variable`: which of it is a credential;
- :func:`health_path`: where ``status`` probes a route;
- :func:`inside_settings` and :func:`inside_secrets`: what the stack's own containers that
  run user code (JupyterLab, Airflow, the model server) get: a settings file mounted at
  :data:`INSIDE_PATH` and the credentials in their env files;
- :func:`client_faces`: the copy the ``mlox-client`` package ships (``faces.json``; it cannot
  import this package, which needs Pulumi to deploy). ``python -m mlox_iac.faces`` writes it;
  a unit test fails when it is stale.

Pure, and light: no Pulumi.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlox_iac.components.services.base import Context, Face, Service
from mlox_iac.components.services.registry import SERVICES

# The stack's own settings (not a service's): role -> (variable, source in the outputs).
STACK_SETTINGS: dict[str, tuple[str, str | None]] = {
    "name": ("MLOX_STACK", None),  # the stack's name: from the command line, not the outputs
    "services": ("MLOX_SERVICES", "services"),
    "ca_file": ("MLOX_CA_FILE", None),  # the root to trust: fetched or given, not an output
    "ssh_host": ("MLOX_SSH_HOST", "server_address"),
    "ssh_user": ("MLOX_SSH_USER", "ssh_user"),
    "ssh_port": ("MLOX_SSH_PORT", "ssh_port"),
    # The server's host keys, recorded at its bootstrap ("type base64", comma-separated): the
    # client's tunnel trusts these and nothing else (no trust on first use).
    "ssh_host_keys": ("MLOX_SSH_HOST_KEYS", "ssh_host_keys"),
    "ssh_identity": ("MLOX_SSH_IDENTITY", None),  # the user's key, when given to mlox-iac env --identity
}
# Where the settings file of the stack's containers is in the bundle, and where they see it.
INSIDE_FILE = "client/settings.json"
INSIDE_PATH = "/etc/mlox/client.json"
# The generated copy in the client package.
CLIENT_FACES = Path(__file__).resolve().parent.parent / "client" / "src" / "mlox_client" / "faces.json"
FORMAT = 1
_SECRET = "[secret]"  # a masked output (mlox_iac.connect.SECRET)


def all_faces() -> list[tuple[Service, Face]]:
    """Every service's faces, in registry order."""
    return [(service, face) for service in SERVICES.values() for face in service.faces]


def face_for_route(route: str) -> Face | None:
    return next((face for _, face in all_faces() if face.matches(route)), None)


def health_path(route: str) -> str:
    """The path under a route's URL that ``status`` probes (the root when no face says)."""
    face = face_for_route(route)
    return face.health if face is not None else "/"


# ----- from a stack's outputs (a laptop's view) ------------------------------------------

def resolve(outputs: Mapping[str, Any], source: str | None) -> str | None:
    """The value of a face's source in ``outputs`` as text (lists joined by commas), or None."""
    if source is None:
        return None
    if source.startswith("="):
        return source[1:]
    name, _, key = source.partition(".")
    value = outputs.get(name)
    if key:
        value = _SECRET if value == _SECRET else (value.get(key) if isinstance(value, Mapping) else None)
    if value is None or value == "" or isinstance(value, (Mapping, bool)):
        return None
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def _exported(face: Face, outputs: Mapping[str, Any], route: str | None, services: list[str], owner: str) -> bool:
    """A face with an endpoint is exported when the outputs have it; one without, when its
    service runs."""
    if "url" in face.settings:
        return resolve(outputs, face.source("url", route)) is not None
    return face.route is None and owner in services


def env_exports(outputs: Mapping[str, Any]) -> dict[str, str]:
    """Every face's settings that the outputs hold, as environment variables (secrets as the
    outputs have them: in clear, or ``[secret]`` when masked)."""
    env: dict[str, str] = {}
    services = [str(s) for s in outputs.get("services") or []]
    for role in ("services", "ssh_host", "ssh_user", "ssh_port", "ssh_host_keys"):
        variable, source = STACK_SETTINGS[role]
        value = resolve(outputs, source)
        if value is not None:
            env[variable] = value
    urls = outputs.get("urls") if isinstance(outputs.get("urls"), Mapping) else {}
    for service, face in all_faces():
        routes = sorted(r for r in urls if face.matches(r)) if face.templated else [None]
        for route in routes:
            if not _exported(face, outputs, route, services, service.name):
                continue
            for role in face.settings:
                value = resolve(outputs, face.source(role, route))
                if value is not None:
                    env[face.variable(role, route)] = value
    return env


def _variable_pattern(face: Face, role: str) -> re.Pattern:
    """A ``model-*`` face's variable for any of its routes, as a regular expression."""
    prefix = face.route[:-1].upper().replace("-", "_") if face.route else ""
    before, _, after = face.settings[role][0].partition("{ROUTE}")
    return re.compile(re.escape(before + prefix) + "[A-Z0-9_]*" + re.escape(after))


def secret_variables() -> frozenset[str]:
    """The variables of every fixed face that hold credentials."""
    return frozenset(face.variable(role) for _, face in all_faces() if not face.templated
                     for role in face.settings if face.secret(role))


def is_secret_variable(name: str) -> bool:
    """Whether an exported variable holds a credential (masked unless asked for)."""
    if name in secret_variables():
        return True
    return any(_variable_pattern(face, role).fullmatch(name) for _, face in all_faces() if face.templated
               for role in face.settings if face.secret(role))


def client_secret_names() -> frozenset[str]:
    """The keys of the ``client_secrets`` output: credentials no other output holds."""
    prefix = "client_secrets."
    return frozenset(source[len(prefix):] for _, face in all_faces() for _, source in face.settings.values()
                     if source is not None and source.startswith(prefix))


# ----- inside the stack --------------------------------------------------------------------

def _enabled_faces(ctx: Context) -> list[tuple[Face, str | None]]:
    """The faces of the enabled services, each with its route (one per route for ``model-*``)."""
    out = []
    for name in ctx.config.enabled_services():
        service = SERVICES[name]
        routes = [r.name for r in service.routes(ctx)]
        for face in service.faces:
            for route in ([r for r in routes if face.matches(r)] if face.templated else [face.route]):
                out.append((face, route))
    return out


def inside_secrets(ctx: Context) -> list[str]:
    """The credentials the client containers' env files carry, by variable name: every secret
    setting of an enabled face that a client needs on the Compose network (not the proxy's
    basic-auth password: there is no proxy on the way)."""
    names = [face.variable(role, route) for face, route in _enabled_faces(ctx) for role in face.settings
             if face.secret(role) and not str(face.source(role, route)).startswith("ui_passwords")]
    return list(dict.fromkeys(names))


def inside_settings(ctx: Context) -> str:
    """The settings file of the stack's containers that run user code (no secrets: those
    come from the env files, by the names in ``secrets``)."""
    env = {STACK_SETTINGS["name"][0]: ctx.config.stack_name,
           STACK_SETTINGS["services"][0]: ",".join(ctx.config.enabled_services())}
    for face, route in _enabled_faces(ctx):
        if face.inside is not None:
            for role, value in face.inside(ctx, route).items():
                env[face.variable(role, route)] = value
    document = {"format": FORMAT, "stack": ctx.config.stack_name, "env": env, "secrets": inside_secrets(ctx)}
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def inside_mount() -> str:
    """The compose volume entry that mounts the settings file read-only."""
    return f"./{INSIDE_FILE}:{INSIDE_PATH}:ro"


# ----- the client package's copy -----------------------------------------------------------

def enable_hint(service: Service) -> str:
    """The setting that turns a service on, in words for an error message."""
    enabled = service.settings.model_fields["enabled"].default
    name = f"mlox:services.{service.name}"
    if enabled is False:  # off in every preset
        return f"{name}.enabled: true"
    if service.preset != "core":
        return f"mlox:services.preset: {service.preset} (or {name}.enabled: true)"
    return f"{name}.enabled: true"


def client_faces() -> dict[str, Any]:
    """What the mlox-client package knows of each face (its ``faces.json``)."""
    faces: dict[str, Any] = {}
    for service, face in all_faces():
        if not face.settings:
            continue
        faces[face.key] = {
            "service": service.name,
            "route": face.route,
            "auth": face.auth,
            "extra": face.extra,
            "enable": enable_hint(service),
            "settings": {role: variable for role, (variable, _) in face.settings.items()},
            "secrets": sorted(role for role in face.settings if face.secret(role)),
        }
    stack = {role: variable for role, (variable, _) in STACK_SETTINGS.items()}
    return {"format": FORMAT, "generated_by": "python -m mlox_iac.faces", "inside_path": INSIDE_PATH,
            "stack": stack, "faces": faces}


def render_client_faces() -> str:
    return json.dumps(client_faces(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the client package's ``faces.json`` (``--check``: only say whether it is current)."""
    argv = sys.argv[1:] if argv is None else argv
    text = render_client_faces()
    current = CLIENT_FACES.read_text() if CLIENT_FACES.is_file() else None
    if "--check" in argv:
        print("current" if current == text else f"stale: run python -m mlox_iac.faces to rewrite {CLIENT_FACES}")
        return 0 if current == text else 1
    CLIENT_FACES.write_text(text)
    print(f"wrote {CLIENT_FACES}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
