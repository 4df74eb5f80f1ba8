"""The importable API the ``mlox-iac`` CLI is built on, for scripts and CI.

Every function works on a stack of the project on disk: a local-program
``LocalWorkspace`` whose work dir is the project (``Pulumi.yaml`` at its root, stack
files in ``stacks/``), so ``pulumi up --stack X`` and :func:`up` run the same program.

Defaults that need no Pulumi Cloud account:

- State backend: ``file://<project>/.mlox/state``, unless ``PULUMI_BACKEND_URL`` is set,
  ``Pulumi.yaml`` names a ``backend.url``, or the user is logged in (``pulumi login``
  wrote a current backend to ``$PULUMI_HOME/credentials.json``, or ``PULUMI_ACCESS_TOKEN``
  is set).
- Secrets: new stacks use the ``passphrase`` secrets provider (``MLOX_SECRETS_PROVIDER``
  overrides it). The passphrase comes from ``PULUMI_CONFIG_PASSPHRASE`` or
  ``PULUMI_CONFIG_PASSPHRASE_FILE``; without either, a ``passphrase_prompt`` callback is
  asked (the CLI asks on a terminal), else :class:`MloxError` says how to set it.

Without the Pulumi CLI every engine function raises :class:`PulumiCliMissing` naming the
install step. Tests inject a ``pulumi_command`` (an ``auto.PulumiCommand`` test double).

Example (what ``examples/ci/deploy.yml`` runs)::

    from mlox_iac import automation

    automation.validate_stack("prod")
    print(automation.preview("prod").changes)
    result = automation.up("prod", on_event=print)
    print(result.outputs["urls"])
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

import yaml

from mlox_iac.errors import ConfigError, MloxError, PulumiCliMissing
from mlox_iac.paths import stack_file

if TYPE_CHECKING:
    from pulumi import automation as auto

    from mlox_iac.config.model import StackConfig

STATE_DIR = Path(".mlox") / "state"
SECRET = "[secret]"
DEFAULT_SECRETS_PROVIDER = "passphrase"
PASSPHRASE_VARS = ("PULUMI_CONFIG_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE_FILE")
# Stack-file keys in which Pulumi keeps how the stack's secrets are encrypted.
ENCRYPTION_KEYS = ("secretsprovider", "encryptionsalt", "encryptedkey")

OnEvent = Callable[["auto.EngineEvent"], Any]
# Asked for the passphrase when no variable provides one; True when the stack is new
# (a prompt should then ask twice).
PassphrasePrompt = Callable[[bool], str]


class Redacted(str):
    """A string whose ``repr`` hides it (``LocalWorkspace.__repr__`` prints its env vars)."""

    def __repr__(self) -> str:
        return repr(SECRET)


class EngineError(MloxError):
    """A Pulumi CLI command failed; the message is its first error line."""


class Aborted(MloxError):
    """The user declined to go on; nothing was changed."""


@dataclass
class RunResult:
    """What one engine operation did.

    ``changes`` counts resources by operation (``create``, ``update``, ``delete``,
    ``replace``, ``same``, ...). ``outputs`` are the stack outputs afterwards (empty for
    preview and destroy); values of secret outputs are ``"[secret]"`` unless asked for.
    """

    operation: str  # "update" | "preview" | "refresh" | "destroy"
    stack: str
    changes: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    secret_outputs: list[str] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def changed(self) -> int:
        """How many resources were (or would be) touched: everything but ``same``."""
        return sum(n for op, n in self.changes.items() if op != "same")

    def to_dict(self) -> dict[str, Any]:
        return {
            "operation": self.operation, "stack": self.stack, "changes": dict(self.changes),
            "outputs": self.outputs, "secret_outputs": list(self.secret_outputs),
            "duration_s": round(self.duration_s, 1),
        }


# ----- where things are ---------------------------------------------------------------

def find_project_dir(start: Path | None = None, env: Mapping[str, str] | None = None) -> Path:
    """The project: ``MLOX_PROJECT_DIR``, else the nearest directory at or above ``start``
    (default: cwd) that holds ``Pulumi.yaml``."""
    env = os.environ if env is None else env
    if env.get("MLOX_PROJECT_DIR"):
        return Path(env["MLOX_PROJECT_DIR"]).resolve()
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "Pulumi.yaml").is_file():
            return candidate
    raise MloxError("no Pulumi.yaml here or above: run mlox-iac inside the project, or set MLOX_PROJECT_DIR")


def validate_stack(stack: str, *, project_dir: Path | None = None) -> "StackConfig":
    """Load and validate the stack's file; raise :class:`ConfigError` (exit 2) on problems."""
    from mlox_iac.config.loader import load_file

    project_dir = project_dir or find_project_dir()
    return load_file(stack_file(project_dir, stack))


