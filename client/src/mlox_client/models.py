"""Served models: ``stack.model("churn").predict(df)``, MLflow's scoring protocol over HTTPS
with the model's own password (no extra: pandas only if you pass a DataFrame)."""

from __future__ import annotations

import json
import re
from typing import Any

from mlox_client import _http
from mlox_client.errors import NotInStack
from mlox_client.stack import Service, Stack


def route_name(model: str) -> str:
    """``model-<name>``, as the stack names a served model's route (mlox-iac serving.route_name)."""
    return "model-" + re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")[:50]


class Model(Service):
    """One served model: its URL, the headers to call it with, and :meth:`predict`."""

    FACE = "model-*"

    def __init__(self, stack: Stack, name: str) -> None:
        super().__init__(stack)
        self.name = name
        self.route = route_name(name)
        served = stack.settings.routes(self.FACE)
        if self.route not in served:
            raise NotInStack(f"the stack {stack.name!r} serves no model {name!r} (it serves: "
                             f"{', '.join(r[len('model-'):] for r in served) or 'none'}): add it to "
                             "mlox:services.serving.models and run mlox-iac up")

    def __repr__(self) -> str:
        return f"<mlox_client.Model {self.name} {self.url}>"

    @property
    def url(self) -> str:
        """The model's base URL (``/invocations``, ``/ping``, ``/version`` are under it)."""
        return str(self._value("url", route=self.route)).rstrip("/")

    def headers(self) -> dict[str, str]:
        """Headers for your own HTTP client (the ``Authorization`` header holds the password)."""
        headers = {"Content-Type": "application/json"}
        if not self._stack.settings.inside:  # inside the stack the model is reached past the proxy
            headers["Authorization"] = _http.basic_auth(str(self._value("user", route=self.route)),
                                                        self._value("password", route=self.route))
        return headers

    def predict(self, data: Any, timeout: float = 60) -> Any:
        """Score ``data`` (a pandas DataFrame, a dict in MLflow's format, or rows); the predictions."""
        _, payload = _http.request("POST", self.url + "/invocations", ca_file=self._stack.settings.ca_file,
                                   headers=self.headers(), data=_body(data), timeout=timeout)
        answer = json.loads(payload)
        return answer["predictions"] if isinstance(answer, dict) and "predictions" in answer else answer


def _body(data: Any) -> bytes:
    """MLflow's scoring input: a DataFrame as ``dataframe_split``; a dict as it is (already in
    MLflow's format); anything else as ``inputs``."""
    if hasattr(data, "to_json") and hasattr(data, "columns"):  # a pandas DataFrame, without importing pandas
        return ('{"dataframe_split": ' + data.to_json(orient="split", date_format="iso") + "}").encode()
    if isinstance(data, dict):
        return json.dumps(data).encode()
    if hasattr(data, "tolist"):  # numpy
        data = data.tolist()
    return json.dumps({"inputs": data}).encode()
