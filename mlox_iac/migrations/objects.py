"""Moving every declared bucket between the server's SeaweedFS and an external S3 store.

``mlox-iac migrate --part objects --to external`` (or ``--to local``): the phases of
``parts.py``; on the server, ``rclone sync`` bucket by bucket (objects replaced or deleted on
the destination move to its ``mlox-before-restore`` bucket), then every object of both sides
read back and compared by key, size and SHA-256 (``mlox_iac/data/parts.py``, built on
``mlox_iac/data/objects.py``). External bucket names carry ``bucket_prefix``.
"""

from __future__ import annotations

from mlox_iac.migrations.parts import PartKind

KIND = PartKind(part="objects", service="seaweedfs", what="buckets", store="store")