def validate_for_engine(stack: str, *, project_dir: Path) -> "StackConfig":
    """:func:`validate_stack`, and on mlox-iac's own backend also that the stack's secrets
    can be decrypted (see :func:`_require_decryptable_secrets`)."""
    config = validate_stack(stack, project_dir=project_dir)
    if backend_url(project_dir) is not None:
        _require_decryptable_secrets(project_dir, stack)
    return config


def require_stack_file(project_dir: Path, stack: str) -> Path:
    path = stack_file(project_dir, stack)
    if not path.is_file():
        shown = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
        raise MloxError(f"{shown}: file not found (create it with: mlox-iac init --stack {stack})")
    return path


# ----- workspace settings -------------------------------------------------------------

def _pulumi_home(env: Mapping[str, str]) -> Path:
    return Path(env["PULUMI_HOME"]) if env.get("PULUMI_HOME") else Path.home() / ".pulumi"


def logged_in(env: Mapping[str, str] | None = None) -> bool:
    """Whether the user chose a backend with ``pulumi login`` (or has a Pulumi Cloud token)."""
    env = os.environ if env is None else env
    if env.get("PULUMI_ACCESS_TOKEN"):
        return True
    try:
        credentials = json.loads((_pulumi_home(env) / "credentials.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(isinstance(credentials, dict) and credentials.get("current"))


def _project_document(project_dir: Path) -> dict[str, Any]:
    path = project_dir / "Pulumi.yaml"
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except OSError:
        raise MloxError(f"{path}: file not found (is {project_dir} the mlox-iac project?)") from None
    except (ValueError, yaml.YAMLError) as exc:
        raise MloxError(f"{path}: not valid YAML: {exc}") from None
    return document if isinstance(document, dict) else {}


def backend_url(project_dir: Path, env: Mapping[str, str] | None = None) -> str | None:
    """The backend mlox-iac sets, or None when the user's own Pulumi settings choose it."""
    env = os.environ if env is None else env
    if env.get("PULUMI_BACKEND_URL"):
        return None
    backend = _project_document(project_dir).get("backend")
    if isinstance(backend, dict) and backend.get("url"):
        return None
    if logged_in(env):
        return None
    return (project_dir / STATE_DIR).resolve().as_uri()


def _stack_document(project_dir: Path, stack: str) -> dict[str, Any]:
    try:
        document = yaml.safe_load(stack_file(project_dir, stack).read_text()) or {}
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    return document if isinstance(document, dict) else {}


def needs_passphrase(project_dir: Path, stack: str, secrets_provider: str, *, own_backend: bool = True) -> bool:
    """Whether the stack's secrets are (or, once created, will be) passphrase-encrypted.

    An existing stack says so in its file (``encryptionsalt``, ``secretsprovider``). A stack
    without either is new on mlox-iac's own backend; on a backend the user chose it may live
    there already with that backend's secrets manager, so Pulumi decides (and asks itself).
    """
    document = _stack_document(project_dir, stack)
    provider = document.get("secretsprovider")
    if provider:
        return str(provider).startswith("passphrase")
    if document.get("encryptionsalt"):
        return True
    if document.get("encryptedkey"):
        return False
    return own_backend and secrets_provider == "passphrase"


def _secure_keys(config: Mapping[str, Any]) -> list[str]:
    """The config keys (``--path`` form) whose values are ``secure:`` ciphertexts."""
    found: list[str] = []

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict):
            if set(value) == {"secure"}:
                found.append(path)
                return
            for key, item in value.items():
                walk(item, f"{path}.{key}")
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, f"{path}[{index}]")

    for key, value in config.items():
        walk(value, str(key))
    return found


