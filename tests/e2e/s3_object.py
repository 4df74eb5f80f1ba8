"""boto3 against a deployed stack, configured only by what ``mlox-iac env`` exports (endpoint,
keys and the stack's CA), as user code would be. Prints one JSON line.

    python s3_object.py put BUCKET KEY MIB   # MIB MiB of random bytes, uploaded (multipart)
    python s3_object.py get BUCKET KEY       # downloaded again
    -> {"key": KEY, "bytes": N, "sha256": HEX}
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import boto3


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def main(verb: str, bucket: str, key: str, mib: str = "0") -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "object"
        if verb == "put":
            with path.open("wb") as fh:
                for _ in range(int(mib)):
                    fh.write(os.urandom(1 << 20))
            s3.upload_file(str(path), bucket, key)
        else:
            s3.download_file(bucket, key, str(path))
        print(json.dumps({"key": key, "bytes": path.stat().st_size, "sha256": _sha256(path)}))


if __name__ == "__main__":
    main(*sys.argv[1:])
