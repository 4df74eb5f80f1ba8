"""Label Studio: the SDK's client with the admin's API token (``mlox-client[labelstudio]``)."""

from __future__ import annotations

from mlox_client._extras import need
from mlox_client._secret import reveal
from mlox_client.stack import Service


class Labeling(Service):
    """The stack's Label Studio."""

    FACE = "label-studio"

    def __repr__(self) -> str:
        return f"<mlox_client.Labeling {self.url}>"

    @property
    def url(self) -> str:
        return str(self._value("url")).rstrip("/")

    def headers(self) -> dict[str, str]:
        """For your own HTTP client (the ``Authorization`` header holds the token)."""
        return {"Authorization": f"Token {reveal(self._value('token'))}"}

    def client(self):
        """``label_studio_sdk.client.LabelStudio`` for the stack, verifying its certificate."""
        sdk = need("label_studio_sdk.client", "labelstudio", "stack.label_studio.client()")
        httpx = need("httpx", "labelstudio", "stack.label_studio.client()")
        return sdk.LabelStudio(base_url=self.url, api_key=reveal(self._value("token")),
                               httpx_client=httpx.Client(verify=self._stack.settings.ca_file or True, timeout=60))