def _require_decryptable_secrets(project_dir: Path, stack: str) -> None:
    """Stop before the engine when the stack file holds ``secure:`` values but none of the
    encryption settings that made them (an example's placeholder): on mlox-iac's own backend
    nothing can decrypt them, and Pulumi would fail with "validating stack config: bad value"
    after writing a new encryption salt into the file."""
    document = _stack_document(project_dir, stack)
    if any(document.get(key) for key in ENCRYPTION_KEYS):
        return
    config = document.get("config")
    keys = _secure_keys(config) if isinstance(config, dict) else []
    if keys:
        path = stack_file(project_dir, stack)
        shown = path.relative_to(project_dir) if path.is_relative_to(project_dir) else path
        raise ConfigError([
            f"{shown}: {key}: a placeholder, not a secret of this stack (the file has no encryptionsalt); "
            f"set yours with: pulumi config set --secret --path '{key}' --stack {stack}"
            for key in keys
        ])


def workspace_options(
    project_dir: Path,
    stack: str,
    *,
    pulumi_command: Optional["auto.PulumiCommand"] = None,
    passphrase_prompt: Optional[PassphrasePrompt] = None,
    env: Mapping[str, str] | None = None,
) -> "auto.LocalWorkspaceOptions":
    """The ``LocalWorkspaceOptions`` every operation on ``stack`` uses.

    ``work_dir`` is the project; the program is the project on disk. Project settings are
    not passed: ``LocalWorkspace`` would rewrite ``Pulumi.yaml`` with them, and it reads the
    file anyway. ``env_vars`` holds only what mlox-iac decides (the default backend, the
    passphrase when it came from a prompt or must be passed on); everything else reaches
    the CLI through the inherited environment.
    """
    from pulumi import automation as auto

    env = os.environ if env is None else env
    project_dir = Path(project_dir).resolve()
    env_vars: dict[str, str] = {"PULUMI_SKIP_UPDATE_CHECK": "true"}
    url = backend_url(project_dir, env)
    if url is not None:
        (project_dir / STATE_DIR).mkdir(parents=True, exist_ok=True)
        env_vars["PULUMI_BACKEND_URL"] = url
    if "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION" not in env and plugins_at_hand(project_dir, stack, env,
                                                                                   own_backend=url is not None):
        env_vars["PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION"] = "true"
    secrets_provider = env.get("MLOX_SECRETS_PROVIDER") or DEFAULT_SECRETS_PROVIDER
    own = sandbox_passphrase(project_dir, stack)
    if own is not None:  # a sandbox's own, whatever passphrase the user's other stacks use
        env_vars["PULUMI_CONFIG_PASSPHRASE"] = Redacted(own)
    elif "PULUMI_CONFIG_PASSPHRASE" in env:  # an empty passphrase is allowed when set explicitly
        env_vars["PULUMI_CONFIG_PASSPHRASE"] = Redacted(env["PULUMI_CONFIG_PASSPHRASE"])
    elif env.get("PULUMI_CONFIG_PASSPHRASE_FILE"):
        env_vars["PULUMI_CONFIG_PASSPHRASE_FILE"] = env["PULUMI_CONFIG_PASSPHRASE_FILE"]
    elif needs_passphrase(project_dir, stack, secrets_provider, own_backend=url is not None):
        if passphrase_prompt is None:
            raise MloxError(
                f"stack {stack} keeps its secrets encrypted with a passphrase: set PULUMI_CONFIG_PASSPHRASE "
                "(or PULUMI_CONFIG_PASSPHRASE_FILE with the path of a file holding it), or run on a terminal to be asked"
            )
        new = not _stack_document(project_dir, stack).get("encryptionsalt")
        env_vars["PULUMI_CONFIG_PASSPHRASE"] = Redacted(passphrase_prompt(new))
    return auto.LocalWorkspaceOptions(
        work_dir=str(project_dir),
        env_vars=env_vars,
        secrets_provider=secrets_provider,
        pulumi_command=pulumi_command,
    )


