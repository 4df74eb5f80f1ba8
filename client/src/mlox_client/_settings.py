"""Where a stack's settings come from, and what each service's face says they mean.

The settings are always a flat mapping of environment variables (what ``mlox-iac env``
exports), whichever way they arrive:

1. ``connect("prod")`` / ``connect(profile=PATH)``: the caller names the stack or the file;
2. the process environment, when ``MLOX_STACK`` is set (``eval "$(mlox-iac env ...)"``);
3. a profile file, ``$XDG_CONFIG_HOME/mlox/<stack>.json`` (``mlox-iac env --write-profile``);
4. inside the stack's own containers: the settings file the stack mounts at
   ``/etc/mlox/client.json``, with the credentials in the container's environment.

Which variable holds what comes from ``faces.json``, generated from the services' own
declarations in mlox-iac (``python -m mlox_iac.faces``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

from mlox_client._secret import Secret
from mlox_client.errors import NotConfigured, NotInStack, ProfileError, SettingMissing

_FACES: dict[str, Any] | None = None
PROFILE_FORMAT = 1


def faces() -> dict[str, Any]:
    """The services' client faces (``faces.json``, read once)."""
    global _FACES
    if _FACES is None:
        _FACES = json.loads((Path(__file__).parent / "faces.json").read_text())
    return _FACES


def inside_path() -> Path:
    """Where the stack's containers see their settings file (``MLOX_CLIENT_SETTINGS`` overrides)."""
    return Path(os.environ.get("MLOX_CLIENT_SETTINGS") or faces()["inside_path"])


def profile_dir() -> Path:
    """``$XDG_CONFIG_HOME/mlox`` (default ``~/.config/mlox``; on Windows ``%APPDATA%/mlox``):
    where ``mlox-iac env --write-profile`` writes profiles."""
    if os.name == "nt" and os.environ.get("APPDATA"):
        return Path(os.environ["APPDATA"]) / "mlox"
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "mlox"


def profile_path(stack: str) -> Path:
    """The profile of a stack (the name as ``mlox-iac env`` writes it)."""
    return profile_dir() / (re.sub(r"[^A-Za-z0-9._-]", "_", stack) + ".json")


class Settings:
    """One stack's settings: its name, where they came from (for messages: "environment
    variables", "profile PATH", "the stack's settings file PATH"), and the variables, which
    no repr shows."""

    __slots__ = ("stack", "source", "env", "inside")

    def __init__(self, stack: str, source: str, env: Mapping[str, str], inside: bool = False) -> None:
        self.stack = stack
        self.source = source
        self.env = env
        self.inside = inside

    def __repr__(self) -> str:
        return f"Settings(stack={self.stack!r}, source={self.source!r})"

    def variable(self, role: str) -> str:
        """The stack-level variable of ``role`` (``services``, ``ca_file``, ``ssh_host``...)."""
        return faces()["stack"][role]

    def get(self, role: str) -> str | None:
        return self.env.get(self.variable(role)) or None

    @property
    def services(self) -> tuple[str, ...] | None:
        """The services the stack runs (None when the settings do not say)."""
        listed = self.get("services")
        return tuple(s for s in listed.split(",") if s) if listed is not None else None

    @property
    def ca_file(self) -> str | None:
        """The root certificate to trust (None: the system's roots, as with a public domain)."""
        return None if self.inside else self.get("ca_file")

    def face(self, key: str) -> dict[str, Any]:
        """A face, after checking that the stack runs its service."""
        face = faces()["faces"][key]
        services = self.services
        if services is not None and face["service"] not in services:
            raise NotInStack(f"the stack {self.stack!r} does not run {face['service']}: set {face['enable']} "
                             "in its stack file and run mlox-iac up")
        return face

    def value(self, key: str, role: str, *, route: str | None = None, required: bool = True) -> str | Secret | None:
        """A face's setting: plain text, or a :class:`Secret` for a credential.

        ``route`` names one route of a face of many (``model-*``: ``model-churn``).
        """
        face = self.face(key)
        variable = fill(face["settings"][role], route)
        value = self.env.get(variable)
        if value in (None, ""):
            if not required:
                return None
            fix = ("the container's env file lacks it: run mlox-iac up" if self.inside else
                   "run mlox-iac up if the stack predates it, then export the settings again "
                   "(mlox-iac env --show-secrets, or --write-profile)")
            raise SettingMissing(f"{variable} is not set in {self.source}: {fix}")
        return Secret(value) if role in face["secrets"] else value

    def routes(self, key: str) -> list[str]:
        """The routes of a face of many (``model-*``) that the settings hold."""
        face = self.face(key)
        prefix = face["route"][:-1]
        before, _, after = face["settings"]["url"].partition("{ROUTE}")
        upper = prefix.upper().replace("-", "_")
        pattern = re.compile(re.escape(before) + "(" + re.escape(upper) + "[A-Z0-9_]*)" + re.escape(after))
        found = (pattern.fullmatch(name) for name in self.env)
        return sorted(m.group(1).lower().replace("_", "-") for m in found if m)


