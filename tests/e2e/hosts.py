"""The end-to-end tests' target hosts: the product's local machines (``mlox_iac/sandbox/hosts.py``),
with the tests' cache (``MLOX_E2E_CACHE``, default ``~/.cache/mlox-iac-e2e``) and log tag."""

import os
from pathlib import Path

os.environ.setdefault("MLOX_HOSTS_CACHE", str(Path(os.environ.get("MLOX_E2E_CACHE") or "~/.cache/mlox-iac-e2e").expanduser()))
os.environ.setdefault("MLOX_HOSTS_LOG_TAG", "e2e")

from mlox_iac.sandbox.hosts import *  # noqa: E402,F403
from mlox_iac.sandbox.hosts import _rmtree, main  # noqa: E402,F401

if __name__ == "__main__":  # python -m tests.e2e.hosts cleanup|rootfs
    main()