def plugins_at_hand(project_dir: Path, stack: str, env: Mapping[str, str], *, own_backend: bool) -> bool:
    """Whether every resource plugin the stack can need is in Pulumi's plugin cache already.

    The engine otherwise tries to download a plugin for each provider SDK installed beside
    the program (``pulumi-aws``, ``pulumi-digitalocean``), whatever the stack uses: without
    internet that is about 2.5 s of retries in every preview, update and refresh; with it, a
    download of plugins the stack never runs. Needed: the base plugins, the provider's of
    ``mlox:provider`` and of a move's ``to``, and those of resources in the stack's state
    (an old server still to delete). Only for the project's own file backend, whose state
    can be read here; anything missing or unknown leaves the engine's downloads on.
    """
    from mlox_iac import plugins

    if not own_backend:
        return False
    config = _stack_document(project_dir, stack).get("config") or {}
    migration = config.get("mlox:migration") if isinstance(config, dict) else None
    named = {config.get("mlox:provider"), migration.get("to") if isinstance(migration, dict) else None}
    folder = project_dir / STATE_DIR / ".pulumi" / "stacks" / str(_project_document(project_dir).get("name", ""))
    if (folder / f"{stack}.json.gz").exists():
        return False
    try:
        state = (folder / f"{stack}.json").read_text()
    except FileNotFoundError:
        state = ""
    except OSError:
        return False
    needed = dict(plugins.BASE_PLUGINS)
    for provider, (name, dist) in plugins.PROVIDER_PLUGINS.items():
        if provider in named or f"pulumi:providers:{name}" in state:
            needed[name] = dist
    return plugins.all_in_cache(needed, env)


def sandbox_passphrase(project_dir: Path, stack: str) -> str | None:
    """The passphrase ``mlox-iac sandbox up`` made for a sandbox's secrets (beside its record,
    mode 0600), so every command works on a sandbox without one; for a stack migrated off its
    sandbox, the same passphrase where ``sandbox down`` kept it; None for other stacks."""
    from mlox_iac.sandbox.spec import kept_passphrase_path, passphrase_path, record_path

    path = passphrase_path(project_dir, stack)
    if not record_path(project_dir, stack).is_file() or not path.is_file():
        path = kept_passphrase_path(project_dir, stack)
    if not path.is_file():
        return None
    try:
        return path.read_text().strip()
    except OSError:
        return None


def default_pulumi_command(command: str = "this command", env: Mapping[str, str] | None = None) -> "auto.PulumiCommand":
    """The Pulumi CLI on PATH (or in ``$PULUMI_HOME/bin``, where its installer puts it).

    Raises :class:`PulumiCliMissing` naming ``command`` and the install step when absent.
    """
    from pulumi.automation.errors import InvalidVersionError

    env = os.environ if env is None else env
    root = None
    found = shutil.which("pulumi", path=env.get("PATH"))
    if found is None:
        installed = _pulumi_home(env) / "bin" / "pulumi"
        if not (installed.is_file() and os.access(installed, os.X_OK)):
            raise PulumiCliMissing(command)
        root = str(installed.parent.parent)
    try:
        return _cli(root, found)
    except FileNotFoundError:
        raise PulumiCliMissing(command) from None
    except (OSError, subprocess.CalledProcessError) as exc:
        raise MloxError(f"{command}: the Pulumi CLI does not run (`pulumi version`: {exc}); reinstall it with "
                        "`curl -fsSL https://get.pulumi.com | sh`") from None
    except InvalidVersionError as exc:
        raise MloxError(f"{command}: {exc} (upgrade with `curl -fsSL https://get.pulumi.com | sh`)") from None


@functools.lru_cache(maxsize=4)
def _cli(root: str | None, found: str | None) -> "auto.PulumiCommand":
    """One ``PulumiCommand`` per CLI found: creating it runs ``pulumi version`` (0.3 s), and a
    command such as ``migrate`` opens the stack a dozen times. ``found`` (the CLI on PATH)
    keys the cache, so a changed PATH finds the CLI again."""
    from pulumi import automation as auto

    return auto.PulumiCommand(root=root)


# ----- stacks ---------------------------------------------------------------------------

_SUMMARIES = ("update failed", "preview failed", "destroy failed", "refresh failed")


