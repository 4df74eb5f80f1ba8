"""``mlox_data move-*`` pieces that need no server: the maintenance config of the proxy."""

from __future__ import annotations

import json
import subprocess

from conftest import tool
from mlox_iac.data import move

ADAPTED = {
    "apps": {"http": {"servers": {"srv0": {
        "listen": [":443"],
        "routes": [
            {"match": [{"host": ["203.0.113.10"]}],
             "handle": [{"handler": "subroute", "routes": [{"handle": [{"handler": "reverse_proxy"}]}]}],
             "terminal": True},
        ],
    }}}, "tls": {"automation": {"policies": [{"subjects": ["203.0.113.10"], "issuers": [{"module": "internal"}]}]}}},
}


def test_maintenance_answers_503_with_retry_after_on_the_same_sites_and_tls():
    config = move.maintenance_config(json.loads(json.dumps(ADAPTED)))
    route = config["apps"]["http"]["servers"]["srv0"]["routes"][0]
    assert route["match"] == [{"host": ["203.0.113.10"]}]  # same sites: automatic HTTPS keeps its certificates
    (handler,) = route["handle"]
    assert handler["handler"] == "static_response" and handler["status_code"] == 503
    assert handler["headers"]["Retry-After"] == [str(move.RETRY_AFTER_S)]
    assert config["apps"]["tls"] == ADAPTED["apps"]["tls"]


def test_maintenance_config_is_valid_for_caddy(tmp_path):
    caddy = tool("caddy")
    path = tmp_path / "maintenance.json"
    path.write_text(json.dumps(move.maintenance_config(json.loads(json.dumps(ADAPTED)))))
    done = subprocess.run([caddy, "validate", "--config", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-500:]
