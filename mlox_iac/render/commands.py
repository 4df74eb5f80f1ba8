"""Builders of the shell commands pulumi-command runs on a server. Pure: they return strings."""

from __future__ import annotations

import shlex

from mlox_iac.components.services.base import BUNDLE_DIR, COMPOSE_PROJECT, DATA_DIR, SECRETS_DIR

COMPOSE = f"docker compose --project-name {COMPOSE_PROJECT} --project-directory {BUNDLE_DIR} -f {BUNDLE_DIR}/compose.yaml"


def as_root(script: str, user: str) -> str:
    """Run ``script`` with sh as root: directly for root, through passwordless sudo otherwise."""
    if user == "root":
        return f"sh -c {shlex.quote(script)}"
    return f"sudo -n sh -c {shlex.quote(script)}"


def write_env_file(service: str, compose_services: list[str]) -> str:
    """Write a service's env file from stdin (mode 0600), then re-apply only its containers.

    The secret content travels on stdin, never in the command line. Compose recreates the
    containers whose env file changed (provisioning steps thereby run again). On the first
    deploy the Compose project is not up yet and the bundle step starts everything.
    """
    path = f"{SECRETS_DIR}/{service}.env"
    names = " ".join(shlex.quote(s) for s in compose_services)
    write = f"set -eu; umask 077; mkdir -p {SECRETS_DIR}; chmod 700 {SECRETS_DIR}; cat > {path}.tmp; mv {path}.tmp {path}"
    if not compose_services:  # read by commands run on the server, not by containers
        return write
    return (
        f"{write}; "
        f"if [ -f {BUNDLE_DIR}/compose.yaml ] && [ -n \"$({COMPOSE} ps -q {names} 2>/dev/null)\" ]; then "
        f"{COMPOSE} up -d --wait {names}; fi"
    )


def remove_env_file(service: str) -> str:
    return f"rm -f {SECRETS_DIR}/{service}.env"


def compose_up(bundle_hash: str, volumes: list[str]) -> str:
    """Create the volume directories and bring the project to the bundle's state.

    The wait allows for first-start database migrations of the full preset on a 2-core server.
    """
    dirs = " ".join(shlex.quote(f"{DATA_DIR}/volumes/{v}") for v in sorted(volumes))
    mkdir = f"mkdir -p {dirs}; " if dirs else ""
    return (
        f"set -eu; : bundle {bundle_hash}; {mkdir}"
        f"{COMPOSE} up -d --wait --wait-timeout 1200 --remove-orphans"
    )


def compose_down(keep_data: bool = True) -> str:
    """Stop and remove the containers; the data stays unless the stack says otherwise."""
    down = f"if [ -f {BUNDLE_DIR}/compose.yaml ]; then {COMPOSE} down --remove-orphans; fi"
    if keep_data:
        return down
    return f"{down}; docker volume ls -q --filter label=com.docker.compose.project={COMPOSE_PROJECT} | xargs -r docker volume rm; rm -rf {DATA_DIR}/volumes"


def backup_schedule(bundle_hash: str, images: list[str], unit: str, backup_dir: str) -> str:
    """Install the backup's systemd timer from the bundle and make sure its images are present.

    Pulling here makes a missing image fail the deploy, not the first scheduled backup.
    """
    pulls = "; ".join(f"docker image inspect {shlex.quote(i)} >/dev/null 2>&1 || docker pull -q {shlex.quote(i)}"
                      for i in images)
    return (
        f"set -eu; : bundle {bundle_hash}; {pulls}; "
        f"install -m 644 {backup_dir}/{unit}.service {backup_dir}/{unit}.timer /etc/systemd/system/; "
        f"systemctl daemon-reload; systemctl enable {unit}.timer; systemctl restart {unit}.timer; "
        f"cd {backup_dir} && python3 -m mlox_data installed >/dev/null"
    )


def backup_unschedule(unit: str) -> str:
    """Stop scheduling backups; the repository and its snapshots stay."""
    return (
        f"systemctl disable --now {unit}.timer 2>/dev/null || true; "
        f"rm -f /etc/systemd/system/{unit}.service /etc/systemd/system/{unit}.timer; systemctl daemon-reload"
    )
