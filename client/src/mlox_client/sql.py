"""Postgres: the team's database (``data``) through SQLAlchemy (``mlox-client[sql]``).

Inside the stack it is reached directly (``postgres:5432`` on the Compose network). From
anywhere else only through the server: the client opens an SSH tunnel with your own key
(``ssh -N -L 127.0.0.1:<free port>:127.0.0.1:15432 <user>@<server>``, where the stack
publishes Postgres on the server's loopback). Your public key must be in the stack's
``mlox:ssh.public_keys`` and your address in ``mlox:ssh.admin_cidrs``; ``MLOX_SSH_IDENTITY``
names another key than ssh's default. The tunnel stays open until ``stack.close()``.
"""

from __future__ import annotations

from typing import Any

from mlox_client._extras import available, need
from mlox_client._secret import reveal
from mlox_client.stack import Service


class Database(Service):
    """The stack's Postgres, as SQLAlchemy URLs and engines."""

    FACE = "postgres"

    def __repr__(self) -> str:
        where = "direct" if self._stack.settings.inside else "through an SSH tunnel"
        return f"<mlox_client.Database {self._value('database')} ({where})>"

    def address(self) -> tuple[str, int]:
        """(host, port) to connect to: the stack's address inside it, else a tunnel's local end."""
        return self._stack.reach(self.FACE, "address", "tunnel")

    @property
    def driver(self) -> str:
        """psycopg 3 when installed (the [sql] extra's), else psycopg2."""
        if not available("psycopg") and available("psycopg2"):
            return "postgresql+psycopg2"
        return "postgresql+psycopg"

    def url(self, database: str | None = None, *, user: str | None = None, password: Any = None):
        """A ``sqlalchemy.engine.URL`` (its ``str`` and ``repr`` hide the password).

        By default the team's database with its login; ``database``/``user``/``password`` for
        another (a service's database: the Feast offline store's, say).
        """
        engine_url = need("sqlalchemy.engine", "sql", "stack.postgres.url()")
        host, port = self.address()
        return engine_url.URL.create(
            self.driver, username=user or str(self._value("user")),
            password=reveal(password if password is not None else self._value("password")),
            host=host, port=port, database=database or str(self._value("database")))

    def engine(self, database: str | None = None, *, user: str | None = None, password: Any = None, **kwargs):
        """A SQLAlchemy engine of :meth:`url` (``pool_pre_ping``: a tunnel or a restart may drop
        connections); ``kwargs`` go to ``create_engine``."""
        sqlalchemy = need("sqlalchemy", "sql", "stack.postgres.engine()")
        kwargs.setdefault("pool_pre_ping", True)
        return sqlalchemy.create_engine(self.url(database, user=user, password=password), **kwargs)
