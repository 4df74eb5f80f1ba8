"""SSH tunnels to what only the server itself reaches (Postgres, Redis), opened with the
user's own key: the system ``ssh`` with its agent and ``~/.ssh/config``, or the key in
``MLOX_SSH_IDENTITY``. The user's public key must be in the stack's ``mlox:ssh.public_keys``
and their address in ``mlox:ssh.admin_cidrs``: only those reach port 22."""

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


def tunnel_argv(user: str, host: str, port: int, local_port: int, remote: str, *,
                identity: str | None = None, options: Sequence[str] = ()) -> list[str]:
    """``ssh -N -L 127.0.0.1:<local_port>:<remote> user@host``: never prompts, fails when the
    forward cannot be set up."""
    argv = ["ssh", "-N", "-p", str(port), "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes",
            "-o", "StrictHostKeyChecking=accept-new", "-o", "ServerAliveInterval=30"]
    if identity:
        argv += ["-i", os.path.expanduser(identity), "-o", "IdentitiesOnly=yes"]
    argv += list(options)
    argv += ["-L", f"127.0.0.1:{local_port}:{remote}", f"{user}@{host}"]
    return argv


class Tunnel:
    """One forward, open until :meth:`close` (or the interpreter's exit)."""

    def __init__(self, user: str, host: str, port: int, remote: str, *, identity: str | None = None,
                 timeout: float = 30) -> None:
        self.user, self.host, self.port, self.remote = user, host, port, remote
        self.identity = identity
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
                           identity=self.identity, options=options)
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


@atexit.register
def _close_all() -> None:
    for tunnel in list(_OPEN):
        tunnel.close()
