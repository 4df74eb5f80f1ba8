"""Clients of a domain-mode stack, run from the client network namespace, where the test
domain's names resolve (through the test DNS) to the target host. Configured only by the
environment ``mlox-iac env`` exports, as user code would be; prints one JSON line.

    python domain_client.py cert HOST CA_FILE   # the certificate HOST:443 serves, verified against CA_FILE (SNI = HOST)
    python domain_client.py redirect URL        # status and Location of a plain-HTTP request, not followed
    python domain_client.py s3 MARKER           # boto3 put/get/list in the data bucket
    python domain_client.py artifacts MARKER    # MLflow: a 12 MB artifact by presigned multipart upload and download
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import ssl
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit


def cert(host: str, ca_file: str) -> dict:
    context = ssl.create_default_context(cafile=ca_file)
    with socket.create_connection((host, 443), timeout=10) as sock:
        with context.wrap_socket(sock, server_hostname=host) as tls:
            peer = tls.getpeercert()
            der = tls.getpeercert(binary_form=True)
            address = tls.getpeername()[0]
    return {
        "address": address,
        "not_after": peer["notAfter"],
        "serial": peer["serialNumber"],
        "issuer": dict(x[0] for x in peer["issuer"]),
        "names": [value for kind, value in peer.get("subjectAltName", ()) if kind == "DNS"],
        "sha256": hashlib.sha256(der).hexdigest(),
    }


def redirect(url: str) -> dict:
    import requests

    answer = requests.get(url, allow_redirects=False, timeout=10)
    return {"status": answer.status_code, "location": answer.headers.get("Location")}


def s3(marker: str) -> dict:
    import boto3

    client = boto3.client("s3")  # endpoint, keys and CA from the environment
    body = os.urandom(5 * 1024 * 1024)
    key = f"domain-e2e/{marker}.bin"
    client.put_object(Bucket="data", Key=key, Body=body)
    back = client.get_object(Bucket="data", Key=key)["Body"].read()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="data", Prefix="domain-e2e/").get("Contents", [])]
    return {"equal": back == body, "listed": key in keys, "endpoint": client.meta.endpoint_url}


def artifacts(marker: str) -> dict:
    # Make a 12 MB file "large", so the client takes the paths real large artifacts take:
    # multipart upload and download through presigned URLs at S3's public URL.
    os.environ["MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE"] = str(1024 * 1024)
    os.environ["MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE"] = str(5 * 1024 * 1024)
    os.environ["MLFLOW_MULTIPART_DOWNLOAD_MINIMUM_FILE_SIZE"] = str(1024 * 1024)
    os.environ["MLFLOW_MULTIPART_DOWNLOAD_CHUNK_SIZE"] = str(5 * 1024 * 1024)
    import mlflow
    import requests
    from mlflow.artifacts import download_artifacts
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    data = os.urandom(12 * 1024 * 1024)
    mlflow.set_experiment(f"domain-{marker}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"large-{marker}.bin"
        path.write_bytes(data)
        with mlflow.start_run() as run:
            mlflow.log_artifact(str(path))
        repo = get_artifact_repository(run.info.artifact_uri)
        presigned = repo._get_presigned_download_url(path.name)
        direct = requests.get(presigned.url, headers=presigned.headers, timeout=60)  # REQUESTS_CA_BUNDLE
        local = download_artifacts(run_id=run.info.run_id, artifact_path=path.name, dst_path=str(Path(tmp) / "back"))
        back = Path(local).read_bytes()
    return {
        "presigned_host": urlsplit(presigned.url).hostname,
        "presigned_status": direct.status_code,
        "presigned_equal": direct.content == data,
        "download_equal": back == data,
        "repository": type(repo).__name__,
    }


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    print(json.dumps({"cert": cert, "redirect": redirect, "s3": s3, "artifacts": artifacts}[command](*args)))
