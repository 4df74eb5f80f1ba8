"""``init``: write a new stack file from answers (or flags), and store its secrets."""

from __future__ import annotations

import ipaddress
import shlex
from pathlib import Path
from typing import Any, Optional

import typer
import yaml

from mlox_iac.automation import ENCRYPTION_KEYS
from mlox_iac.cli.common import Out, StackOpt, interactive, passphrase_prompt, project_dir
from mlox_iac.errors import ConfigError, MloxError, PulumiCliMissing

# Where each provider keeps its location, and the config key of its API token.
LOCATION_FIELD = {"hetzner": "location", "digitalocean": "region"}
AWS_REGION_KEY = "aws:region"
AWS_DEFAULT_REGION = "eu-central-1"
TOKEN_KEY = {"hetzner": "hcloud:token", "digitalocean": "digitalocean:token"}
PRIVATE_KEY_KEY = "mlox:onprem.private_key"
# Stack-file keys Pulumi owns (how secrets are encrypted); kept when --force rewrites a file.
KEPT_KEYS = ENCRYPTION_KEYS
DEFAULT_PUBLIC_KEYS = ("id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub")


def _size_field(provider: str) -> str:
    from mlox_iac.providers import get_provider

    return getattr(get_provider(provider), "SIZE_FIELD", {"hetzner": "server_type", "digitalocean": "size",
                                                          "aws": "instance_type", "onprem": "memory_mb"}[provider])


def _default(provider: str, field: str) -> Any:
    from mlox_iac.providers import get_provider

    info = get_provider(provider).Settings.model_fields.get(field)
    return None if info is None or info.is_required() else info.default


def _read_public_key(value: str) -> str:
    path = Path(value).expanduser()
    if path.is_file():
        from mlox_iac.files import read_text

        text = read_text(path, f"--ssh-key: {value}", "public key file (.pub)").strip()
        if "PRIVATE KEY" in text:
            raise ConfigError([f"--ssh-key: {value} is a private key (allowed: the public key, e.g. {value}.pub)"])
        return text
    return value.strip()


def _cidr(value: str) -> str:
    value = value.strip()
    if value and "/" not in value:
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            return value  # the model explains what is wrong
        return f"{address}/{32 if address.version == 4 else 128}"
    return value


def _split(values: list[str]) -> list[str]:
    return [part.strip() for v in values for part in v.split(",") if part.strip()]


