"""SSH tunnels to what only the server itself reaches (Postgres, Redis), opened with the
user's own key: the system ``ssh`` with its agent and ``~/.ssh/config``, or the key in
``MLOX_SSH_IDENTITY``. The user's public key must be in the stack's ``mlox:ssh.public_keys``
and their address in ``mlox:ssh.admin_cidrs``: only those reach port 22.

The server is trusted by the host keys recorded when it was bootstrapped (``MLOX_SSH_HOST_KEYS``,
which ``mlox-iac env`` exports), through a known-hosts file of the tunnel's own, with strict
checking: a server whose key differs is refused. Settings from a stack deployed before host
keys were recorded fall back to ssh's ``accept-new`` (trust on first use, then checked)."""

from __future__ import annotations

import atexit
import os
import shlex
import socket
import subprocess
import time
from typing import Sequence

from mlox_client.errors import TunnelError

_OPEN: list["Tunnel"] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def known_hosts_text(host: str, port: int, host_keys: Sequence[str]) -> str:
    """``known_hosts`` lines for the server's recorded keys (``type base64`` each)."""
    name = host if port == 22 else f"[{host}]:{port}"
    lines = [f"{name} {' '.join(key.split()[:2])}" for key in host_keys if len(key.split()) >= 2]
    return "".join(f"{line}\n" for line in lines)


def tunnel_argv(user: str, host: str, port: int, local_port: int, remote: str, *,
                identity: str | None = None, options: Sequence[str] = (),
                known_hosts: str | None = None) -> list[str]:
    """``ssh -N -L 127.0.0.1:<local_port>:<remote> user@host``: never prompts, fails when the
    forward cannot be set up; with ``known_hosts`` (a file of the server's recorded keys) it
    trusts those alone."""
    trust = (["-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}"] if known_hosts
             else ["-o", "StrictHostKeyChecking=accept-new"])
    argv = ["ssh", "-N", "-p", str(port), "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes",
            *trust, "-o", "ServerAliveInterval=30"]
    if identity:
        argv += ["-i", os.path.expanduser(identity), "-o", "IdentitiesOnly=yes"]
    argv += list(options)
    argv += ["-L", f"127.0.0.1:{local_port}:{remote}", f"{user}@{host}"]
    return argv


class Tunnel:
    """One forward, open until :meth:`close` (or the interpreter's exit)."""

    def _known_hosts_file(self) -> str | None:
        """The recorded keys in a file of this tunnel's own (a private temporary folder)."""
        text = known_hosts_text(self.host, self.port, self.host_keys)
        if not text:
            return None
        if self._known_hosts is None:
            import tempfile

            folder = tempfile.mkdtemp(prefix="mlox-ssh-")  # 0700
            path = os.path.join(folder, "known_hosts")
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
                file.write(text)
            self._known_hosts = path
        return self._known_hosts

    def __init__(self, user: str, host: str, port: int, remote: str, *, identity: str | None = None,
                 host_keys: Sequence[str] = (), timeout: float = 30) -> None:
        self.user, self.host, self.port, self.remote = user, host, port, remote
        self.identity = identity
        self.host_keys = tuple(host_keys)
        self._known_hosts: str | None = None
        self.timeout = timeout
        self.local_port: int | None = None
        self._proc: subprocess.Popen | None = None

    def __repr__(self) -> str:
        state = f"127.0.0.1:{self.local_port}" if self._proc else "closed"
        return f"<Tunnel {state} -> {self.remote} via {self.user}@{self.host}:{self.port}>"

    def open(self) -> tuple[str, int]:
        """Start ssh and wait until the local end accepts connections; (host, port) to connect to."""
        if self._proc is not None and self._proc.poll() is None:
            return "127.0.0.1", int(self.local_port)  # type: ignore[arg-type]
        self.local_port = free_port()
        options = shlex.split(os.environ.get("MLOX_SSH_OPTS", ""))
        argv = tunnel_argv(self.user, self.host, self.port, self.local_port, self.remote,
                           identity=self.identity, options=options, known_hosts=self._known_hosts_file())
        try:
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE, text=True, start_new_session=True)
        except FileNotFoundError:
            raise TunnelError("ssh is not installed: install the OpenSSH client (the tunnel needs it)") from None
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                stderr = (self._proc.stderr.read() if self._proc.stderr else "") or ""
                reason = [line for line in stderr.splitlines() if line.strip()][-1:] or [f"exit {self._proc.returncode}"]
                self._proc = None
                if "host key verification failed" in reason[0].lower() and self.host_keys:
                    raise TunnelError(
                        f"the server {self.host} did not show the SSH host key recorded when it was bootstrapped: if "
                        "it was rebuilt, run mlox-iac up --replace main-host-keys and export the settings again "
                        "(mlox-iac env); otherwise do not connect, someone may be intercepting the connection")
                raise TunnelError(
                    f"the SSH tunnel to {self.remote} on {self.host} did not open ({reason[0]}): your key must be in "
                    "mlox:ssh.public_keys and your address in mlox:ssh.admin_cidrs; set MLOX_SSH_IDENTITY to use "
                    "another key")
            try:
                socket.create_connection(("127.0.0.1", self.local_port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            self.close()
            raise TunnelError(f"the SSH tunnel to {self.remote} on {self.host} did not open within {self.timeout:.0f}s")
        _OPEN.append(self)
        return "127.0.0.1", self.local_port

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc is not None and proc.stderr:
            proc.stderr.close()
        if self in _OPEN:
            _OPEN.remove(self)
        if self._known_hosts is not None:
            import shutil

            shutil.rmtree(os.path.dirname(self._known_hosts), ignore_errors=True)
            self._known_hosts = None


@atexit.register
def _close_all() -> None:
    for tunnel in list(_OPEN):
        tunnel.close()
