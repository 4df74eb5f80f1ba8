"""The server bootstrap script: the same for every provider, idempotent, shellcheck-clean.

Choices (documented in the README): SSH is key-only; root may log in with a key only
(``PermitRootLogin prohibit-password``) because cloud images hand out root (Hetzner,
DigitalOcean) or a sudo user (AWS); password and keyboard-interactive logins are off.
Hardening is a drop-in under ``sshd_config.d``, never an edit of the main file.
"""

from __future__ import annotations

import ipaddress
import json
import shlex
from dataclasses import dataclass
from urllib.parse import urlsplit

from mlox_iac.components.services.base import DATA_DIR


@dataclass(frozen=True)
class BootstrapSettings:
    admin_cidrs: tuple[str, ...]
    user_keys: tuple[str, ...]
    docker_source: str  # "docker" or "debian"
    data_device: str  # "" when the data directory lives on the root disk
    ssh_port: int = 22
    registry_mirrors: tuple[str, ...] = ()  # https URLs of Docker Hub mirrors
    registry_ca: str = ""  # PEM CA of the mirrors, or "" when publicly trusted


def nftables_ruleset(admin_cidrs: tuple[str, ...], ssh_port: int = 22) -> str:
    """The host firewall, matching the cloud firewall: SSH from admins, 80/443 from anywhere.

    Only our own table is replaced (no ``flush ruleset``), so Docker's rules survive.
    """
    v4 = [c for c in admin_cidrs if ipaddress.ip_network(c).version == 4]
    v6 = [c for c in admin_cidrs if ipaddress.ip_network(c).version == 6]
    ssh = []
    if v4:
        ssh.append(f"\t\ttcp dport {ssh_port} ip saddr {{ {', '.join(v4)} }} accept")
    if v6:
        ssh.append(f"\t\ttcp dport {ssh_port} ip6 saddr {{ {', '.join(v6)} }} accept")
    return "\n".join([
        "#!/usr/sbin/nft -f",
        "# Managed by mlox-iac. Only the table inet mlox is ours; Docker's tables are left alone.",
        "table inet mlox",
        "delete table inet mlox",
        "table inet mlox {",
        "\tchain input {",
        "\t\ttype filter hook input priority filter; policy drop;",
        "\t\tiif lo accept",
        "\t\tct state established,related accept",
        "\t\tct state invalid drop",
        # Keywords, not protocol names: minimal images lack /etc/protocols (netbase).
        "\t\tip protocol icmp accept",
        "\t\tip6 nexthdr icmpv6 accept",
        "\t\tudp sport 67 udp dport 68 accept",
        "\t\tudp sport 547 udp dport 546 accept",
        *ssh,
        "\t\ttcp dport { 80, 443 } accept",
        "\t\tmeta l4proto tcp reject with tcp reset",
        "\t\treject",
        "\t}",
        "}",
        "",
    ])


SSHD_DROP_IN = """\
# Managed by mlox-iac: key-only SSH.
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PermitEmptyPasswords no
MaxAuthTries 3
X11Forwarding no
"""

FAIL2BAN_JAIL = """\
# Managed by mlox-iac.
[DEFAULT]
backend = systemd
banaction = nftables-multiport
bantime = 1h
findtime = 10m
maxretry = 5

[sshd]
enabled = true
"""

AUTO_UPGRADES = """\
APT::Periodic::Update-Package-Lists "1";
APT::Periodic::Unattended-Upgrade "1";
"""

def docker_daemon(mirrors: tuple[str, ...] = ()) -> str:
    """Docker's daemon.json. The mirrors come first, on a line of their own, so that the
    bootstrap can tell a change of mirrors alone (Docker reloads them) from one that needs
    a restart of Docker, and so every container's."""
    lines = [f'  "registry-mirrors": {json.dumps(list(mirrors))}'] if mirrors else []
    lines += ['  "log-driver": "local"', '  "log-opts": {"max-size": "20m", "max-file": "3"}']
    return "{\n" + ",\n".join(lines) + "\n}\n"


def registry_certificates(settings: BootstrapSettings) -> str:
    """Shell lines that give Docker the mirrors' private CA (``/etc/docker/certs.d/<host>/ca.crt``,
    read at each pull; Docker keeps verifying TLS, with that CA besides the system's)."""
    if not settings.registry_ca:
        return ""
    out = []
    for url in settings.registry_mirrors:
        folder = shlex.quote(f"/etc/docker/certs.d/{urlsplit(url).netloc.lower()}")  # host[:port]
        out.append(f"install -d -m 755 {folder}\nwrite_if_changed {folder}/ca.crt 644 <<'EOF' || true\n"
                   f"{settings.registry_ca.rstrip()}\nEOF\n")
    return "".join(out)