def build_config(
    provider: str, *, location: Optional[str], size: Optional[str], domain: Optional[str], acme_email: Optional[str],
    services: Optional[list[str]], ssh_keys: list[str], admin_cidrs: list[str], host: Optional[str] = None,
    user: Optional[str] = None, port: Optional[int] = None, private_key: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(mlox settings without the namespace, other plain config keys) for the answers."""
    from mlox_iac.components.services.registry import SERVICES
    from mlox_iac.config.loader import SECRET_PLACEHOLDER
    from mlox_iac.providers import PROVIDERS

    if provider not in PROVIDERS:
        raise ConfigError([f"--provider: {provider!r} is not allowed (allowed: {', '.join(PROVIDERS)})"])
    block: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    if provider in LOCATION_FIELD:
        block[LOCATION_FIELD[provider]] = location or _default(provider, LOCATION_FIELD[provider])
    elif provider == "aws":
        extra[AWS_REGION_KEY] = location or AWS_DEFAULT_REGION
    size_field = _size_field(provider)
    if size is not None:
        block[size_field] = int(size) if provider == "onprem" and str(size).isdigit() else size
    elif provider != "onprem":
        block[size_field] = _default(provider, size_field)
    if provider == "onprem":
        block["host"] = host
        if user:
            block["user"] = user
        if port:
            block["port"] = port
        if private_key:
            block["private_key"] = SECRET_PLACEHOLDER
    raw: dict[str, Any] = {"provider": provider, provider: block,
                           "ssh": {"public_keys": ssh_keys, "admin_cidrs": [_cidr(c) for c in admin_cidrs]}}
    if domain:
        raw["domain"] = domain
    if acme_email:
        raw["acme_email"] = acme_email
    if services is not None:
        unknown = [s for s in services if s not in SERVICES]
        if unknown:
            raise ConfigError([f"--services: {', '.join(map(repr, unknown))} not allowed (allowed: {', '.join(SERVICES)})"])
        raw_services = services_block(set(services) | {"caddy", "home"})  # the proxy is the only way in; home: the stack's front page
        if raw_services:
            raw["services"] = raw_services
    return raw, extra


def services_block(wanted: set[str]) -> dict[str, Any]:
    """The ``mlox:services`` block that enables exactly ``wanted``: the smallest preset that
    holds them all, minus what it enables and was not asked for (empty: the default preset)."""
    from mlox_iac.components.services.base import PRESETS
    from mlox_iac.components.services.registry import SERVICES

    preset = max((SERVICES[name].preset for name in wanted), key=PRESETS.index, default=PRESETS[0])
    block: dict[str, Any] = {} if preset == PRESETS[0] else {"preset": preset}
    in_preset = [name for name in SERVICES if PRESETS.index(SERVICES[name].preset) <= PRESETS.index(preset)]
    block.update({name: {"enabled": False} for name in in_preset if name not in wanted})
    return block


def render_stack_file(stack: str, raw: dict[str, Any], extra: dict[str, Any], kept: dict[str, Any]) -> str:
    """The stack file: plain settings only (secrets are added by ``pulumi config set --secret``)."""
    from mlox_iac.config.loader import SECRET_PLACEHOLDER

    settings = dict(raw)
    if isinstance(settings.get("onprem"), dict):
        settings["onprem"] = {k: v for k, v in settings["onprem"].items() if v != SECRET_PLACEHOLDER}
    config: dict[str, Any] = {**extra, **{f"mlox:{k}": v for k, v in settings.items()}}
    config.update(kept.pop("config", {}))
    document = {**kept, "config": config}
    header = (f"# Stack {stack}, written by mlox-iac init. Check it: mlox-iac validate --stack {stack}\n"
              f"# Secrets (tokens, keys) are stored encrypted by: pulumi config set --secret KEY --stack {stack}\n")
    return header + yaml.safe_dump(document, sort_keys=False, default_flow_style=False)


def _kept(path: Path) -> dict[str, Any]:
    """What a rewritten file keeps: Pulumi's encryption settings and secure values.

    A file that cannot be read is an error, never overwritten: it may hold the salt that
    decrypts the stack's secrets.
    """
    from mlox_iac.config import stack_yaml

    old = stack_yaml.load(path, str(path)) or {}
    if not isinstance(old, dict):
        return {}
    kept = {k: old[k] for k in KEPT_KEYS if k in old}
    secure = {k: v for k, v in (old.get("config") or {}).items() if isinstance(v, dict) and set(v) == {"secure"}}
    if secure:
        kept["config"] = secure
    return kept


def _ask(value, prompt: str, missing: list[str], flag: str, *, default=None, hide: bool = False, required: bool = True):
    """A flag's value; else the answer to a prompt (terminal only); else note the flag as missing."""
    if value not in (None, [], ""):
        return value
    if interactive():
        answer = typer.prompt(prompt, default=default if default is not None else ("" if not required else None),
                              hide_input=hide, show_default=not hide and default not in (None, ""), err=True)
        return answer if answer != "" else None
    if required and default is None:
        missing.append(flag)
    return default


def init(
    stack: Optional[str] = StackOpt,
    provider: Optional[str] = typer.Option(None, "--provider", "-p", help="hetzner, digitalocean, aws or onprem"),
    location: Optional[str] = typer.Option(None, "--location", help="Hetzner location, DigitalOcean region or AWS region"),
    size: Optional[str] = typer.Option(None, "--size", help="Server type / droplet size / instance type (onprem: RAM in MiB)"),
    domain: Optional[str] = typer.Option(
        None, "--domain", help="Base domain for HTTPS via Let's Encrypt; none: the server's address with an internal CA"),
    acme_email: Optional[str] = typer.Option(None, "--acme-email", help="Let's Encrypt contact (required with --domain)"),
    services: Optional[str] = typer.Option(
        None, "--services", help="Comma-separated services to enable (default: the core preset: postgres, seaweedfs, "
        "mlflow, caddy)"),
    ssh_key: list[str] = typer.Option([], "--ssh-key", help="OpenSSH public key, or the path of a .pub file (repeatable)"),
    admin_cidr: list[str] = typer.Option([], "--admin-cidr", help="Network allowed to reach SSH, e.g. 203.0.113.7/32 (repeatable)"),
    token: Optional[str] = typer.Option(
        None, "--token", envvar="MLOX_PROVIDER_TOKEN",
        help="Hetzner/DigitalOcean API token, stored as a secret (prefer the env var or the prompt to the flag)"),
    host: Optional[str] = typer.Option(None, "--host", help="onprem: address of the existing server"),
    user: Optional[str] = typer.Option(None, "--user", help="onprem: SSH user (root or passwordless sudo)"),
    port: Optional[int] = typer.Option(None, "--port", help="onprem: SSH port"),
    private_key: Optional[Path] = typer.Option(None, "--private-key", help="onprem: SSH private key file, stored as a secret"),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing stack file (keeps its encryption settings)"),
) -> None:
    """Create a stack: write its file and store its token and keys as secrets.

    Writes stacks/Pulumi.<stack>.yaml after validating it. Asks for what
    the flags leave out on a terminal; without one, missing flags are an
    error (exit 2). Tokens and keys go through `pulumi config set --secret`
    (encrypted with your passphrase); without the Pulumi CLI the file is
    written and the commands that store them are printed instead.

    Examples:
      mlox-iac init
      mlox-iac init --stack prod --provider hetzner --size cx33 \\
        --ssh-key ~/.ssh/id_ed25519.pub --admin-cidr 203.0.113.7 \\
        --domain ml.example.com --acme-email ops@example.com
      mlox-iac init --stack lab --provider onprem --host 192.0.2.50 \\
        --private-key ~/.ssh/id_ed25519 --size 8192 \\
        --ssh-key ~/.ssh/id_ed25519.pub --admin-cidr 192.0.2.0/24
    """
    from mlox_iac.components.services.registry import SERVICES
    from mlox_iac.providers import PROVIDERS

    out = Out(False)
    missing: list[str] = []
    name = _ask(stack, "Stack name", missing, "--stack", default="dev" if interactive() else None)
    provider = _ask(provider, f"Provider ({', '.join(PROVIDERS)})", missing, "--provider", default="hetzner" if interactive() else None)
    if provider and provider not in PROVIDERS:
        raise ConfigError([f"--provider: {provider!r} is not allowed (allowed: {', '.join(PROVIDERS)})"])
    if provider in LOCATION_FIELD:
        location = _ask(location, "Location", missing, "--location", default=_default(provider, LOCATION_FIELD[provider]))
    elif provider == "aws":
        location = _ask(location, "AWS region", missing, "--location", default=AWS_DEFAULT_REGION)
    if provider == "onprem":
        host = _ask(host, "Host (address of the server)", missing, "--host")
        user = _ask(user, "SSH user", missing, "--user", default="root")
        private_key = _ask(private_key, "Private key file pulumi connects with", missing, "--private-key",
                           default=str(Path("~/.ssh/id_ed25519").expanduser()) if interactive() else None)
        size = _ask(size, "RAM of the server in MiB", missing, "--size", default=str(_default("onprem", "memory_mb")))
    elif provider:
        size = _ask(size, "Server size", missing, "--size", default=_default(provider, _size_field(provider)))
    domain = _ask(domain, "Domain (empty: use the server's address with an internal CA)", missing, "--domain", required=False)
    if domain:
        acme_email = _ask(acme_email, "E-mail for Let's Encrypt", missing, "--acme-email")
    core = [name for name, service in SERVICES.items() if service.preset == "core"]
    chosen = _ask(services, f"Services (any of {', '.join(SERVICES)})", missing, "--services", default=",".join(core))
    default_key = next((str(p) for p in (Path("~/.ssh").expanduser() / n for n in DEFAULT_PUBLIC_KEYS) if p.is_file()), None)
    keys = _ask(ssh_key, "SSH public key (or path of a .pub file)", missing, "--ssh-key", default=default_key if interactive() else None)
    cidrs = _ask(admin_cidr, "Networks allowed to reach SSH (CIDR, comma-separated)", missing, "--admin-cidr")
    if provider in TOKEN_KEY and token is None and interactive():
        token = typer.prompt(f"{provider} API token (empty: read {TOKEN_KEY[provider].split(':')[0].upper()}_TOKEN at deploy time)",
                             default="", hide_input=True, show_default=False, err=True) or None
    if missing:
        raise ConfigError([f"init: missing {', '.join(missing)} (stdin is not a terminal, so init cannot ask; pass them as flags)"])

    key_list = [_read_public_key(k) for k in _split(keys if isinstance(keys, list) else [keys])]
    cidr_list = _split(cidrs if isinstance(cidrs, list) else [cidrs])
    service_list = _split([chosen]) if chosen else None
    private_key_path = Path(private_key).expanduser() if private_key else None
    project = project_dir()
    path, shown, text = stack_file_text(
        project, name, provider, location=location, size=size, domain=domain, acme_email=acme_email,
        services=service_list, ssh_keys=key_list, admin_cidrs=cidr_list, host=host, user=user, port=port,
        private_key=private_key_path is not None, force=force)
    secrets: dict[str, str] = {}
    if token:
        if provider not in TOKEN_KEY:
            raise ConfigError([f"--token: not used by provider {provider} (allowed with: {', '.join(TOKEN_KEY)})"])
        secrets[TOKEN_KEY[provider]] = token
    if private_key_path is not None:
        try:
            secrets[PRIVATE_KEY_KEY] = private_key_path.read_text()
        except OSError as exc:
            raise ConfigError([f"--private-key: cannot read {private_key_path}: {exc.strerror}"]) from None

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    out.info(f"wrote {shown}")
    if secrets:
        _store_secrets(out, name, project, secrets, private_key_path)
    out.info(f"next: mlox-iac plan --stack {name}  (offline), then mlox-iac up --stack {name}")


def stack_file_text(
    project: Path, name: str, provider: str, *, location: Optional[str], size: Optional[str], domain: Optional[str],
    acme_email: Optional[str], services: Optional[list[str]], ssh_keys: list[str], admin_cidrs: list[str],
    host: Optional[str] = None, user: Optional[str] = None, port: Optional[int] = None, private_key: bool = False,
    force: bool = False,
) -> tuple[Path, Path, str]:
    """(path, path as shown, text) of a new stack file for these answers, validated as ``up``
    validates it (:class:`ConfigError` with one line per problem), without writing it.
    ``init`` and the UI's create form both write what this returns."""
    from mlox_iac import automation
    from mlox_iac.config.loader import stack_name_of, validate

    raw, extra = build_config(
        provider, location=location, size=size, domain=domain, acme_email=acme_email, services=services,
        ssh_keys=ssh_keys, admin_cidrs=admin_cidrs, host=host, user=user, port=port, private_key=private_key,
    )
    path = automation.stack_file(project, name)
    shown = path.relative_to(project) if path.is_relative_to(project) else path
    validate(raw, {f"{provider}.private_key"} if private_key else set(), str(shown), stack_name_of(path))
    if path.exists() and not force:
        raise ConfigError([f"{shown}: already exists (pass --force to overwrite it)"])
    return path, shown, render_stack_file(name, raw, extra, _kept(path) if path.exists() else {})


def _store_secrets(out: Out, name: str, project: Path, secrets: dict[str, str], private_key_path: Optional[Path]) -> None:
    from mlox_iac import automation

    try:
        automation.set_secrets(name, secrets, path_keys=(PRIVATE_KEY_KEY,), project_dir=project,
                               passphrase_prompt=passphrase_prompt())
    except PulumiCliMissing as error:
        out.info(f"{error}.")
        out.info("The secrets were not stored. Once the CLI is installed, run in the project directory:")
        backend = automation.backend_url(project)
        if backend:
            out.info(f"  export PULUMI_BACKEND_URL={shlex.quote(backend)}")
        out.info(f"  pulumi stack init --secrets-provider passphrase {shlex.quote(name)}")
        for key in secrets:
            if key == PRIVATE_KEY_KEY:
                out.info(f"  pulumi config set --secret --path {shlex.quote(key)} --stack {shlex.quote(name)} "
                         f"< {shlex.quote(str(private_key_path))}")
            else:
                out.info(f"  pulumi config set --secret {key} --stack {shlex.quote(name)}   # asks for the value")
        return
    except ConfigError:
        raise
    except MloxError as error:
        raise MloxError(f"stack file written, but storing its secrets failed: {error}") from None
    out.info(f"stored {len(secrets)} secret(s) encrypted in the stack file: {', '.join(secrets)}")
