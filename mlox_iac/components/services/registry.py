"""The registry of services, in dependency order (a service comes after what it needs).

Adding a service: write its module in this package (ending with ``SERVICE = Service(...)``),
then add one line here. Each declaration is checked when the registry loads.
"""

from __future__ import annotations

from mlox_iac.components.services import (
    airflow, caddy, feast, home, jupyter, label_studio, mlflow, monitoring, postgres, redis, seaweedfs, serving,
)
from mlox_iac.components.services.base import Service, check_service

_ORDER: list[Service] = [
    postgres.SERVICE,
    seaweedfs.SERVICE,
    mlflow.SERVICE,
    redis.SERVICE,
    feast.SERVICE,
    label_studio.SERVICE,
    airflow.SERVICE,
    jupyter.SERVICE,
    serving.SERVICE,
    monitoring.SERVICE,
    home.SERVICE,  # lists everything above
    caddy.SERVICE,  # last: it routes to everything above
]


def _checked(services: list[Service]) -> dict[str, Service]:
    names = [s.name for s in services]
    if len(set(names)) != len(names):
        raise ValueError(f"a service is registered twice: {names}")
    for service in services:
        check_service(service, set(names))
    keys = [face.key for service in services for face in service.faces]
    if len(set(keys)) != len(keys):
        raise ValueError(f"a client face is declared twice: {keys}")
    return {s.name: s for s in services}


SERVICES: dict[str, Service] = _checked(_ORDER)
