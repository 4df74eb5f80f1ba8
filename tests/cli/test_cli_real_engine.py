"""The automation layer against the real Pulumi CLI (built from Go modules by
``scripts/build-pulumi``), not a test double: stacks on the local file backend, secrets
encrypted with the passphrase in the stack file, what a user sees when the engine cannot
load a provider plugin (an empty plugin cache), and the real ``pulumi preview`` of every
Hetzner example with the real hcloud provider (the plugins scripts/setup installs).

Engine: the real Pulumi CLI and its Python language host. Deployments with the engine are
in tests/e2e (test_deploy.py and the other modules on real hosts).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from cli_helpers import invoke

VENV_BIN = Path(sys.executable).parent
PULUMI = shutil.which("pulumi") or (str(VENV_BIN / "pulumi") if (VENV_BIN / "pulumi").is_file() else None)
PASSPHRASE = "correct horse battery staple"

pytestmark = [
    pytest.mark.needs_pulumi_cli,
    pytest.mark.skipif(PULUMI is None, reason="needs the Pulumi CLI: scripts/build-pulumi builds it where Go is installed"),
]


@pytest.fixture
def engine(mlox_project, monkeypatch, tmp_path):
    """The throwaway project with the real CLI first on PATH and plugins only from an empty
    PULUMI_HOME (nothing downloaded earlier can hide a missing plugin). The program is the
    project's own entry point (``mlox_iac`` is installed in the venv)."""
    shutil.copy(Path(__file__).resolve().parents[2] / "__main__.py", mlox_project / "__main__.py")
    monkeypatch.setenv("PATH", f"{Path(PULUMI).parent}{os.pathsep}{VENV_BIN}{os.pathsep}/usr/bin:/bin")
    monkeypatch.setenv("PULUMI_HOME", str(tmp_path / "pulumi-home"))
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", PASSPHRASE)
    return mlox_project


@pytest.fixture
def key_pair(tmp_path) -> tuple[str, str]:
    """A fresh ed25519 key pair (private, public) as OpenSSH text."""
    path = tmp_path / "keys" / "id_ed25519"
    path.parent.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test@mlox", "-f", str(path)], check=True)
    return path.read_text(), path.with_suffix(".pub").read_text().strip()


def _init_lab(engine: Path, private_key: str, public_key: str):
    key_file = engine / "id_ed25519"
    key_file.write_text(private_key)
    return invoke("init", "--stack", "lab", "--provider", "onprem", "--host", "192.0.2.50", "--size", "8192",
                  "--private-key", str(key_file), "--ssh-key", public_key, "--admin-cidr", "192.0.2.0/24")


def _error_lines(result) -> list[str]:
    """What a failed command said went wrong (progress lines aside); never a traceback."""
    text = result.stdout + result.stderr
    assert "Traceback" not in text, text
    return [line for line in text.splitlines() if line.startswith("error:")]


def _key_body(private_key: str) -> list[str]:
    """The base64 lines of an OpenSSH private key: any of them in a file is a leak."""
    return [line for line in private_key.splitlines() if line and "PRIVATE KEY" not in line]


def _files_under(*roots: Path):
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                yield path


def test_init_stores_the_private_key_encrypted_and_the_engine_reads_it_back(engine, key_pair):
    private_key, public_key = key_pair
    result = _init_lab(engine, private_key, public_key)
    said = result.stdout + result.stderr
    assert result.exit_code == 0, said
    assert "stored 1 secret(s) encrypted in the stack file: mlox:onprem.private_key" in said

    stack_file = engine / "stacks" / "Pulumi.lab.yaml"
    document = yaml.safe_load(stack_file.read_text())
    assert document["encryptionsalt"].startswith("v1:")
    assert set(document["config"]["mlox:onprem"]["private_key"]) == {"secure"}
    (engine / "id_ed25519").unlink()  # the user's own file; everything else must not hold the key
    leaks = [str(p) for p in _files_under(engine, Path(os.environ["PULUMI_HOME"]))
             if any(line in p.read_text(errors="replace") for line in _key_body(private_key))]
    assert leaks == []
    assert not any(line in said for line in _key_body(private_key))

    shown = subprocess.run([PULUMI, "config", "get", "--path", "mlox:onprem.private_key", "--stack", "lab"],
                           cwd=engine, capture_output=True, text=True, check=True,
                           env={**os.environ, "PULUMI_BACKEND_URL": (engine / ".mlox" / "state").as_uri()})
    assert shown.stdout.strip() == private_key.strip()
    assert invoke("validate", "--stack", "lab").exit_code == 0


