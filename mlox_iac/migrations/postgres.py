"""Moving every declared database between the server's Postgres and an external server.

``mlox-iac migrate --part postgres --to external`` (or ``--to local``): the phases of
``parts.py``; on the server, each database dumped in one snapshot, restored into a scratch
database on the destination, verified (per table row count and content checksum), and
swapped in by rename, the database it replaces kept as ``<db>__mlox_before_restore``
(``mlox_iac/data/parts.py``, built on ``mlox_iac/data/postgres.py``). The external server is
reached over verified TLS as its admin role, which the provisioning step made a member of
every service's role; the roles and their passwords are the stack's own on both sides.
"""

from __future__ import annotations

from mlox_iac.migrations.parts import PartKind

KIND = PartKind(part="postgres", service="postgres", what="databases", store="server")
