"""Feast: a FeatureStore on the stack's registry, offline store and online store
(``mlox-client[feast]``), and online features over the feature server's HTTPS API (no extra).

The configuration is the stack's own ``feature_store.yaml``: the SQL registry and the
offline store in Postgres (database ``feast``), the online store in Redis. Inside the stack
both are reached directly; from elsewhere through SSH tunnels (see :mod:`mlox_client.sql`).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from mlox_client import _http
from mlox_client._extras import need
from mlox_client._secret import reveal
from mlox_client.stack import Service


class Features(Service):
    """The stack's Feast."""

    FACE = "feast"

    def __repr__(self) -> str:
        return f"<mlox_client.Features project={self._value('project')}>"

    def config(self, repo_path: str | os.PathLike | None = None) -> dict[str, Any]:
        """The RepoConfig as a dict (credentials in clear; never print it)."""
        database = str(self._value("database"))
        password = reveal(self._value("db_password"))
        pg_host, pg_port = self._stack.postgres.address()
        redis_host, redis_port = self._stack.reach(self.FACE, "redis_address", "redis_tunnel")
        return {
            "project": str(self._value("project")),
            "provider": "local",
            "repo_path": str(repo_path or os.getcwd()),
            "registry": {
                "registry_type": "sql",
                # The password goes to the driver, not into the path that Feast may print.
                "path": f"{self._stack.postgres.driver}://{database}@{pg_host}:{pg_port}/{database}",
                "cache_ttl_seconds": 10,
                "sqlalchemy_config_kwargs": {"pool_pre_ping": True, "connect_args": {"password": password}},
            },
            "offline_store": {"type": "postgres", "host": pg_host, "port": pg_port, "database": database,
                              "db_schema": "public", "user": database, "password": password, "sslmode": "disable"},
            "online_store": {"type": "redis",
                             "connection_string": f"{redis_host}:{redis_port},password={reveal(self._value('redis_password'))}"},
            "entity_key_serialization_version": 3,
        }

    def repo_config(self, repo_path: str | os.PathLike | None = None):
        feast = need("feast", "feast", "stack.feast.repo_config()")
        return feast.RepoConfig(**self.config(repo_path))

    def store(self, repo_path: str | os.PathLike | None = None):
        """A ``feast.FeatureStore`` of the stack (``apply``, ``materialize``, ``get_online_features``)."""
        feast = need("feast", "feast", "stack.feast.store()")
        config = self.repo_config(repo_path)
        return feast.FeatureStore(repo_path=str(config.repo_path), config=config)

    def online_features(self, features: Sequence[str], entities: Mapping[str, Sequence[Any]],
                        timeout: float = 60) -> dict[str, Any]:
        """Online features from the feature server (``POST /get-online-features``), no Feast needed."""
        settings = self._stack.settings
        headers = {}
        if not settings.inside:
            headers["Authorization"] = _http.basic_auth(str(self._value("user")), self._value("password"))
        url = str(self._value("url")).rstrip("/") + "/get-online-features"
        return _http.request_json("POST", url, ca_file=settings.ca_file, headers=headers, timeout=timeout,
                                  body={"features": list(features), "entities": {k: list(v) for k, v in entities.items()}})
