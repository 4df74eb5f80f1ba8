"""The registry of services, in dependency order (a service comes after what it needs).

Adding a service: write its module in this package, then add one line here.
"""

from __future__ import annotations

from types import ModuleType

from mlox_iac.components.services import caddy, mlflow, postgres, seaweedfs

SERVICES: dict[str, ModuleType] = {
    "postgres": postgres,
    "seaweedfs": seaweedfs,
    "mlflow": mlflow,
    "caddy": caddy,  # last: it routes to everything above
}
