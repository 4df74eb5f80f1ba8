"""The service contract: the one typed shape every service file fills in, and what it builds on.

A service is one module in this package that defines, top to bottom:

- ``NAME``, its pinned ``IMAGE``, its ``MEMORY_MB`` (compose memory limit of its main container);
- ``Settings``: its ``mlox:services.<name>`` block;
- ``compose(ctx)``: its part of the server's Compose project (no secrets, only ``env_file``
  references; every long-running container has a health check and a memory limit);
- ``routes(ctx)``: its proxy routes (each authenticated: by the proxy or by the service);
- ``files(ctx)``: further non-secret files it ships in the bundle;
- ``data(ctx)``: its :class:`Data` (databases, buckets, volumes) that backup, restore and
  migration keep; every named volume it mounts is declared there;
- ``managed(ctx)``: the :class:`Managed` offers that do what it does, with dated list
  prices (``mlox-iac cost`` sets them beside what the stack costs);
- its client faces (:class:`Face`): what a client needs of it (endpoint, auth, settings,
  health path), read by ``mlox-iac env`` and ``status``, the stack's own containers and the
  ``mlox-client`` package (``mlox_iac/faces.py``);
- a :class:`ServiceComponent` (a Pulumi ``ComponentResource`` once built) that generates its
  credentials and writes its env files. Nothing else in the file imports Pulumi, so loading
  a stack's config or reading the faces stays light;

and ends with ``SERVICE = Service(...)`` tying them together. ``registry.py`` lists the
``SERVICE`` of each module and checks each one when it loads (:func:`check_service`);
:func:`check_compose` checks what a service renders.

Adding a service = one such file + one line in ``registry.py``.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from mlox_iac.config.model import StackConfig

# Fixed paths on every server.
MLOX_DIR = "/opt/mlox"
BUNDLE_DIR = f"{MLOX_DIR}/bundle"
SECRETS_DIR = f"{MLOX_DIR}/secrets"
DATA_DIR = "/mnt/mlox-data"
COMPOSE_PROJECT = "mlox"


# Presets of ``mlox:services``, smallest first: a service belongs to the smallest preset
# that includes it (``Service.preset``) and to every larger one.
PRESETS = ("core", "full")


class ServiceSettings(BaseModel):
    """Settings every service has."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = Field(
        None, description="Deploy this service (default: whether the chosen mlox:services.preset includes it)")


@dataclass(frozen=True)
class Route:
    """One way in through the reverse proxy.

    With a domain the route is ``https://<name>.<domain>``; without one it is the path
    ``https://<address>/<name>/`` (or the catch-all, for the S3 API whose request
    signatures cover the path and so cannot live under a prefix; or the root page, the
    home page: a browser's unsigned ``GET /``, see ``home.ROOT_MATCHER``).
    """

    name: str
    upstream: str  # compose service:port
    auth: Literal["basic", "own"]  # basic: Caddy basic auth, generated password; own: the service authenticates
    catch_all: bool = False
    root_page: bool = False  # without a domain: the bare address's own page, ``https://<address>/``
    strip_prefix: bool = True
    # False: a new connection to the upstream per request, for a server that closes its
    # connection after each response without saying so (uWSGI's HTTP router): a reused
    # connection would fail the next request with 502.
    keepalive: bool = True
    # An API for programs, not a page a person opens (its root answers 404): the home page
    # shows its address, not a link.
    api: bool = False


# Stack outputs whose values are credentials (a face's setting read from one is a secret).
SECRET_SOURCES = frozenset({"ui_passwords", "login_passwords", "api_tokens", "s3_access_key", "s3_secret_key",
                            "client_secrets"})
# How a client authenticates to a face: the proxy's basic auth (``ui_user`` and the route's
# generated password); the stack's S3 keys (signed requests); the service's own user and
# password (exchanged for a token: Airflow); an API token; a database login; nothing.
FACE_AUTH = ("basic", "s3", "login", "token", "password", "none")


