"""``mlox-iac ui`` as a user starts it: a process that prints its URL with the token, listens on
127.0.0.1 only, and answers nothing without the token."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ui_fixtures import ui_env  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def ui_process(ui_env):
    project, _ = ui_env
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "mlox_iac.cli.main", "ui", "--no-browser"], cwd=project, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    found = re.search(r"(http://127\.0\.0\.1:(\d+)/\?token=(\S+))", line)
    assert found, line + (proc.stderr.read() if proc.poll() is not None else "")
    yield found.group(1), int(found.group(2)), found.group(3)
    proc.terminate()
    proc.wait(10)
    rest = proc.stderr.read()
    assert "Traceback" not in rest and found.group(3) not in rest, rest[-2000:]  # the token is printed once


def _own_address() -> str | None:
    """An address of this machine other than loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET: no packet is sent by a UDP connect
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_the_url_opens_the_ui_and_nothing_else_does(ui_process):
    import http.cookiejar

    url, port, token = ui_process
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    deadline = time.monotonic() + 20
    while True:
        try:
            page = browser.open(url, timeout=30).read().decode()  # the token's redirect sets the cookie
            break
        except OSError:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    assert 'data-stack="prod"' in page
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30)
    assert refused.value.code == 403
    with pytest.raises(urllib.error.HTTPError) as wrong:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/?token={'x' * len(token)}", timeout=30)
    assert wrong.value.code == 403
    other = _own_address()
    if other is not None:  # bound to loopback: another address of this machine does not answer
        with pytest.raises(OSError):
            socket.create_connection((other, port), timeout=3).close()
