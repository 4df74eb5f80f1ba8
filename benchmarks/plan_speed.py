"""Offline plan speed per example stack, against a floor measured in the same run.

Floor: a fresh Python that only imports pulumi, pulumi_command and the stack's provider
SDK. Measured: a fresh ``mlox-iac plan --stack <example> --json``. Prints
ratio = plan / floor (goal <= 1.5).

The SDKs load their resource classes lazily, on first attribute access, so the bare
import floor leaves out most of what any program using them must load (pulumi_aws's
ec2.Instance alone takes longer than the whole floor). A second, "touch" floor also
touches the classes the provider module uses; its ratio shows mlox-iac's own overhead.

    python benchmarks/plan_speed.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SDK = {"hetzner": "pulumi_hcloud", "digitalocean": "pulumi_digitalocean", "aws": "pulumi_aws.ec2", "onprem": None}
GOAL = 1.5
TOUCH = {
    "hetzner": "import pulumi_hcloud as p; p.SshKey, p.Firewall, p.Server, p.Volume, p.VolumeAttachment",
    "digitalocean": "import pulumi_digitalocean as p; p.SshKey, p.Droplet, p.Firewall, p.Volume, p.VolumeAttachment",
    "aws": "import pulumi_aws as p; p.ec2.KeyPair, p.ec2.SecurityGroup, p.ec2.Instance, p.ec2.Eip, "
           "p.ec2.VolumeAttachment, p.ec2.get_ami_output, p.ebs.Volume",
    "onprem": "",
}


def best_of(argv: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(argv, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"{'stack':<22} {'floor s':>8} {'touch s':>8} {'plan s':>8} {'ratio':>6} {'vs touch':>8}  goal <= {GOAL}")
    worst = 0.0
    for provider, sdk in SDK.items():
        imports = "import pulumi, pulumi_command" + (f", {sdk}" if sdk else "")
        floor = best_of([sys.executable, "-c", imports], args.repeat)
        touch = best_of([sys.executable, "-c", f"{imports}; import pulumi_random, pulumi_tls; {TOUCH[provider]}"],
                        args.repeat)
        plan = best_of([sys.executable, "-m", "mlox_iac.cli.main", "plan", "--stack", f"example-{provider}", "--json"],
                       args.repeat)
        ratio = plan / floor
        worst = max(worst, ratio)
        print(f"example-{provider:<14} {floor:8.2f} {touch:8.2f} {plan:8.2f} {ratio:6.2f} {plan / touch:8.2f}  "
              f"{'ok' if ratio <= GOAL else 'OVER'}")
    print(f"worst ratio {worst:.2f} ({'meets' if worst <= GOAL else 'misses'} the goal of {GOAL})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