def test_a_wrong_passphrase_is_one_line(engine, key_pair, monkeypatch):
    assert _init_lab(engine, *key_pair).exit_code == 0
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "wrong")
    result = invoke("preview", "--stack", "lab")
    assert result.exit_code == 1
    assert _error_lines(result) == [
        "error: pulumi preview failed: getting stack configuration: get stack secrets manager: incorrect passphrase"]


def test_preview_without_provider_plugins_names_the_missing_plugin(engine, key_pair):
    assert _init_lab(engine, *key_pair).exit_code == 0
    result = invoke("preview", "--stack", "lab")
    assert result.exit_code == 1
    [line] = _error_lines(result)
    # The program ran under the real language host (with its secret config decrypted) as far
    # as its first pulumi-command or pulumi-random resource, whose plugin (at the version of
    # the installed SDK) the engine then failed to download.
    plugins = {name: metadata.version(f"pulumi_{name}") for name in ("command", "random")}
    wanted = [f"error: pulumi preview failed: Could not automatically download and install resource plugin "
              f"'pulumi-resource-{name}' at version v{version}, install the plugin using "
              f"`pulumi plugin install resource {name} v{version}`" for name, version in plugins.items()]
    assert any(line.startswith(w) for w in wanted), line


def test_preview_of_the_example_with_its_placeholder_key_is_one_line_and_changes_nothing(engine):
    stack_path = engine / "stacks" / "Pulumi.example-onprem.yaml"
    before = stack_path.read_text()
    result = invoke("preview", "--stack", "example-onprem")
    assert result.exit_code == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        "stacks/Pulumi.example-onprem.yaml: mlox:onprem.private_key: a placeholder, not a secret of this stack "
        "(the file has no encryptionsalt); set yours with: "
        "pulumi config set --secret --path 'mlox:onprem.private_key' --stack example-onprem"] + [
            f"stacks/Pulumi.example-onprem.yaml: mlox:backup.{key}: a placeholder, not a secret of this stack "
            "(the file has no encryptionsalt); set yours with: "
            f"pulumi config set --secret --path 'mlox:backup.{key}' --stack example-onprem"
            for key in ("access_key_id", "secret_access_key")]
    assert stack_path.read_text() == before
    assert not (engine / ".mlox" / "state" / ".pulumi" / "stacks").exists()


def _secure_paths(node, path=""):
    """Dotted config paths of every `secure:` placeholder in a stack file's config."""
    if isinstance(node, dict):
        if set(node) == {"secure"}:
            yield path
        for key, value in node.items():
            yield from _secure_paths(value, f"{path}.{key}" if path else key)


@pytest.mark.parametrize("example", sorted(
    p.name.removeprefix("Pulumi.").removesuffix(".yaml")
    for p in (Path(__file__).resolve().parents[2] / "stacks").glob("Pulumi.example-*.yaml")
    if "mlox:provider: hetzner" in p.read_text()))
def test_the_real_engine_previews_every_hetzner_example_with_the_real_hcloud_provider(
        mlox_project, monkeypatch, tmp_path, example):
    """Engine: the real Pulumi CLI with the real hcloud, command, random and tls plugins (the
    plugin cache scripts/setup filled). A dummy token: the provider checks every Hetzner
    resource's inputs and calls no API during a preview."""
    from mlox_iac import automation

    shutil.copy(Path(__file__).resolve().parents[2] / "__main__.py", mlox_project / "__main__.py")
    monkeypatch.setenv("PATH", f"{Path(PULUMI).parent}{os.pathsep}{VENV_BIN}{os.pathsep}/usr/bin:/bin")
    monkeypatch.delenv("PULUMI_HOME", raising=False)
    monkeypatch.setenv("HOME", os.environ.get("MLOX_REAL_HOME", "/root"))
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", PASSPHRASE)
    path = mlox_project / "stacks" / f"Pulumi.{example}.yaml"
    document = yaml.safe_load(path.read_text())
    secrets = {}
    for dotted in list(_secure_paths(document["config"])):
        key, _, rest = dotted.partition(".")
        parent = document["config"][key]
        parts = rest.split(".")
        for part in parts[:-1]:
            parent = parent[part]
        del parent[parts[-1]]
        secrets[f"{key}.{rest}"] = f"dummy-{parts[-1]}"
    path.write_text(yaml.safe_dump(document))
    automation.set_secrets(example, {"hcloud:token": "0" * 64, **secrets},
                           path_keys=tuple(k for k in secrets if "." in k), project_dir=mlox_project)
    result = automation.preview(example, project_dir=mlox_project)
    assert set(result.changes) == {"create"}, result.changes
    plan = subprocess.run([sys.executable, "-m", "mlox_iac.cli.main", "plan", "--stack", example, "--json"],
                          cwd=mlox_project, capture_output=True, text=True, check=True)
    assert result.changes["create"] == len(json.loads(plan.stdout)) + 1, plan.stdout[:300]  # + the Stack itself