def _first_error(exc: Exception) -> str:
    """The line of a failed Pulumi command that says what went wrong.

    ``str(CommandError)`` is ``code: N / stdout: ... / stderr: ...``; the first ``error:``
    line of stderr, else of stdout, else the last line of stderr. A resource's own error (in
    the diagnostics on stdout) comes before the engine's summary ``update failed``, which
    says nothing about the cause.
    """
    text = str(exc)
    stdout, _, stderr = text.partition("\n stderr:")
    errors = [line[len("error:"):].strip() for part in (stderr, stdout) for line in
              (raw.strip().removeprefix("stdout:").strip() for raw in part.splitlines())
              if line.lower().startswith("error:")]
    if errors:
        return next((e for e in errors if e.lower() not in _SUMMARIES), errors[0])
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def open_stack(
    stack: str,
    *,
    project_dir: Path | None = None,
    create: bool = False,
    validate: bool = True,
    pulumi_command: Optional["auto.PulumiCommand"] = None,
    passphrase_prompt: Optional[PassphrasePrompt] = None,
    command: str = "mlox-iac",
) -> "auto.Stack":
    """Select (or with ``create``, create or select) ``stack`` in a local-program workspace.

    The stack file is validated first (``validate``) or at least must exist; then the CLI
    is looked up; only then is the engine touched.
    """
    from pulumi import automation as auto

    project_dir = (project_dir or find_project_dir()).resolve()
    if validate:
        validate_for_engine(stack, project_dir=project_dir)
    else:
        require_stack_file(project_dir, stack)
    cli = pulumi_command or default_pulumi_command(command)
    opts = workspace_options(project_dir, stack, pulumi_command=cli, passphrase_prompt=passphrase_prompt)
    try:
        if create:
            return auto.create_or_select_stack(stack, work_dir=str(project_dir), opts=opts)
        return auto.select_stack(stack, work_dir=str(project_dir), opts=opts)
    except auto.StackNotFoundError:
        raise MloxError(f"stack {stack} has not been deployed yet: run mlox-iac up --stack {stack}") from None
    except auto.CommandError as exc:
        raise EngineError(f"{command}: pulumi could not open stack {stack}: {_first_error(exc)}") from None


def provider_change_problem(stack: str, deployed: Mapping[str, Any], provider: str, source: str) -> str | None:
    """The one-line refusal when ``provider`` (the stack file's ``mlox:provider``) differs from
    the provider the deployed stack runs on (its ``provider`` output, or ``migration.from``
    during a move): a plain update would start an empty server there and take the old one
    down. Moving is ``mlox-iac migrate``'s job. None when nothing is deployed or it matches."""

    def value(key: str) -> Any:
        item = deployed.get(key)
        return getattr(item, "value", item)

    migration = value("migration")
    running = migration.get("from") if isinstance(migration, Mapping) else value("provider")
    if not running or running == SECRET:
        return None  # not deployed yet
    allowed = {running}
    if isinstance(migration, Mapping) and migration.get("state") == "finishing":
        allowed.add(migration.get("to"))  # migrate --finish hands the stack to the new provider
    if provider in allowed:
        return None
    return (f"{source}: mlox:provider: stack {stack} runs on {running}; changing the provider here would start an "
            f"empty server on {provider} (allowed: {running}; to move the stack and its data run: "
            f"mlox-iac migrate --stack {stack} --to {provider})")


def part_change_problem(stack: str, deployed: Mapping[str, Any], config: Any, source: str) -> str | None:
    """The one-line refusal when the stack file puts a deployed part (objects, postgres) on the
    other side (external or the server's own) without ``mlox-iac migrate --part``: the services
    would start on a store that does not hold their data. None when nothing is deployed, the
    sides match, or a move of that part is in progress (migrate switches the sides itself)."""
    from mlox_iac.config.model import PARTS

    provider = deployed.get("provider")
    if getattr(provider, "value", provider) in (None, SECRET):
        return None  # not deployed yet
    parts = deployed.get("parts")
    parts = getattr(parts, "value", parts)
    parts = parts if isinstance(parts, Mapping) else {}  # deployed before parts could be external: all local
    for part, service in PARTS.items():
        if not config.service_enabled(service) or (config.part_move is not None and config.part_move.part == part):
            continue
        running = (parts.get(part) or {}).get("uses", "local")
        wanted = "external" if config.part_external(part) else "local"
        if running != wanted:
            where = {"external": "on an external store", "local": "on the server"}
            what = "buckets" if part == "objects" else "databases"
            return (f"{source}: mlox:services.{service}.external: stack {stack} keeps its {what} {where[running]}; "
                    f"this file puts them {where[wanted]}, where the services would find none of their data "
                    f"(allowed: the deployed side; to move the data run: mlox-iac migrate --stack {stack} "
                    f"--part {part} --to {wanted})")
    return None


