"""The server component: a machine from the chosen provider, bootstrapped over SSH.

The bootstrap is the same for every provider and runs with pulumi-command. It re-runs
only when its script changes (the script's hash is a trigger).
"""

from __future__ import annotations

import hashlib

import pulumi
from pulumi_command import remote

from mlox_iac.config.model import StackConfig
from mlox_iac.providers import DeployKeys, get_provider
from mlox_iac.render.bootstrap import BootstrapSettings, render_bootstrap


class Server(pulumi.ComponentResource):
    """One server: provider resources, then SSH hardening, firewall, Docker and the data volume."""

    public_address: pulumi.Output[str]
    user: str
    connection: object
    ready: remote.Command
    host_keys: pulumi.Output[list[str]]

    def __init__(self, name: str, config: StackConfig, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlox:server:Server", name, {}, opts)
        child = pulumi.ResourceOptions(parent=self)
        provider = get_provider(config.provider)
        if config.provider == "onprem":
            keys = DeployKeys(public_keys=list(config.ssh.public_keys), private_key=None)
        else:
            import pulumi_tls as tls

            # A deploy key only Pulumi holds (a secret in state); users log in with their own keys.
            deploy_key = tls.PrivateKey(f"{name}-deploy-key", algorithm="ED25519", opts=child)
            keys = DeployKeys(
                public_keys=[deploy_key.public_key_openssh, *config.ssh.public_keys],
                private_key=deploy_key.private_key_openssh,
            )
        machine = provider.create_machine(name, config, keys, child)
        self.public_address = machine.public_address
        self.connection = machine.connection
        self.user = machine.user

        def script_for(device: str | None) -> str:
            return render_bootstrap(BootstrapSettings(
                admin_cidrs=tuple(config.ssh.admin_cidrs),
                user_keys=tuple(config.ssh.public_keys),
                docker_source=config.docker.source,
                data_device=device or "",
                registry_mirrors=tuple(config.docker.registry_mirrors),
                registry_ca=config.docker.registry_ca or "",
            ))

        script = pulumi.Output.from_input(machine.data_device).apply(script_for)
        shell = "bash -s" if self.user == "root" else "sudo -n bash -s"
        self.ready = remote.Command(
            f"{name}-bootstrap",
            connection=machine.connection,
            create=shell,
            stdin=script,
            triggers=[script.apply(lambda s: hashlib.sha256(s.encode()).hexdigest())],
            opts=pulumi.ResourceOptions(parent=self, depends_on=machine.ready),
        )
        # The server's SSH host keys, read over the deploy connection right after the
        # bootstrap: every later ssh of mlox-iac checks the server against them (no blind
        # trust on first use from the user's machine). Re-read when the connection changes.
        read_keys = remote.Command(
            f"{name}-host-keys",
            connection=machine.connection,
            create="cat /etc/ssh/ssh_host_ed25519_key.pub /etc/ssh/ssh_host_ecdsa_key.pub /etc/ssh/ssh_host_rsa_key.pub",
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.ready]),
        )
        self.host_keys = read_keys.stdout.apply(
            lambda out: [" ".join(line.split()[:2]) for line in (out or "").splitlines() if len(line.split()) >= 2])
        self.register_outputs({"public_address": self.public_address, "host_keys": self.host_keys})
