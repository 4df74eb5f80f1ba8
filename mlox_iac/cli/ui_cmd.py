"""``ui``: the web UI, served on this machine's loopback only, with a token in its URL."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mlox_iac.cli.common import CaOpt, IdentityOpt, project_dir

PortOpt = typer.Option(0, "--port", min=0, max=65535, help="Port on 127.0.0.1 (0: a free one)")
NoBrowserOpt = typer.Option(False, "--no-browser", help="Print the URL without opening a browser")


def ui(port: int = PortOpt, no_browser: bool = NoBrowserOpt, identity: Optional[Path] = IdentityOpt,
       ca: Optional[Path] = CaOpt) -> None:
    """Open the web UI: the project's stacks, their health, backups, cost and changes.

    Serves on 127.0.0.1 only and prints a URL with a random token (as
    Jupyter does); requests without it are refused, and every change
    needs a CSRF token. Each action shows the mlox-iac command it runs.
    Stops with Ctrl-C.

    Examples:
      mlox-iac ui
      mlox-iac ui --port 8765 --no-browser
    """
    import socket
    import webbrowser

    import uvicorn

    from mlox_iac.ui.app import create_app
    from mlox_iac.ui.backend import Backend
    from mlox_iac.ui.security import Guard, new_token

    project = project_dir()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))  # loopback only, whatever the machine's other addresses
    guard = Guard(new_token(), sock.getsockname()[1])
    app = create_app(Backend(project, identity=identity, ca=ca), guard)
    url = guard.url()
    typer.echo(f"mlox-iac ui for {project}: {url}", err=True)
    typer.echo("(the token in the URL is the only key: do not share it; Ctrl-C stops the UI)", err=True)
    if not no_browser:
        webbrowser.open(url)
    # No access log: URLs are harmless after the first, but nothing of a session is written anywhere.
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])
