"""The SSH tunnel to what only the server reaches (Postgres, Redis), with a stand-in ``ssh``
on PATH that forwards like the real one (or refuses the key like a server would)."""

from __future__ import annotations

import json
import socket
import sys
import threading

import pytest
from client_helpers import clean, exported, write_profile  # noqa: F401 (clean: a fixture)

import mlox_client
from mlox_client import TunnelError
from mlox_client._tunnel import tunnel_argv

FAKE_SSH = """#!{python}
# Stand-in for ssh -N -L: records its argv; forwards 127.0.0.1:LOCAL to REMOTE (or refuses).
import json, os, socket, sys, threading
open(os.environ["FAKE_SSH_LOG"], "a").write(json.dumps(sys.argv[1:]) + "\\n")
if os.environ.get("FAKE_SSH_DENY"):
    sys.stderr.write("Warning: Permanently added '203.0.113.9' (ED25519) to the list of known hosts.\\n")
    sys.stderr.write(os.environ.get("FAKE_SSH_DENY_MESSAGE", "root@203.0.113.9: Permission denied (publickey).") + "\\n")
    sys.exit(255)
_, local, rhost, rport = sys.argv[sys.argv.index("-L") + 1].split(":")
listener = socket.create_server(("127.0.0.1", int(local)))

def pipe(a, b):
    while (data := a.recv(65536)):
        b.sendall(data)
    b.close()

while True:
    conn, _ = listener.accept()
    upstream = socket.create_connection((rhost, int(rport)))
    threading.Thread(target=pipe, args=(conn, upstream), daemon=True).start()
    threading.Thread(target=pipe, args=(upstream, conn), daemon=True).start()
"""


@pytest.fixture
def fake_ssh(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ssh = bin_dir / "ssh"
    ssh.write_text(FAKE_SSH.format(python=sys.executable))
    ssh.chmod(0o755)
    log = tmp_path / "ssh.log"
    monkeypatch.setenv("PATH", f"{bin_dir}:" + __import__("os").environ["PATH"])
    monkeypatch.setenv("FAKE_SSH_LOG", str(log))
    return lambda: [json.loads(line) for line in log.read_text().splitlines()]


@pytest.fixture
def echo_server():
    server = socket.create_server(("127.0.0.1", 0))

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"echo:" + conn.recv(100))

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


def test_tunnel_argv_never_prompts_and_uses_the_given_key():
    assert tunnel_argv("admin", "203.0.113.9", 2222, 50001, "127.0.0.1:15432", identity="/k/id_ed25519",
                       options=["-o", "UserKnownHostsFile=/dev/null"]) == [
        "ssh", "-N", "-p", "2222", "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes",
        "-o", "StrictHostKeyChecking=accept-new", "-o", "ServerAliveInterval=30",
        "-i", "/k/id_ed25519", "-o", "IdentitiesOnly=yes", "-o", "UserKnownHostsFile=/dev/null",
        "-L", "127.0.0.1:50001:127.0.0.1:15432", "admin@203.0.113.9",
    ]


def test_postgres_from_a_laptop_through_the_tunnel(clean, fake_ssh, echo_server, monkeypatch):
    monkeypatch.setenv("MLOX_SSH_IDENTITY", "/keys/mine")
    env = exported()
    env["MLOX_POSTGRES_TUNNEL"] = f"127.0.0.1:{echo_server}"  # the server's end, here the echo server
    write_profile(clean, "dev", env)
    with mlox_client.connect() as stack:
        host, port = stack.postgres.address()
        assert stack.postgres.address() == (host, port)  # opened once
        with socket.create_connection((host, port), timeout=5) as conn:
            conn.sendall(b"SELECT 1")
            assert conn.recv(100) == b"echo:SELECT 1"
        (argv,) = fake_ssh()
        assert argv[argv.index("-p") + 1] == "22" and argv[-1] == "root@203.0.113.9"
        assert argv[argv.index("-i") + 1] == "/keys/mine"
    with pytest.raises(OSError):  # closed with the stack
        socket.create_connection((host, port), timeout=1)


def test_a_refused_key_says_what_the_stack_must_allow(clean, fake_ssh, monkeypatch):
    monkeypatch.setenv("FAKE_SSH_DENY", "1")
    write_profile(clean, "dev", exported())
    stack = mlox_client.connect()
    with pytest.raises(TunnelError) as err:
        stack.postgres.address()
    assert str(err.value) == (
        "the SSH tunnel to 127.0.0.1:15432 on 203.0.113.9 did not open (root@203.0.113.9: Permission denied "
        "(publickey).): your key must be in mlox:ssh.public_keys and your address in mlox:ssh.admin_cidrs; set "
        "MLOX_SSH_IDENTITY to use another key")


HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKeyOfTheServerRecordedAtBootstrap0000000"


def test_recorded_host_keys_are_trusted_alone_in_a_private_file(clean, fake_ssh, echo_server, monkeypatch):
    env = exported()
    env["MLOX_POSTGRES_TUNNEL"] = f"127.0.0.1:{echo_server}"
    env["MLOX_SSH_HOST_KEYS"] = f"{HOST_KEY},ecdsa-sha2-nistp256 AAAAE2VjZHNh"
    write_profile(clean, "dev", env)
    import os
    import stat

    with mlox_client.connect() as stack:
        stack.postgres.address()
        (argv,) = fake_ssh()
        assert argv[argv.index("StrictHostKeyChecking=yes") - 1] == "-o"
        assert "StrictHostKeyChecking=accept-new" not in argv
        known = next(a.split("=", 1)[1] for a in argv if a.startswith("UserKnownHostsFile="))
        assert open(known).read() == f"203.0.113.9 {HOST_KEY}\n203.0.113.9 ecdsa-sha2-nistp256 AAAAE2VjZHNh\n"
        assert stat.S_IMODE(os.stat(known).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(known)).st_mode) == 0o700
    assert not os.path.exists(known)  # removed with the tunnel


def test_a_changed_host_key_is_refused_in_one_line(clean, fake_ssh, monkeypatch):
    monkeypatch.setenv("FAKE_SSH_DENY", "1")
    env = exported()
    env["MLOX_SSH_HOST_KEYS"] = HOST_KEY
    write_profile(clean, "dev", env)
    stack = mlox_client.connect()
    # The stand-in ssh says what OpenSSH says on a key that differs from the known one.
    monkeypatch.setenv("FAKE_SSH_DENY_MESSAGE", "Host key verification failed.")
    with pytest.raises(TunnelError) as err:
        stack.postgres.address()
    assert str(err.value).startswith("the server 203.0.113.9 did not show the SSH host key recorded when it was "
                                     "bootstrapped: if it was rebuilt, run mlox-iac up --replace main-host-keys")
    stack.close()


def test_host_keys_become_known_hosts_lines_for_the_address_and_port():
    from mlox_client._tunnel import known_hosts_text

    assert known_hosts_text("203.0.113.9", 22, [HOST_KEY + " root@host"]) == f"203.0.113.9 {HOST_KEY}\n"
    assert known_hosts_text("203.0.113.9", 2222, [HOST_KEY]) == f"[203.0.113.9]:2222 {HOST_KEY}\n"
    assert known_hosts_text("203.0.113.9", 22, ["", "garbage"]) == ""