def render_bootstrap(settings: BootstrapSettings) -> str:
    """The whole bootstrap script for one server.

    Order, for a bare host's speed: SSH is hardened first (it needs no package); the files
    that packages read when they first start (fail2ban's jail, Docker's daemon.json and the
    mirrors' CA) are written before the one apt transaction that installs everything, so
    that nothing is restarted after it; the firewall and the auto-upgrades file follow it
    (both are package files that dpkg or ucf would ask about if they were there first).
    """
    q = shlex.quote
    keys = "\n".join(settings.user_keys)
    return f"""#!/usr/bin/env bash
# mlox-iac server bootstrap. Idempotent: every step checks before it changes anything.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

DATA_DIR={q(DATA_DIR)}
DATA_DEVICE={q(settings.data_device)}
DOCKER_SOURCE={q(settings.docker_source)}

log() {{ printf '[mlox-bootstrap] %s\\n' "$*"; }}
# Wait for another apt (cloud-init, apt-daily) instead of failing; no pty for dpkg: nothing reads its progress.
apt_get() {{ apt-get -q -o DPkg::Lock::Timeout=600 -o Dpkg::Use-Pty=0 "$@"; }}
apt_install() {{ apt_get install -y --no-install-recommends "$@"; }}
# The package lists only: the descriptions' translations (most of the download) come with apt's daily update.
apt_update() {{ apt_get -o Acquire::Languages=none update; }}
# missing PACKAGE...: the packages that are not installed, one a line.
missing() {{
  local p
  for p in "$@"; do
    [ "$(dpkg-query -W -f='${{db:Status-Status}}' "$p" 2>/dev/null)" = installed ] || printf '%s\\n' "$p"
  done
}}
# write_if_changed PATH MODE: write stdin to PATH; exit status 0 when the file changed.
write_if_changed() {{
  local tmp
  tmp="$(mktemp)"
  cat > "$tmp"
  if [ -f "$1" ] && cmp -s "$tmp" "$1"; then rm -f "$tmp"; return 1; fi
  install -m "$2" "$tmp" "$1"
  rm -f "$tmp"
}}
# enable_now UNIT: systemctl enable --now, skipped when already done (enable alone takes a
# while for units that also have a SysV script, as fail2ban and docker do).
enable_now() {{
  systemctl is-enabled -q "$1" 2>/dev/null || systemctl enable "$1" >/dev/null 2>&1
  systemctl is-active -q "$1" || systemctl start "$1"
}}

if command -v cloud-init >/dev/null 2>&1; then
  log "waiting for cloud-init"
  cloud-init status --wait >/dev/null || true
fi

log "authorizing user keys"
install -d -m 700 /root/.ssh
touch /root/.ssh/authorized_keys
chmod 600 /root/.ssh/authorized_keys
while IFS= read -r key; do
  [ -n "$key" ] || continue
  grep -qxF "$key" /root/.ssh/authorized_keys || printf '%s\\n' "$key" >> /root/.ssh/authorized_keys
done <<'KEYS'
{keys}
KEYS

log "hardening sshd"
install -d -m 755 /etc/ssh/sshd_config.d
if write_if_changed /etc/ssh/sshd_config.d/10-mlox.conf 644 <<'EOF'
{SSHD_DROP_IN}EOF
then
  sshd -t
  systemctl reload ssh || systemctl reload sshd
fi

log "fail2ban and docker settings"
# Written before the packages: their first start reads them. Later changes restart fail2ban;
# a running Docker reloads its mirrors (SIGHUP), any other change takes a restart, and so
# every container's; a stopped or absent one reads the file when it starts.
install -d -m 755 /etc/fail2ban/jail.d /etc/docker
if write_if_changed /etc/fail2ban/jail.d/mlox.local 644 <<'EOF'
{FAIL2BAN_JAIL}EOF
then
  if systemctl is-active -q fail2ban; then systemctl restart fail2ban; fi
fi
{registry_certificates(settings)}daemon_before="$(grep -v '"registry-mirrors"' /etc/docker/daemon.json 2>/dev/null || true)"
if write_if_changed /etc/docker/daemon.json 644 <<'EOF'
{docker_daemon(settings.registry_mirrors)}EOF
then
  if systemctl is-active -q docker; then
    if [ -n "$daemon_before" ] && [ "$daemon_before" = "$(grep -v '"registry-mirrors"' /etc/docker/daemon.json)" ]; then
      systemctl reload docker
    else
      systemctl restart docker
    fi
  fi
fi

log "packages ($DOCKER_SOURCE docker)"
packages=(ca-certificates curl gnupg nftables fail2ban python3-systemd unattended-upgrades e2fsprogs util-linux)
if [ "$DOCKER_SOURCE" = docker ]; then
  # buildx: Compose builds JupyterLab's image with it (without it Compose falls back to
  # its older built-in builder, with a warning).
  packages+=(docker-ce docker-ce-cli containerd.io docker-compose-plugin docker-buildx-plugin)
else
  packages+=(docker.io)
fi
# Nothing missing, nothing to do: a rerun makes no apt call. Otherwise one update and one
# transaction, which also brings the named packages that are there up to date.
if [ -n "$(missing "${{packages[@]}}")" ]; then
  if [ "$DOCKER_SOURCE" = docker ] && [ -n "$(missing docker-ce)" ]; then
    if [ -n "$(missing ca-certificates curl)" ]; then  # Docker's key comes over https
      apt_update
      apt_install ca-certificates curl
    fi
    # shellcheck disable=SC1091
    . /etc/os-release
    install -m 0755 -d /etc/apt/keyrings
    curl -fsSL "https://download.docker.com/linux/$ID/gpg" -o /etc/apt/keyrings/docker.asc
    printf 'deb [arch=%s signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/%s %s stable\\n' \\
      "$(dpkg --print-architecture)" "$ID" "$VERSION_CODENAME" > /etc/apt/sources.list.d/docker.list
  fi
  # man-db rebuilds its whole index after each install (seconds to minutes on a small
  # server); skipped for this one, its daily timer rebuilds it.
  if [ -e /var/lib/man-db/auto-update ]; then
    rm -f /var/lib/man-db/auto-update
    trap 'touch /var/lib/man-db/auto-update' EXIT
  fi
  apt_update
  apt_install "${{packages[@]}}"
fi
if [ "$DOCKER_SOURCE" != docker ] && ! docker compose version >/dev/null 2>&1; then
  # Ubuntu packages Compose v2 as docker-compose-v2, Debian 13 as docker-compose.
  apt_install docker-compose-v2 >/dev/null 2>&1 || apt_install docker-compose >/dev/null 2>&1 || true
fi

log "host firewall"
if write_if_changed /etc/nftables.conf 755 <<'EOF'
{nftables_ruleset(settings.admin_cidrs, settings.ssh_port)}EOF
then
  nft -f /etc/nftables.conf
fi
nft list table inet mlox >/dev/null 2>&1 || nft -f /etc/nftables.conf
systemctl is-enabled -q nftables || systemctl enable nftables >/dev/null 2>&1

log "fail2ban"
enable_now fail2ban

log "unattended security upgrades"
write_if_changed /etc/apt/apt.conf.d/20auto-upgrades 644 <<'EOF' || true
{AUTO_UPGRADES}EOF

log "data volume at $DATA_DIR"
mkdir -p "$DATA_DIR"
if [ -n "$DATA_DEVICE" ]; then
  for _ in $(seq 1 120); do [ -b "$DATA_DEVICE" ] && break; sleep 1; done
  [ -b "$DATA_DEVICE" ] || {{ echo "data volume $DATA_DEVICE did not appear" >&2; exit 1; }}
  blkid "$DATA_DEVICE" >/dev/null 2>&1 || mkfs.ext4 -q -L mlox-data "$DATA_DEVICE"
  uuid="$(blkid -s UUID -o value "$DATA_DEVICE")"
  grep -q "UUID=$uuid" /etc/fstab || printf 'UUID=%s %s ext4 defaults,nofail,discard 0 2\\n' "$uuid" "$DATA_DIR" >> /etc/fstab
  mountpoint -q "$DATA_DIR" || mount "$DATA_DIR"
fi
mkdir -p "$DATA_DIR/volumes"

log "docker"
enable_now docker
docker compose version >/dev/null 2>&1 || {{
  echo "Compose v2 is missing: install docker-compose-plugin, or place the compose binary at /usr/local/lib/docker/cli-plugins/docker-compose" >&2
  exit 1
}}
log "done"
"""
