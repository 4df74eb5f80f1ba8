"""``mlox-iac`` as a user runs it (``python -m mlox_iac.cli.main``), with one addition for
machines that no container registry answers, as here.

A migration's new server pulls its images during the engine update that provisions it. No
registry answers here, so before that update the new server gets its bootstrap alone (a
targeted update of the same stack: Docker, firewall, sshd) and then the stand-in images,
as ``test_migrate.py``'s engine and ``mlox-iac sandbox up`` do for a bare host. Everything
else is the CLI's own code: the command, its checks and refusals, the engine updates, the
data steps over SSH.

The new server is the harness host named by ``MLOX_E2E_STANDIN_HOST`` (``name:index``,
reached with the harness key in ``MLOX_HOSTS_CACHE``).

    python tests/e2e/standin_cli.py migrate --stack NAME --to onprem --yes
"""

from __future__ import annotations

import os
import sys

from mlox_iac import automation
from mlox_iac.migrations import stack as migrate
from mlox_iac.cli.main import run
from mlox_iac.sandbox import hosts, images, manage, spec

_engine_up = migrate.AutomationEngine.up


def _new_server() -> hosts.TargetHost:
    name, index = os.environ["MLOX_E2E_STANDIN_HOST"].split(":")
    return hosts.TargetHost(name, int(index))


def _up_with_standins(self: migrate.AutomationEngine) -> dict:
    config = automation.validate_stack(self.stack, project_dir=self.project_dir)
    target = config.target.onprem if config.target is not None else None
    host = _new_server()
    if (config.migration is not None and target is not None and target.host == host.address
            and host.ssh("command -v docker", check=False).returncode != 0):
        print(f"[standin] {host.name}: bootstrap alone, then the stand-in images", file=sys.stderr, flush=True)
        automation.up(self.stack, project_dir=self.project_dir, pulumi_command=self.pulumi_command,
                      passphrase_prompt=self.passphrase_prompt,
                      target=spec.bootstrap_targets(self.stack, config.migration.server))
        names = manage.stack_images(self.project_dir, self.stack)
        images.build_standins(names=names)  # cached: they are already built for the sandbox
        images.load_images(host, names)
    return _engine_up(self)


migrate.AutomationEngine.up = _up_with_standins  # type: ignore[method-assign]

if __name__ == "__main__":
    run()