@dataclass(frozen=True)
class Face:
    """What a client needs of a service, declared once beside its routes.

    ``mlox-iac env`` and ``status``, the in-stack client settings, the ``mlox-client``
    package (through its generated ``faces.json``) and the UI read it; none of them names
    services one by one (``mlox_iac/faces.py`` has the readers).

    - ``key``: what clients call it (``mlflow``, ``s3``, ``postgres``); ``model-*`` stands for
      every route whose name starts ``model-`` (one per served model);
    - ``route``: the proxy route it is reached at from outside, or None: not published (a client
      outside the stack reaches it through an SSH tunnel to an address on the server);
    - ``auth``: one of :data:`FACE_AUTH`;
    - ``settings``: role -> (environment variable, source). The source says where the value is
      in the stack's outputs: ``<output>`` or ``<output>.<key>`` (``urls.mlflow``, ``ui_user``,
      ``ui_passwords.mlflow``, ``client_secrets.<VARIABLE>``), ``=<literal>``, or None for a
      setting that exists only inside the stack. In a ``model-*`` face ``{route}`` stands for
      the route's name and ``{ROUTE}`` for it in upper case with ``_`` for ``-``;
    - ``health``: the path under the route's URL that ``status`` probes;
    - ``inside(ctx, route)``: role -> value inside the stack's containers, where clients reach
      the service on the Compose network, past the proxy: the non-secret settings. The secret
      ones reach those containers' env files under the same variable names (all but the
      proxy's basic-auth password, which the Compose network does not ask for);
    - ``extra``: the ``mlox-client`` extra that uses it.
    """

    key: str
    route: str | None
    auth: Literal["basic", "s3", "login", "token", "password", "none"]
    settings: Mapping[str, tuple[str, str | None]] = field(default_factory=lambda: MappingProxyType({}))
    health: str = "/"
    inside: Callable[["Context", str | None], Mapping[str, str]] | None = None
    extra: str | None = None

    @property
    def templated(self) -> bool:
        return self.key.endswith("*")

    def matches(self, route: str) -> bool:
        """Whether ``route`` is this face's route (for ``model-*``: any route with that prefix)."""
        if self.route is None:
            return False
        return route.startswith(self.route[:-1]) if self.templated else route == self.route

    def secret(self, role: str) -> bool:
        """Whether the setting ``role`` holds a credential."""
        source = self.settings[role][1]
        return source is not None and source.split(".", 1)[0] in SECRET_SOURCES

    def variable(self, role: str, route: str | None = None) -> str:
        """The environment variable of ``role`` (for a ``model-*`` face, of that route)."""
        return _fill(self.settings[role][0], route)

    def source(self, role: str, route: str | None = None) -> str | None:
        source = self.settings[role][1]
        return None if source is None else _fill(source, route)


def _fill(template: str, route: str | None) -> str:
    if route is None:
        return template
    return template.replace("{route}", route).replace("{ROUTE}", route.upper().replace("-", "_"))


@dataclass(frozen=True)
class Context:
    """What a service's pure functions may read: the validated config and fixed paths."""

    config: "StackConfig"

    @property
    def data_dir(self) -> str:
        return DATA_DIR

    def env_file(self, name: str) -> str:
        return f"{SECRETS_DIR}/{name}.env"

    def env_files(self, name: str) -> list[dict]:
        """A compose ``env_file`` entry for a service's secrets.

        Not required at load time: while a change is applied, a command for one service
        loads the whole project before every other service's env file is written.
        """
        return [{"path": self.env_file(name), "required": False}]

    def volume(self, name: str) -> dict:
        """A named volume whose data lives on the server's data volume."""
        return {
            "driver": "local",
            "driver_opts": {"type": "none", "o": "bind", "device": f"{DATA_DIR}/volumes/{name}"},
        }

    @staticmethod
    def runtime_volume() -> dict:
        """A named volume for what lives only while the containers run (a socket shared
        between two containers): Docker's own storage, not the data volume; nothing in it is kept."""
        return {}

    @staticmethod
    def on_data_volume(volume: dict) -> bool:
        """Whether a compose volume (as :meth:`volume` returns) keeps its files on the data volume."""
        return str(volume.get("driver_opts", {}).get("device", "")).startswith(f"{DATA_DIR}/volumes/")

    def public_url(self, route: Route, address: str) -> str:
        """The URL a user reaches a route at."""
        domain = self.config.domain
        if domain:
            return f"https://{route.name}.{domain}"
        if route.root_page:
            return f"https://{address}/"
        return f"https://{address}" + ("" if route.catch_all else f"/{route.name}")


UNHEALTHY_AFTER_S = 120  # failing checks for this long (after the start period) make a service unhealthy
QUICK_CHECK_S = 3  # for a check that costs next to nothing (a small binary, no interpreter)


