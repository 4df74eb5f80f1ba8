"""Object storage: the stack's S3 (SeaweedFS), path-style, TLS verified against the stack's CA
(``mlox-client[s3]``: boto3, s3fs, pyarrow)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from mlox_client._extras import need
from mlox_client._secret import reveal
from mlox_client.stack import Service

REGION = "us-east-1"  # SeaweedFS accepts any; signatures need one


class Storage(Service):
    """The stack's S3: for boto3 (:meth:`client`), fsspec and pandas (:attr:`storage_options`),
    pyarrow (:meth:`filesystem`), and ``s3://bucket/key`` URLs (:meth:`url`)."""

    FACE = "s3"

    def __repr__(self) -> str:
        return f"<mlox_client.Storage {self.endpoint} buckets={','.join(self.buckets)}>"

    @property
    def endpoint(self) -> str:
        return str(self._value("url"))

    @property
    def buckets(self) -> list[str]:
        value = self._value("buckets", required=False)
        return [b for b in str(value or "").split(",") if b]

    def url(self, bucket: str, key: str = "") -> str:
        """``s3://bucket/key``: what pandas, polars (through :meth:`open`) and fsspec read and write."""
        return f"s3://{bucket}/{key.lstrip('/')}"

    @property
    def _verify(self) -> str | bool:
        return self._stack.settings.ca_file or True  # never False

    def client_kwargs(self) -> dict[str, Any]:
        """What ``boto3.client("s3", **kwargs)`` needs (credentials in clear; never print it)."""
        botocore_config = need("botocore.config", "s3", "stack.s3.client()")
        return {
            "endpoint_url": self.endpoint,
            "aws_access_key_id": reveal(self._value("access_key")),
            "aws_secret_access_key": reveal(self._value("secret_key")),
            "region_name": REGION,
            "verify": self._verify,
            "config": botocore_config.Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
        }

    def client(self):
        """A boto3 S3 client for the stack."""
        boto3 = need("boto3", "s3", "stack.s3.client()")
        return boto3.session.Session().client("s3", **self.client_kwargs())

    @property
    def storage_options(self) -> dict[str, Any]:
        """fsspec/s3fs options: ``pd.read_parquet(url, storage_options=stack.s3.storage_options)``
        (credentials in clear; never print them)."""
        client_kwargs: dict[str, Any] = {"region_name": REGION}
        if self._stack.settings.ca_file:
            client_kwargs["verify"] = self._stack.settings.ca_file
        return {
            "key": reveal(self._value("access_key")),
            "secret": reveal(self._value("secret_key")),
            "endpoint_url": self.endpoint,
            "client_kwargs": client_kwargs,
            "config_kwargs": {"s3": {"addressing_style": "path"}},
        }

    def fsspec(self):
        """An ``s3fs.S3FileSystem`` for the stack."""
        s3fs = need("s3fs", "s3", "stack.s3.fsspec()")
        return s3fs.S3FileSystem(**self.storage_options)

    def open(self, url: str, mode: str = "rb"):
        """A file object for an ``s3://`` URL (for polars and anything else that takes one)."""
        return self.fsspec().open(url, mode)

    def filesystem(self):
        """A ``pyarrow.fs.S3FileSystem`` for the stack; paths are ``bucket/key``.

        pyarrow ignores the usual variables (``AWS_ENDPOINT_URL_S3``, ``AWS_CA_BUNDLE``): this
        passes the endpoint and the CA itself.
        """
        fs = need("pyarrow.fs", "s3", "stack.s3.filesystem()")
        parts = urlsplit(self.endpoint)
        kwargs: dict[str, Any] = {
            "access_key": reveal(self._value("access_key")),
            "secret_key": reveal(self._value("secret_key")),
            "endpoint_override": parts.netloc,
            "scheme": parts.scheme,
            "region": REGION,
        }
        if self._stack.settings.ca_file:
            kwargs["tls_ca_file_path"] = self._stack.settings.ca_file
        try:
            return fs.S3FileSystem(**kwargs)
        except TypeError:
            if "tls_ca_file_path" not in kwargs:
                raise
            from mlox_client.errors import MissingExtra

            raise MissingExtra("trusting the stack's CA needs pyarrow 21 or newer: pip install 'mlox-client[s3]'") from None