def fill(template: str, route: str | None) -> str:
    if route is None:
        return template
    return template.replace("{route}", route).replace("{ROUTE}", route.upper().replace("-", "_"))


# ----- the four sources ----------------------------------------------------------------

def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ProfileError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    try:
        document = json.loads(text)
    except ValueError:
        raise ProfileError(f"{what} {path} is not JSON: write it again with mlox-iac env --write-profile") from None
    if not (isinstance(document, dict) and isinstance(document.get("env"), dict)
            and isinstance(document.get("stack"), str)):
        raise ProfileError(f"{what} {path} is not an mlox profile: write it again with mlox-iac env --write-profile")
    if document.get("format", PROFILE_FORMAT) > PROFILE_FORMAT:
        raise ProfileError(f"{what} {path} is of a newer format: upgrade mlox-client")
    return document


def read_profile(path: str | os.PathLike) -> Settings:
    """A profile file; refused when other users may read it (it holds credentials)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ProfileError(f"profile {path} does not exist: write it with mlox-iac env --stack STACK --write-profile")
    if os.name != "nt":
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise ProfileError(f"profile {path} can be read by other users (mode {mode:o}); it holds credentials: "
                               f"chmod 600 {path}")
    document = _read_json(path, "profile")
    env = {str(k): str(v) for k, v in document["env"].items()}
    return Settings(document["stack"], f"profile {path}", env)


def from_environment(environ: Mapping[str, str] | None = None) -> Settings | None:
    """The process environment, when it names a stack (``MLOX_STACK``)."""
    environ = os.environ if environ is None else environ
    variable = faces()["stack"]["name"]
    name = environ.get(variable)
    if not name:
        return None
    return Settings(name, "environment variables", dict(environ))


def from_inside(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings | None:
    """Inside a stack container: the settings file, with the credentials from the environment
    (the container's env file), by the names the file lists."""
    path = inside_path() if path is None else path
    if not path.is_file():
        return None
    environ = os.environ if environ is None else environ
    document = _read_json(path, "the stack's settings file")
    env = {name: environ[name] for name in document.get("secrets", []) if environ.get(name)}
    env.update({str(k): str(v) for k, v in document["env"].items()})
    return Settings(document["stack"], f"the stack's settings file {path}", env, inside=True)


def _profiles() -> list[Path]:
    directory = profile_dir()
    return sorted(directory.glob("*.json")) if directory.is_dir() else []


def resolve(stack: str | None = None, profile: str | os.PathLike | None = None) -> Settings:
    """The settings, from the first source that applies (see the module's docstring)."""
    if profile is not None:
        settings = read_profile(profile)
        if stack is not None and settings.stack != stack:
            raise ProfileError(f"profile {profile} is for the stack {settings.stack!r}, not {stack!r}")
        return settings
    env = from_environment()
    if env is not None and (stack is None or env.stack == stack):
        return env
    if stack is not None:
        path = profile_path(stack)
        if path.is_file():
            return read_profile(path)
    else:
        found = _profiles()
        if len(found) == 1:
            return read_profile(found[0])
        if len(found) > 1:
            names = ", ".join(p.stem for p in found)
            raise NotConfigured(f"several profiles in {profile_dir()} ({names}): say which, e.g. "
                                f"mlox_client.connect({found[0].stem!r})")
    inside = from_inside()
    if inside is not None and (stack is None or inside.stack == stack):
        return inside
    raise NotConfigured(_nothing_found(stack, env, inside))


def _nothing_found(stack: str | None, env: Settings | None, inside: Settings | None) -> str:
    name = stack or "STACK"
    variable = faces()["stack"]["name"]
    which = f"the stack {stack!r}" if stack else "a stack"
    found_env = f"{variable} is {env.stack!r}" if env is not None else f"{variable} is not set"
    found_profile = (f"no {profile_path(stack).name}" if stack else "none") + f" in {profile_dir()}"
    found_inside = (f"{inside_path()} is for the stack {inside.stack!r}" if inside is not None
                    else f"no {inside_path()}")
    return (f"mlox-client found no settings for {which}. It looks, in order, at:\n"
            f"  1. connect({name!r}) or connect(profile=PATH): "
            f"{'no profile or settings of that name' if stack else 'neither given'};\n"
            f"  2. environment variables: {found_env} "
            f"(set them with: eval \"$(mlox-iac env --stack {name} --show-secrets)\");\n"
            f"  3. profiles: {found_profile} (write one with: mlox-iac env --stack {name} --write-profile);\n"
            f"  4. inside the stack's containers (JupyterLab, Airflow tasks, served models): {found_inside}.")