def hc(test: list[str], start_period: str = "20s", interval_s: int = 10) -> dict:
    """A compose healthcheck with the project's defaults.

    Docker (20.10, Debian's) runs the first check one interval after the start, so a service
    that others wait for (``depends_on: service_healthy``) holds them back by at least that
    long: the cheap checks of those services run every ``QUICK_CHECK_S``. Checks that start
    an interpreter keep 10 s, for what they cost on a small server. The retries keep a
    service healthy through ``UNHEALTHY_AFTER_S`` of failures whatever the interval.
    """
    return {"test": test, "interval": f"{interval_s}s", "timeout": "5s",
            "retries": max(1, UNHEALTHY_AFTER_S // interval_s), "start_period": start_period}


def http_check(port: int, path: str, timeout_s: int = 4) -> list[str]:
    """A healthcheck command: GET ``path`` from 127.0.0.1:``port``, healthy on a 2xx answer.

    With bash alone, no interpreter to start: a ``python -c 'urllib.request.urlopen(...)'``
    check cost about 175 ms of CPU each time, this one about 7 ms (measured on this project's
    2-core CI machine). Every service runs its check every 10 s or less, for as long as the
    server is up, so on a full stack the Python checks alone kept a tenth of a core busy.
    HTTP/1.0 with the ``Host`` header urllib sends: the server closes the connection after its
    answer, and ``read`` takes everything up to that (or what came within the timeout).
    """
    return ["CMD", "bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port} && "
            f"printf 'GET {path} HTTP/1.0\\r\\nHost: 127.0.0.1:{port}\\r\\n\\r\\n' >&3 && "
            f"{{ read -r -d '' -t {timeout_s} reply <&3; [[ $$reply == 'HTTP/1.'?' 2'* ]]; }}"]


PROVISIONED_CHECK = ["CMD", "test", "-f", "/tmp/mlox-provisioned"]


def provisioner(script: str) -> dict:
    """Compose settings of a provisioning step: run ``script`` once, then stay up, idle and healthy.

    A container that exits is a failure for ``docker compose up --wait``; one that idles
    after its work lets ``--wait`` and ``depends_on: service_healthy`` mean "provisioned".
    It runs again whenever it is recreated (its env file or script changed) or restarted.
    """
    idle = "touch /tmp/mlox-provisioned; trap 'exit 0' TERM INT; sleep 2147483647 & wait"
    return {
        "restart": "unless-stopped",
        "entrypoint": ["/bin/sh", "-c", f"{script} || exit 1; {idle}"],
        "healthcheck": {"test": list(PROVISIONED_CHECK), "interval": "3s",
                        "timeout": "3s", "retries": 100, "start_period": "5s"},
    }


def limits(memory_mb: int) -> dict:
    """Compose deploy limits for a memory budget."""
    return {"resources": {"limits": {"memory": f"{memory_mb}M"}}}


def env_line(key: str, value: str) -> str:
    """One env-file line. Single quotes keep Compose from interpolating ``$`` (bcrypt hashes)."""
    if "'" in value or "\n" in value:
        raise ValueError(f"env value for {key} contains a quote or newline")
    return f"{key}='{value}'\n"


def render_env(values: dict[str, str]) -> str:
    return "".join(env_line(k, v) for k, v in sorted(values.items()))


def digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def per_server(name: str, server: str) -> str:
    """The name of a per-server resource of a service: ``name`` on the first server (``main``),
    ``name-on-<server>`` on another (a stack has two while ``mlox-iac migrate`` moves it)."""
    return name if server == "main" else f"{name}-on-{server}"


@functools.cache
def _resource_class(component: type) -> type:
    """``component`` with Pulumi's ComponentResource joined in (made once per class)."""
    import pulumi

    return type(component.__name__, (component, pulumi.ComponentResource),
                {"__module__": component.__module__, "__qualname__": component.__qualname__})


class ServiceComponent:
    """Base of service components: generated passwords and the env-file writer.

    Each instance is a ``pulumi.ComponentResource``, but a service file names only this
    class: Pulumi's base joins when the component is built (:meth:`__new__`), so declaring
    a service, loading a stack's config and reading the client faces import no Pulumi.
    Subclasses call ``super().__init__(type_token, name, {}, opts)`` (ComponentResource's),
    :meth:`password` for each credential and :meth:`write_env` once with their env file's
    content. ``servers`` is the list of targets the service runs on (two while a migration
    runs): the credentials are generated once and the env file is written on every server.
    """

    def __new__(cls, *args, **kwargs):
        import pulumi

        real = cls if issubclass(cls, pulumi.ComponentResource) else _resource_class(cls)
        return object.__new__(real)

    def _setup(self, name: str, servers) -> None:
        import pulumi

        self._prefix = name
        self._servers = list(servers)
        self._child = pulumi.ResourceOptions(parent=self)  # type: ignore[arg-type]
        self.env_commands: dict = {}

    def password(self, key: str, length: int = 32):
        """A generated credential (pulumi-random, alphanumeric so it is safe in URLs and env files)."""
        import pulumi_random as random

        return random.RandomPassword(f"{self._prefix}-{key}", length=length, special=False, opts=self._child)

    def client_env(self, ctx: Context, deps: dict) -> tuple[dict, list]:
        """For a service whose containers run user code (notebooks, tasks, models): the
        credentials a client there needs (``faces.inside_secrets``), from the components that
        generated them (each lists its own in ``client_secrets``), and those components."""
        from mlox_iac import faces

        wanted = faces.inside_secrets(ctx)
        values: dict = {}
        after: list = []
        for component in [*deps.values(), self]:
            mine = {k: v for k, v in (getattr(component, "client_secrets", None) or {}).items() if k in wanted}
            values.update(mine)
            if mine and component is not self:
                after.append(component)
        missing = [name for name in wanted if name not in values]
        if missing:
            raise ContractError(f"no component provides {missing[0]} (a client face's secret) in client_secrets")
        return values, after

    def write_env(self, service: str, values: dict, compose_services: list[str], after: list = ()):
        """Write ``/opt/mlox/secrets/<service>.env`` (0600) on every server, content sent as a secret on stdin.

        A value may be a function of the target (for what differs per server, such as its
        address). ``after``: the services whose credentials this one uses; their env files
        (and the containers that check them, such as Postgres roles) change first.
        """
        import pulumi
        from pulumi_command import remote

        from mlox_iac.render import commands

        keys = sorted(values)
        for target in self._servers:
            resolved = [values[k](target) if callable(values[k]) else values[k] for k in keys]
            content = pulumi.Output.secret(
                pulumi.Output.all(*resolved).apply(lambda vs: render_env(dict(zip(keys, vs))))
            )
            before = [d.env_commands[target.name] for d in after if target.name in d.env_commands]
            self.env_commands[target.name] = remote.Command(
                per_server(f"{self._prefix}-env", target.name),
                connection=target.connection,
                create=commands.as_root(commands.write_env_file(service, compose_services), target.user),
                delete=commands.as_root(commands.remove_env_file(service), target.user),
                stdin=content,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[target.ready, *before]),  # type: ignore[arg-type]
            )
        return self.env_commands


# --------------------------------------------------------------------------- the contract


@dataclass(frozen=True)
class Data:
    """What of a service's state must survive: the one declaration backup, restore and migrate read.

    - ``databases``: Postgres databases it owns (each with a login role of the same name);
    - ``buckets``: S3 buckets whose every object is kept;
    - ``volumes``: named volumes whose files are kept as they are;
    - ``not_kept``: named volumes it mounts whose files are *not* copied, each with the
      reason (a cache, or data already kept another way, such as Postgres' cluster files,
      which are kept as the databases above).
    """

    databases: tuple[str, ...] = ()
    buckets: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    not_kept: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def declared_volumes(self) -> set[str]:
        return set(self.volumes) | set(self.not_kept)


# How an hourly list price becomes a month's (the providers' own convention).
HOURS_PER_MONTH = 730


@dataclass(frozen=True)
class Managed:
    """A managed offer that does what one of our services does, at its smallest sensible tier.

    ``monthly`` is the list price of a month (730 hours) of it running, or None where there
    is no flat price to state: billed by usage, or not confirmed; ``note`` then says which,
    and on what basis. ``read_on`` is the date the price was read (or, where the note says
    so, written down without being confirmed on the page).
    """

    service: str
    offer: str
    currency: str
    monthly: float | None
    source: str
    read_on: str
    note: str = ""


@dataclass(frozen=True)
class Service:
    """One service's declaration: the answers every service gives, in the same order."""

    name: str
    image: str  # pinned (repository:version, never a floating tag): what the server pulls for it;
    # for an image built on the server (jupyter), the base its Dockerfile starts FROM
    memory_mb: int  # sum of its long-running containers' memory limits; counted against the server size
    requires: tuple[str, ...]  # services that must be enabled with it
    settings: type[ServiceSettings]  # its mlox:services.<name> block; the docstring is its summary
    compose: Callable[[Context], dict]
    routes: Callable[[Context], list[Route]]
    files: Callable[[Context], dict[str, str]]
    data: Callable[[Context], Data]
    component: type  # a ServiceComponent: (name, ctx, servers, deps, opts), a pulumi.ComponentResource when built
    managed: Callable[[Context], tuple[Managed, ...]]  # managed equivalents, at least one
    preset: str = "full"  # the smallest preset that enables it (PRESETS)
    # A budget that grows with the settings (one per served model); memory_mb is then its floor.
    memory: Callable[[Context], int] | None = None
    # What clients need of it (Face): endpoint, auth, settings, health path.
    faces: tuple[Face, ...] = ()

    def memory_for(self, ctx: Context) -> int:
        """The main container's memory limit for this config."""
        return self.memory(ctx) if self.memory is not None else self.memory_mb

    @property
    def summary(self) -> str:
        return (self.settings.__doc__ or "").strip().splitlines()[0] if self.settings.__doc__ else ""


class ContractError(ValueError):
    """A service file that misses part of the contract (a bug in the service, not in a stack)."""


_FLOATING_TAGS = {"latest", "stable", "main", "master", "edge", "nightly"}


def check_service(service: Service, known: set[str]) -> None:
    """Check the static part of a service's contract; raise ContractError naming what is missing."""
    def fail(problem: str) -> None:
        raise ContractError(f"service {service.name!r}: {problem}")

    if not service.name or not service.name.replace("-", "").isalnum() or service.name != service.name.lower():
        fail("name must be lowercase letters, digits and dashes")
    repo, _, tag = service.image.rpartition(":")
    if not repo or "/" in tag or not tag or tag in _FLOATING_TAGS:
        fail(f"image {service.image!r} is not pinned to a version (repository:version)")
    if not isinstance(service.memory_mb, int) or service.memory_mb < 16:
        fail("memory_mb must be a measured budget of at least 16 MiB")
    for needed in service.requires:
        if needed not in known or needed == service.name:
            fail(f"requires unknown service {needed!r}")
    if not (isinstance(service.settings, type) and issubclass(service.settings, ServiceSettings)):
        fail("settings must subclass ServiceSettings")
    if service.preset not in PRESETS:
        fail(f"preset must be one of {', '.join(PRESETS)}")
    if not service.summary:
        fail("settings class needs a docstring (its first line is the service's summary)")
    if not (isinstance(service.component, type) and issubclass(service.component, ServiceComponent)):
        fail("component must be a ServiceComponent (a Pulumi component built when deploying)")
    for fn in ("compose", "routes", "files", "data", "managed"):
        if not callable(getattr(service, fn)):
            fail(f"{fn} must be a function of the context")
    for face in service.faces:
        _check_face(face, fail)


# Where a face's setting may come from: the stack outputs clients read (see components/stack.py).
FACE_SOURCES = frozenset({"urls", "mlflow_tracking_uri", "s3_endpoint", "ui_user", "ui_passwords", "login_passwords",
                          "api_tokens", "s3_access_key", "s3_secret_key", "s3_buckets", "client_secrets"})


def _check_face(face: Face, fail: Callable[[str], None]) -> None:
    import re

    if not isinstance(face, Face):
        fail("faces must hold Face declarations")
    if face.auth not in FACE_AUTH:
        fail(f"face {face.key!r}: auth must be one of {', '.join(FACE_AUTH)}")
    if face.templated != (face.route is not None and face.route.endswith("*")):
        fail(f"face {face.key!r}: a key ending in '*' needs a route ending in '*', and only it")
    if not face.health.startswith("/"):
        fail(f"face {face.key!r}: health must be a path starting with '/'")
    for role, (variable, source) in face.settings.items():
        if not re.fullmatch(r"[A-Z][A-Z0-9_]*(\{ROUTE\}[A-Z0-9_]*)?", variable):
            fail(f"face {face.key!r}: {role}: {variable!r} is not an environment variable name")
        if source is not None and not source.startswith("=") and source.split(".", 1)[0] not in FACE_SOURCES:
            fail(f"face {face.key!r}: {role}: source {source!r} is not a stack output clients read "
                 f"(allowed: {', '.join(sorted(FACE_SOURCES))}, '=literal' or None)")


def check_managed(service: Service, ctx: Context) -> None:
    """Check a service's managed equivalents: at least one, each filed under the service, with
    an https source, the date its price was read, and a price or a note on how it is billed."""
    import datetime

    def fail(problem: str) -> None:
        raise ContractError(f"service {service.name!r}: {problem}")

    offers = service.managed(ctx)
    if not offers:
        fail("managed(ctx) names no managed equivalent (at least one, with its list price or how it is billed)")
    for offer in offers:
        if offer.service != service.name:
            fail(f"managed equivalent {offer.offer!r} is filed under {offer.service!r}")
        if not offer.source.startswith("https://"):
            fail(f"managed equivalent {offer.offer!r} has no https source")
        try:
            datetime.date.fromisoformat(offer.read_on)
        except (TypeError, ValueError):
            fail(f"managed equivalent {offer.offer!r} has no read_on date (YYYY-MM-DD)")
        if offer.monthly is None and not offer.note:
            fail(f"managed equivalent {offer.offer!r} has no monthly price and no note saying how it is billed")


def check_compose(service: Service, ctx: Context) -> None:
    """Check what a service renders for a config: health checks, memory limits, declared
    volumes, authenticated routes. Run for every service on every render, and by the tests
    with everything enabled, so a broken service fails a unit test rather than a deploy."""

    def fail(problem: str) -> None:
        raise ContractError(f"service {service.name!r}: {problem}")

    part = service.compose(ctx)
    data = service.data(ctx)
    if not isinstance(data, Data):
        fail("data(ctx) must return a Data")
    declared = data.declared_volumes()
    for volume in part.get("volumes", {}):
        if volume not in declared:
            fail(f"volume {volume!r} is neither kept (Data.volumes) nor explained (Data.not_kept)")
    for volume in declared:
        if volume not in part.get("volumes", {}):
            fail(f"declares volume {volume!r} that its compose part does not define")
    containers = part.get("services", {})
    # A store configured as external (postgres, seaweedfs) runs no container of its own name.
    if service.name not in containers and service.memory_for(ctx) > 0:
        fail(f"compose part has no container named {service.name!r}")
    for cname, spec in containers.items():
        if not spec.get("healthcheck", {}).get("test"):
            fail(f"container {cname!r} has no health check")
        memory = spec.get("deploy", {}).get("resources", {}).get("limits", {}).get("memory")
        if not memory:
            fail(f"container {cname!r} has no memory limit")
        if spec.get("image", "").rpartition(":")[2] in _FLOATING_TAGS:
            fail(f"container {cname!r} uses a floating image tag")
        for mount in spec.get("volumes", []):
            source = mount.split(":", 1)[0] if isinstance(mount, str) else mount.get("source", "")
            if source and not source.startswith((".", "/")) and source not in part.get("volumes", {}):
                fail(f"container {cname!r} mounts volume {source!r} its compose part does not define")
    # memory_mb is what the server must have for the service: the limits of its long-running
    # containers (provisioning steps idle once done and are not counted).
    running = {c: spec["deploy"]["resources"]["limits"]["memory"] for c, spec in containers.items()
               if spec["healthcheck"]["test"] != PROVISIONED_CHECK}
    budget = service.memory_for(ctx)
    if len(running) == 1 and running.get(service.name) != f"{budget}M":
        fail(f"container {service.name!r} memory limit {running.get(service.name)!r} differs from memory_mb {budget}")
    total = sum(int(str(m).rstrip("M")) for m in running.values())
    if total != budget:
        fail(f"long-running containers' memory limits sum to {total}M, not memory_mb {budget}")
    routes = service.routes(ctx)
    for route in routes:
        if route.auth not in ("basic", "own"):
            fail(f"route {route.name!r} has no authentication (auth must be 'basic' or 'own')")
    for face in service.faces:
        ways_in = [r.name for r in routes if face.matches(r.name)] if face.route is not None else [None]
        if face.route is not None and not face.templated and not ways_in and routes:
            fail(f"face {face.key!r}: route {face.route!r} is not one of its routes")
        for route in ways_in:
            inside = face.inside(ctx, route) if face.inside is not None else {}
            unknown = sorted(set(inside) - set(face.settings))
            if unknown:
                fail(f"face {face.key!r}: inside sets {unknown[0]!r}, which is not one of its settings")