def refuse_provider_change(stack: str, deployed: Mapping[str, Any], *, project_dir: Path | None = None) -> None:
    """Raise :class:`ConfigError` (exit 2) with :func:`provider_change_problem`'s line."""
    from mlox_iac.errors import ConfigError

    project_dir = (project_dir or find_project_dir()).resolve()
    config = validate_stack(stack, project_dir=project_dir)
    path = stack_file(project_dir, stack)
    shown = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
    problem = (provider_change_problem(stack, deployed, config.provider, str(shown))
               or part_change_problem(stack, deployed, config, str(shown)))
    if problem:
        raise ConfigError([problem])


def _masked(outputs: "auto.OutputMap", show_secrets: bool) -> tuple[dict[str, Any], list[str]]:
    secret = sorted(k for k, v in outputs.items() if v.secret)
    values = {k: (v.value if show_secrets or not v.secret else SECRET) for k, v in outputs.items()}
    return values, secret


def _changes(ops: Mapping[Any, int] | None) -> dict[str, int]:
    return {str(getattr(op, "value", op)): int(n) for op, n in (ops or {}).items() if n}


def _engine_call(operation: str, stack: str, run: Callable[[], Any]) -> Any:
    from pulumi import automation as auto

    try:
        return run()
    except auto.ConcurrentUpdateError:
        raise EngineError(
            f"pulumi {operation} failed: stack {stack} is locked by another update "
            f"(if none is running, remove the lock: pulumi cancel --stack {stack})"
        ) from None
    except auto.CommandError as exc:
        first = _first_error(exc)
        if "pending operation" in first.lower():
            # An update that was killed (not cancelled) left operations the engine cannot finish.
            first += (f" (an earlier update was killed midway; check the server, then run: "
                      f"pulumi refresh --stack {stack} --clear-pending-creates --yes, or mlox-iac refresh)")
        raise EngineError(f"pulumi {operation} failed: {first}") from None


def up(
    stack: str,
    *,
    project_dir: Path | None = None,
    on_event: Optional[OnEvent] = None,
    show_secrets: bool = False,
    pulumi_command: Optional["auto.PulumiCommand"] = None,
    passphrase_prompt: Optional[PassphrasePrompt] = None,
    target: Optional[list[str]] = None,
    replace: Optional[list[str]] = None,
) -> RunResult:
    """Create or update the stack (creating the stack itself on first use). Does not ask:
    callers confirm first (the CLI previews and asks unless ``--yes``).

    ``target`` limits the update to those resources (and what they depend on must exist);
    ``replace`` re-creates those resources (``pulumi up --replace``: a password resource gets
    a new value). Both take URNs or resource names of the deployed stack."""
    started = time.monotonic()
    s = open_stack(stack, project_dir=project_dir, create=True, pulumi_command=pulumi_command,
                   passphrase_prompt=passphrase_prompt, command="mlox-iac up")
    refuse_provider_change(stack, _engine_call("stack output", stack, s.outputs), project_dir=project_dir)
    if target or replace:
        target, replace = resolve_urns(s, target), resolve_urns(s, replace)
    result = _engine_call("up", stack, lambda: s.up(on_event=on_event, color="never", show_secrets=False,
                                                    target=target or None, replace=replace or None))
    outputs, secret = _masked(result.outputs, show_secrets)
    return RunResult("update", stack, _changes(result.summary.resource_changes), outputs, secret,
                     time.monotonic() - started)


def resolve_urns(s: "auto.Stack", names: Optional[list[str]]) -> list[str]:
    """URNs for ``names``: a URN stays as it is; a resource name is looked up in the stack's
    state and must name exactly one resource (else :class:`MloxError` naming the choices)."""
    if not names:
        return []
    plain = [n for n in names if not n.startswith("urn:")]
    urns = [n for n in names if n.startswith("urn:")]
    if plain:
        deployment = _engine_call("stack export", s.name, s.export_stack).deployment or {}
        known: dict[str, list[str]] = {}
        for resource in deployment.get("resources") or []:
            urn = resource.get("urn", "")
            known.setdefault(urn.rsplit("::", 1)[-1], []).append(urn)
        for name in plain:
            found = known.get(name, [])
            if len(found) != 1:
                some = ", ".join(sorted(n for n in known if "$" not in n)[:12])
                raise MloxError(f"{name}: {'no' if not found else 'more than one'} resource of stack {s.name} has "
                                f"that name (names: {some}, ...; or pass a URN from pulumi stack --show-urns)")
            urns.append(found[0])
    return urns


