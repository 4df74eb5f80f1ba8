"""MLflow: tracking and registry, with the stack's user and CA (``mlox-client[mlflow]``)."""

from __future__ import annotations

import os
from types import ModuleType

from mlox_client._extras import need
from mlox_client._secret import reveal
from mlox_client.errors import InsecureTLS

from mlox_client.stack import Service

_TRUTHY = ("1", "true", "yes", "on")


class Tracking(Service):
    """The stack's MLflow. :meth:`configure` (which ``connect()`` runs) sets MLflow's own
    variables, so plain ``import mlflow`` code logs to the stack."""

    FACE = "mlflow"

    def __repr__(self) -> str:
        return f"<mlox_client.Tracking {self.tracking_uri}>"

    @property
    def tracking_uri(self) -> str:
        return str(self._value("url"))

    def env(self) -> dict[str, str]:
        """MLflow's variables, credentials in clear (for a subprocess's environment)."""
        settings = self._stack.settings
        env = {"MLFLOW_TRACKING_URI": self.tracking_uri}
        if not settings.inside:  # inside the stack MLflow is reached past the proxy: no login
            for role, variable in (("user", "MLFLOW_TRACKING_USERNAME"), ("password", "MLFLOW_TRACKING_PASSWORD")):
                env[variable] = str(reveal(self._value(role)))
        if settings.ca_file:
            env["MLFLOW_TRACKING_SERVER_CERT_PATH"] = settings.ca_file
            bundle = settings.env.get("REQUESTS_CA_BUNDLE")
            # MLflow fetches presigned S3 URLs with plain requests, which trusts only this bundle
            # (the system's roots plus the stack's, as mlox-iac env writes it).
            if bundle and not os.environ.get("REQUESTS_CA_BUNDLE"):
                env["REQUESTS_CA_BUNDLE"] = bundle
        return env

    def configure(self) -> None:
        """Point MLflow at the stack (its variables in this process's environment)."""
        insecure = os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower()
        if insecure in _TRUTHY:
            raise InsecureTLS("MLFLOW_TRACKING_INSECURE_TLS is set: mlox-client verifies the stack's certificate "
                              "against its CA instead; unset it")
        os.environ.update(self.env())

    def module(self) -> ModuleType:
        """``mlflow``, configured for the stack."""
        mlflow = need("mlflow", "mlflow", "stack.mlflow.module()")
        self.configure()
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        return mlflow

    def client(self):
        """An ``mlflow.MlflowClient`` for the stack's tracking server and registry."""
        mlflow = self.module()
        return mlflow.MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
