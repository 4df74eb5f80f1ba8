"""The program's resource graph per provider, under Pulumi mocks."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from conftest import ROOT, settings
from mlox_iac.plan import SECRET_SIG, is_secret, unwrap

PROVIDER_RESOURCES = {
    "hetzner": Counter({
        "hcloud:index/sshKey:SshKey": 2, "hcloud:index/firewall:Firewall": 1, "hcloud:index/server:Server": 1,
        "hcloud:index/volume:Volume": 1, "hcloud:index/volumeAttachment:VolumeAttachment": 1,
        "tls:index/privateKey:PrivateKey": 1,
    }),
    "digitalocean": Counter({
        "digitalocean:index/sshKey:SshKey": 2, "digitalocean:index/droplet:Droplet": 1,
        "digitalocean:index/firewall:Firewall": 1, "digitalocean:index/volume:Volume": 1,
        "digitalocean:index/volumeAttachment:VolumeAttachment": 1, "tls:index/privateKey:PrivateKey": 1,
    }),
    "aws": Counter({
        "aws:ec2/keyPair:KeyPair": 1, "aws:ec2/securityGroup:SecurityGroup": 1, "aws:ec2/instance:Instance": 1,
        "aws:ebs/volume:Volume": 1, "aws:ec2/volumeAttachment:VolumeAttachment": 1, "aws:ec2/eip:Eip": 1,
        "tls:index/privateKey:PrivateKey": 1,
    }),
    "onprem": Counter(),
}
COMMON = Counter({
    "mlox:stack:Stack": 1, "mlox:server:Server": 1, "mlox:server:Bundle": 1,
    "mlox:service:Postgres": 1, "mlox:service:Seaweedfs": 1, "mlox:service:Mlflow": 1, "mlox:service:Caddy": 1,
    "mlox:service:Home": 1,
    "random:index/randomPassword:RandomPassword": 8,  # postgres superuser, data, mlflow; s3 keys; flask; ui: mlflow, home
    "command:remote:Command": 8,  # bootstrap, host keys, 4 env files, bundle prepare, compose up
    "command:remote:CopyToRemote": 1,
})
ADDRESS = {"hetzner": "203.0.113.10", "digitalocean": "203.0.113.20", "aws": "203.0.113.30", "onprem": "192.0.2.50"}


def by_name(resources):
    return {r.name: r for r in resources}


@pytest.mark.parametrize("provider", sorted(PROVIDER_RESOURCES))
def test_graph_has_expected_resources(record, provider):
    resources, _ = record(settings(provider))
    assert Counter(r.type for r in resources) == COMMON + PROVIDER_RESOURCES[provider]


@pytest.mark.parametrize("provider", sorted(PROVIDER_RESOURCES))
def test_type_and_name_pairs_are_unique(record, provider):
    resources, _ = record(settings(provider))
    pairs = Counter((r.type, r.name) for r in resources)
    assert [p for p, n in pairs.items() if n > 1] == []


@pytest.mark.parametrize("provider", sorted(PROVIDER_RESOURCES))
def test_every_remote_step_targets_the_server_address(record, provider):
    resources, outputs = record(settings(provider))
    remote = [r for r in resources if r.type.startswith("command:remote:")]
    assert remote
    for r in remote:
        connection = r.inputs["connection"]
        assert is_secret(connection), f"{r.name}: connection must be secret (it carries the key)"
        assert unwrap(connection)["host"] == ADDRESS[provider], r.name
    assert outputs["server_address"] == ADDRESS[provider]
    bootstrap = by_name(resources)["main-bootstrap"]
    assert bootstrap.inputs["create"] == ("bash -s" if provider != "aws" else "sudo -n bash -s")


@pytest.mark.parametrize("provider", sorted(PROVIDER_RESOURCES))
def test_remote_steps_run_after_bootstrap(record, provider):
    resources, _ = record(settings(provider))
    names = {r.urn: r.name for r in resources}
    direct = {r.name: {names[d] for d in r.dependencies if d in names} for r in resources}

    def closure(name, seen=None):
        seen = set() if seen is None else seen
        for dep in direct[name] - seen:
            seen.add(dep)
            closure(dep, seen)
        return seen

    for r in resources:
        if r.type.startswith("command:remote:") and r.name != "main-bootstrap":
            assert "main-bootstrap" in closure(r.name), r.name
    assert {"postgres-env", "seaweedfs-env", "mlflow-env", "caddy-env", "main-bundle-copy"} <= direct["main-bundle-compose-up"]


def test_hetzner_firewall_rules_exact(record):
    resources, _ = record(settings("hetzner", ssh={"public_keys": settings()["ssh"]["public_keys"], "admin_cidrs": ["198.51.100.0/24", "2001:db8::/48"]}))
    rules = unwrap(by_name(resources)["main-firewall"].inputs["rules"])
    anywhere = ["0.0.0.0/0", "::/0"]
    assert rules == [
        {"direction": "in", "protocol": "tcp", "port": "22", "sourceIps": ["198.51.100.0/24", "2001:db8::/48"]},
        {"direction": "in", "protocol": "tcp", "port": "80", "sourceIps": anywhere},
        {"direction": "in", "protocol": "tcp", "port": "443", "sourceIps": anywhere},
    ]


def test_digitalocean_firewall_rules_exact(record):
    resources, _ = record(settings("digitalocean"))
    firewall = unwrap(by_name(resources)["main-firewall"].inputs)
    anywhere = ["0.0.0.0/0", "::/0"]
    assert firewall["inboundRules"] == [
        {"protocol": "tcp", "portRange": "22", "sourceAddresses": ["203.0.113.7/32"]},
        {"protocol": "tcp", "portRange": "80", "sourceAddresses": anywhere},
        {"protocol": "tcp", "portRange": "443", "sourceAddresses": anywhere},
    ]
    assert [r["protocol"] for r in firewall["outboundRules"]] == ["tcp", "udp", "icmp"]


def test_aws_security_group_rules_exact(record):
    resources, _ = record(settings("aws"))
    group = unwrap(by_name(resources)["main-firewall"].inputs)
    assert group["ingress"] == [
        {"protocol": "tcp", "fromPort": 22.0, "toPort": 22.0, "cidrBlocks": ["203.0.113.7/32"], "ipv6CidrBlocks": []},
        {"protocol": "tcp", "fromPort": 80.0, "toPort": 80.0, "cidrBlocks": ["0.0.0.0/0"], "ipv6CidrBlocks": ["::/0"]},
        {"protocol": "tcp", "fromPort": 443.0, "toPort": 443.0, "cidrBlocks": ["0.0.0.0/0"], "ipv6CidrBlocks": ["::/0"]},
    ]
    assert unwrap(by_name(resources)["main-server"].inputs)["ami"] == "ami-0123456789abcdef0"


@pytest.mark.parametrize("provider", ["hetzner", "digitalocean", "aws"])
def test_data_volume_is_attached_and_mounted(record, provider):
    resources, _ = record(settings(provider, volume_size_gb=40))
    named = by_name(resources)
    assert named["main-data"].inputs["size"] == 40.0
    assert "main-data-attachment" in named
    script = unwrap(named["main-bootstrap"].inputs["stdin"])
    assert "DATA_DEVICE=/dev/disk/by-id/" in script
    deps = {r.name for r in resources if r.urn in named["main-bootstrap"].dependencies}
    assert "main-data-attachment" in deps


def test_secrets_stay_secret(record, build_dir):
    raw = settings()
    resources, outputs = record(raw)
    passwords = {r.name for r in resources if r.type == "random:index/randomPassword:RandomPassword"}
    from mlox_iac.plan import default_secret

    values = [default_secret(name, 20) for name in passwords]  # the shortest generated length
    for r in resources:
        if not r.type.startswith("command:remote:"):
            continue
        for key, value in r.inputs.items():
            if key in ("connection",) or is_secret(value):
                continue
            text = repr(value)
            assert not any(v in text for v in values), f"{r.name}.{key} carries a generated secret in clear"
    env_commands = [r for r in resources if r.name.endswith("-env")]
    assert len(env_commands) == 4
    for r in env_commands:
        assert is_secret(r.inputs["stdin"]), r.name
        assert "umask 077" in r.inputs["create"]
    for key in ("ui_passwords", "s3_access_key", "s3_secret_key"):
        assert is_secret(outputs[key]), key
    for key in ("urls", "ui_user", "server_address", "mlflow_tracking_uri"):
        assert not is_secret(outputs[key]), key
    bundle_text = "".join(p.read_text() for p in build_dir.rglob("*") if p.is_file())
    assert bundle_text and not any(v in bundle_text for v in values)


def test_deploy_key_is_generated_and_secret(record):
    resources, _ = record(settings("hetzner"))
    named = by_name(resources)
    assert named["main-deploy-key"].inputs["algorithm"] == "ED25519"
    keys = [unwrap(named[f"main-key-{i}"].inputs["publicKey"]) for i in (0, 1)]
    assert keys[0].endswith("mlox-deploy") and keys[1] == settings()["ssh"]["public_keys"][0]
    connection = named["main-bootstrap"].inputs["connection"]
    assert SECRET_SIG in connection and "PRIVATE KEY" in unwrap(connection)["privateKey"]


@pytest.mark.parametrize("provider, forbidden", [
    ("hetzner", ["pulumi_aws", "pulumi_digitalocean"]),
    ("digitalocean", ["pulumi_aws", "pulumi_hcloud"]),
    ("onprem", ["pulumi_aws", "pulumi_digitalocean", "pulumi_hcloud"]),
])
def test_plan_imports_only_the_chosen_provider_sdk(provider, forbidden):
    code = (
        "import sys; from pathlib import Path; from mlox_iac.plan import plan_stack_file; "
        f"plan_stack_file(Path('stacks/Pulumi.example-{provider}.yaml')); "
        f"print(sorted(m for m in {forbidden!r} if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("example", sorted(p.name[len("Pulumi."):-len(".yaml")]
                                            for p in (ROOT / "stacks").glob("Pulumi.example-*.yaml")))
def test_every_example_stack_plans_with_a_component_per_enabled_service(example):
    from mlox_iac.config.loader import load_file
    from mlox_iac.plan import plan_stack_file

    path = ROOT / "stacks" / f"Pulumi.{example}.yaml"
    resources, outputs = plan_stack_file(path)
    services = {r.name for r in resources if r.type.startswith("mlox:service:")}
    assert services == set(load_file(path).enabled_services())
    assert unwrap(outputs)["urls"]


def test_plan_cli_json_lists_resources_with_secrets_masked():
    import json

    result = subprocess.run([sys.executable, "-m", "mlox_iac.cli.main", "plan", "--stack", "example-onprem", "--json"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert {"type", "name", "parent", "inputs"} <= set(rows[0])
    env = next(r for r in rows if r["name"] == "mlflow-env")
    assert env["inputs"]["stdin"] == "[secret]" and env["inputs"]["connection"] == "[secret]"
    assert env["parent"] == "mlflow"
    assert "PRIVATE KEY" not in result.stdout