def preview(
    stack: str,
    *,
    project_dir: Path | None = None,
    on_event: Optional[OnEvent] = None,
    pulumi_command: Optional["auto.PulumiCommand"] = None,
    passphrase_prompt: Optional[PassphrasePrompt] = None,
) -> RunResult:
    """What :func:`up` would change, changing nothing (creates the stack if it is new)."""
    started = time.monotonic()
    s = open_stack(stack, project_dir=project_dir, create=True, pulumi_command=pulumi_command,
                   passphrase_prompt=passphrase_prompt, command="mlox-iac preview")
    refuse_provider_change(stack, _engine_call("stack output", stack, s.outputs), project_dir=project_dir)
    result = _engine_call("preview", stack, lambda: s.preview(on_event=on_event, color="never"))
    return RunResult("preview", stack, _changes(result.change_summary), duration_s=time.monotonic() - started)


def refresh(
    stack: str,
    *,
    project_dir: Path | None = None,
    on_event: Optional[OnEvent] = None,
    show_secrets: bool = False,
    pulumi_command: Optional["auto.PulumiCommand"] = None,
    passphrase_prompt: Optional[PassphrasePrompt] = None,
) -> RunResult:
    """Read every resource's real state back into the stack's state."""
    started = time.monotonic()
    s = open_stack(stack, project_dir=project_dir, pulumi_command=pulumi_command,
                   passphrase_prompt=passphrase_prompt, command="mlox-iac refresh")
    result = _engine_call("refresh", stack, lambda: s.refresh(on_event=on_event, color="never", show_secrets=False))
    outputs, secret = _masked(_engine_call("refresh", stack, s.outputs), show_secrets)
    return RunResult("refresh", stack, _changes(result.summary.resource_changes), outputs, secret,
                     time.monotonic() - started)


def destroy(
    stack: str,
    *,
    project_dir: Path | None = None,
    on_event: Optional[OnEvent] = None,
    pulumi_command: Optional["auto.PulumiCommand"] = None,
    passphrase_prompt: Optional[PassphrasePrompt] = None,
) -> RunResult:
    """Delete every resource of the stack (data volumes stay while ``mlox:keep_data_on_destroy``
    protects them). The stack file is only required to exist, so a stack whose file no longer
    validates can still be torn down."""
    started = time.monotonic()
    s = open_stack(stack, project_dir=project_dir, validate=False, pulumi_command=pulumi_command,
                   passphrase_prompt=passphrase_prompt, command="mlox-iac destroy")
    result = _engine_call("destroy", stack, lambda: s.destroy(on_event=on_event, color="never", show_secrets=False))
    return RunResult("destroy", stack, _changes(result.summary.resource_changes), duration_s=time.monotonic() - started)


def stack_exists(
    stack: str,
    *,
    project_dir: Path | None = None,
    pulumi_command: Optional["auto.PulumiCommand"] = None,
    command: str = "mlox-iac",
) -> bool:
    """Whether the backend holds the stack (``pulumi stack ls``); its file need not exist."""
    from pulumi import automation as auto

    project_dir = (project_dir or find_project_dir()).resolve()
    cli = pulumi_command or default_pulumi_command(command)
    opts = workspace_options(project_dir, stack, pulumi_command=cli)
    workspace = auto.LocalWorkspace(work_dir=opts.work_dir, env_vars=opts.env_vars, pulumi_command=cli)
    return any(summary.name == stack for summary in _engine_call("stack ls", stack, workspace.list_stacks))


def remove(
    stack: str,
    *,
    project_dir: Path | None = None,
    force: bool = False,
    pulumi_command: Optional["auto.PulumiCommand"] = None,
    passphrase_prompt: Optional[PassphrasePrompt] = None,
    command: str = "mlox-iac",
) -> None:
    """``pulumi stack rm``: forget the stack (its state, and its file). Refused by the engine
    while resources are left, unless ``force`` (their state is then dropped, not the resources)."""
    s = open_stack(stack, project_dir=project_dir, validate=False, pulumi_command=pulumi_command,
                   passphrase_prompt=passphrase_prompt, command=command)
    _engine_call("stack rm", stack, lambda: s.workspace.remove_stack(stack, force=force))


