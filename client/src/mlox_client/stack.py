"""A connected stack: one object that hands out each service, configured."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from mlox_client._settings import Settings, resolve

if TYPE_CHECKING:
    from mlox_client._tunnel import Tunnel
    from mlox_client.features import Features
    from mlox_client.labeling import Labeling
    from mlox_client.models import Model
    from mlox_client.pipelines import Pipelines
    from mlox_client.sql import Database
    from mlox_client.storage import Storage
    from mlox_client.tracking import Tracking


class Service:
    """Base of a stack's service accessors: they read the stack's settings, lazily."""

    FACE = ""

    def __init__(self, stack: "Stack") -> None:
        self._stack = stack

    def __repr__(self) -> str:
        return f"<mlox_client.{type(self).__name__} of {self._stack.name!r}>"

    def _value(self, role: str, **kwargs):
        return self._stack.settings.value(self.FACE, role, **kwargs)


class Stack:
    """One mlox stack's services, as its settings describe them.

    Each service is an attribute made on first use: ``mlflow``, ``s3``, ``postgres``,
    ``feast``, ``airflow``, ``label_studio``, and :meth:`model` for a served model. A service
    the stack does not run raises :class:`~mlox_client.errors.NotInStack` naming the setting
    that turns it on. :meth:`close` (or ``with``) closes the SSH tunnels it opened.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._services: dict[str, Service] = {}
        self._tunnels: dict[str, Tunnel] = {}

    @property
    def name(self) -> str:
        return self.settings.stack

    @property
    def source(self) -> str:
        """Where the settings came from (for messages)."""
        return self.settings.source

    @property
    def services(self) -> tuple[str, ...]:
        return self.settings.services or ()

    def __repr__(self) -> str:
        return f"<mlox_client.Stack {self.name!r} from {self.source}: {', '.join(self.services) or 'services unknown'}>"

    # ----- services (each imported when first used) -------------------------------------

    @property
    def mlflow(self) -> "Tracking":
        from mlox_client.tracking import Tracking

        return self._once("mlflow", Tracking)

    @property
    def s3(self) -> "Storage":
        from mlox_client.storage import Storage

        return self._once("s3", Storage)

    @property
    def postgres(self) -> "Database":
        from mlox_client.sql import Database

        return self._once("postgres", Database)

    @property
    def feast(self) -> "Features":
        from mlox_client.features import Features

        return self._once("feast", Features)

    @property
    def airflow(self) -> "Pipelines":
        from mlox_client.pipelines import Pipelines

        return self._once("airflow", Pipelines)

    @property
    def label_studio(self) -> "Labeling":
        from mlox_client.labeling import Labeling

        return self._once("label-studio", Labeling)

    def model(self, name: str) -> "Model":
        """A served model by its registered name (``stack.model("churn").predict(df)``)."""
        from mlox_client.models import Model

        return Model(self, name)

    @property
    def models(self) -> list[str]:
        """The routes of the served models (``model-<name>``)."""
        return self.settings.routes("model-*")

    def _once(self, key: str, make):
        if key not in self._services:
            self.settings.face(key)  # NotInStack, with the setting that enables it
            self._services[key] = make(self)
        return self._services[key]

    # ----- tunnels ----------------------------------------------------------------------

    def reach(self, key: str, direct: str, tunnel: str) -> tuple[str, int]:
        """(host, port) of something only the server reaches (Postgres, Redis): the face's
        ``direct`` address inside the stack, else a tunnel to its ``tunnel`` address."""
        address = self.settings.value(key, direct, required=False)
        if address:
            host, _, port = str(address).rpartition(":")
            return host, int(port)
        return self.tunnel(str(self.settings.value(key, tunnel)))

    def tunnel(self, remote: str) -> tuple[str, int]:
        """(host, port) of an SSH tunnel to ``remote`` (an address on the server), opened once."""
        from mlox_client._tunnel import Tunnel

        if remote not in self._tunnels:
            settings = self.settings
            host = settings.get("ssh_host")
            if not host:
                from mlox_client.errors import SettingMissing

                raise SettingMissing(f"{settings.variable('ssh_host')} is not set in {settings.source}: the tunnel to "
                                     f"{remote} needs the server's address (export the settings again with mlox-iac env)")
            identity = os.environ.get(settings.variable("ssh_identity")) or settings.get("ssh_identity")
            keys = [k for k in (settings.get("ssh_host_keys") or "").split(",") if k.strip()]
            self._tunnels[remote] = Tunnel(settings.get("ssh_user") or "root", host, int(settings.get("ssh_port") or 22),
                                           remote, identity=identity, host_keys=keys)
        return self._tunnels[remote].open()

    def close(self) -> None:
        """Close the SSH tunnels this stack opened."""
        for tunnel in self._tunnels.values():
            tunnel.close()
        self._tunnels.clear()

    def __enter__(self) -> "Stack":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def connect(stack: str | None = None, *, profile: str | os.PathLike | None = None,
            configure_mlflow: bool = True) -> Stack:
    """Connect to a stack: ``connect()``, ``connect("prod")`` or ``connect(profile=PATH)``.

    The settings come from the first of: the stack or profile named here; environment
    variables (``MLOX_STACK`` and what ``mlox-iac env`` exports); the profile that
    ``mlox-iac env --write-profile`` writes (``~/.config/mlox/<stack>.json``); the stack's own
    containers (``/etc/mlox/client.json``). With none, :class:`~mlox_client.errors.NotConfigured`
    names all four. ``configure_mlflow``: set MLflow's variables so ``import mlflow`` code
    logs to the stack (when it runs MLflow).
    """
    connected = Stack(resolve(stack, profile))
    if configure_mlflow and "mlflow" in connected.services:
        connected.mlflow.configure()
    return connected