def outputs(
    stack: str,
    *,
    project_dir: Path | None = None,
    show_secrets: bool = False,
    pulumi_command: Optional["auto.PulumiCommand"] = None,
    passphrase_prompt: Optional[PassphrasePrompt] = None,
) -> dict[str, Any]:
    """The deployed stack's outputs; secret values are ``"[secret]"`` unless ``show_secrets``."""
    s = open_stack(stack, project_dir=project_dir, validate=False, pulumi_command=pulumi_command,
                   passphrase_prompt=passphrase_prompt, command="mlox-iac outputs")
    values, _ = _masked(_engine_call("stack output", stack, s.outputs), show_secrets)
    return values


def config_value(
    stack: str,
    key: str,
    *,
    project_dir: Path | None = None,
    pulumi_command: Optional["auto.PulumiCommand"] = None,
    passphrase_prompt: Optional[PassphrasePrompt] = None,
) -> str | None:
    """A stack's config value, decrypted when it is a secret (``pulumi config get``); None
    when the stack does not set it."""
    from pulumi import automation as auto

    s = open_stack(stack, project_dir=project_dir, validate=False, pulumi_command=pulumi_command,
                   passphrase_prompt=passphrase_prompt, command="mlox-iac cost")
    try:
        return s.get_config(key).value
    except auto.CommandError:
        return None


def set_secrets(
    stack: str,
    values: Mapping[str, str],
    *,
    path_keys: tuple[str, ...] = (),
    project_dir: Path | None = None,
    pulumi_command: Optional["auto.PulumiCommand"] = None,
    passphrase_prompt: Optional[PassphrasePrompt] = None,
) -> None:
    """Store config values as secrets (``pulumi config set --secret``), creating the stack if
    needed. Keys in ``path_keys`` are set with ``--path`` (e.g. ``mlox:onprem.private_key``).

    The stack file is not validated: ``mlox-iac init`` stores the secrets that make it valid.
    """
    from pulumi import automation as auto

    s = open_stack(stack, project_dir=project_dir, create=True, validate=False, pulumi_command=pulumi_command,
                   passphrase_prompt=passphrase_prompt, command="mlox-iac init")
    for key, value in values.items():
        _engine_call("config set", stack,
                     lambda k=key, v=value: s.set_config(k, auto.ConfigValue(value=v, secret=True), path=k in path_keys))


def set_config(
    stack: str,
    values: Mapping[str, str],
    *,
    remove: tuple[str, ...] = (),
    secret: tuple[str, ...] = (),
    project_dir: Path | None = None,
    pulumi_command: Optional["auto.PulumiCommand"] = None,
    passphrase_prompt: Optional[PassphrasePrompt] = None,
    command: str = "mlox-iac migrate",
) -> None:
    """Set config values by path (``mlox:migration.state``), secret where listed in ``secret``,
    then remove the keys in ``remove``. The stack must exist; its file is not validated (a
    migration step changes keys that only make sense together)."""
    from pulumi import automation as auto

    s = open_stack(stack, project_dir=project_dir, validate=False, pulumi_command=pulumi_command,
                   passphrase_prompt=passphrase_prompt, command=command)
    for key, value in values.items():
        _engine_call("config set", stack,
                     lambda k=key, v=value: s.set_config(k, auto.ConfigValue(value=v, secret=k in secret), path=True))
    for key in remove:
        _engine_call("config rm", stack, lambda k=key: s.remove_config(k, path=True))


def get_config(
    stack: str,
    key: str,
    *,
    project_dir: Path | None = None,
    pulumi_command: Optional["auto.PulumiCommand"] = None,
    passphrase_prompt: Optional[PassphrasePrompt] = None,
    command: str = "mlox-iac migrate",
) -> str:
    """One config value by path, decrypted (for moving a secret from one key to another)."""
    s = open_stack(stack, project_dir=project_dir, validate=False, pulumi_command=pulumi_command,
                   passphrase_prompt=passphrase_prompt, command=command)
    return _engine_call("config get", stack, lambda: s.get_config(key, path=True)).value
