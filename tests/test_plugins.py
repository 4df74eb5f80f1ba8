"""Plugin install at setup: checksums, SDK/plugin version mismatches in one line, and only the
missing plugins installed (a stand-in `pulumi` records what it is asked to install)."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from mlox_iac import plugins
from mlox_iac.errors import MloxError


def _folder(tmp_path: Path, versions: dict[str, str], *, bad: str | None = None) -> Path:
    folder = tmp_path / "pulumi-plugins"
    folder.mkdir()
    lines = []
    for name, version in versions.items():
        tarball = folder / f"pulumi-resource-{name}-v{version}-linux-amd64.tar.gz"
        tarball.write_bytes(f"{name} {version}".encode())
        digest = hashlib.sha256(b"damaged" if name == bad else tarball.read_bytes()).hexdigest()
        lines.append(f"{digest}  {tarball.name}")
    (folder / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    return folder


def _fake_pulumi(tmp_path: Path) -> Path:
    """Records its arguments and creates the plugin folder as `pulumi plugin install` does."""
    script = tmp_path / "pulumi"
    script.write_text(
        "#!/bin/sh\n"
        'echo "$@" >> "$PULUMI_HOME/calls"\n'
        'mkdir -p "$PULUMI_HOME/plugins/resource-$4-$5"\n'
        'touch "$PULUMI_HOME/plugins/resource-$4-$5/pulumi-resource-$4"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


PINNED = {"command": "1.2.1", "random": "4.21.1", "tls": "5.5.1", "hcloud": "1.39.1"}


def test_the_pins_in_pyproject_match_the_shared_plugins():
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    for name, version in PINNED.items():
        assert f'"{plugins.SDKS[name]}=={version}"' in text, name


@pytest.mark.parametrize("sdks, expected", [
    ({"random": "4.21.4"}, "pulumi-random 4.21.4 is installed but {folder} has the random plugin 4.21.1: "
                           "the engine asks for the SDK's own version; install pulumi-random==4.21.1 "
                           "(pyproject.toml pins it)"),
    ({"tls": "5.5.1"}, "pulumi-tls 5.5.1 is installed but {folder} has no tls plugin: the engine would try to "
                       "download resource plugin tls v5.5.1 and fail without internet"),
])
def test_a_mismatch_fails_in_one_line_naming_the_pin(tmp_path, sdks, expected):
    folder = _folder(tmp_path, {"command": "1.2.1", "random": "4.21.1"})
    with pytest.raises(MloxError) as error:
        plugins.install(folder, pulumi=str(_fake_pulumi(tmp_path)), sdks=sdks,
                        env={"PULUMI_HOME": str(tmp_path / "home")})
    assert str(error.value) == expected.format(folder=folder)
    assert not (tmp_path / "home" / "calls").exists()


def test_a_damaged_tarball_is_refused(tmp_path):
    folder = _folder(tmp_path, PINNED, bad="tls")
    with pytest.raises(MloxError, match=r"pulumi-resource-tls-v5.5.1-linux-amd64.tar.gz: sha256 .* does not match"):
        plugins.install(folder, pulumi=str(_fake_pulumi(tmp_path)), sdks=dict(PINNED), env={"PULUMI_HOME": str(tmp_path)})


def test_only_missing_plugins_are_installed_and_a_second_run_installs_none(tmp_path):
    folder = _folder(tmp_path, PINNED)
    home = tmp_path / "home"
    env = {**os.environ, "PULUMI_HOME": str(home)}
    (home / "plugins" / "resource-random-v4.21.1").mkdir(parents=True)
    (home / "plugins" / "resource-random-v4.21.1" / "pulumi-resource-random").touch()
    fake = str(_fake_pulumi(tmp_path))
    done = plugins.install(folder, pulumi=fake, sdks={"command": "1.2.1", "random": "4.21.1"}, env=env, log=lambda _: None)
    assert [p.name for p in done] == ["command"]
    assert (home / "calls").read_text().split() == [
        "plugin", "install", "resource", "command", "v1.2.1", "--file", str(folder / "pulumi-resource-command-v1.2.1-linux-amd64.tar.gz")]
    assert plugins.install(folder, pulumi=fake, sdks={"command": "1.2.1", "random": "4.21.1"}, env=env) == []


def test_the_installed_sdks_are_the_pinned_ones():
    """What setup installed into this venv: a drifted pin would make the engine look for another plugin."""
    found = plugins.installed_sdks()
    for name in ("command", "random", "tls"):
        assert found[name] == PINNED[name], name


def test_the_plugin_folder_is_found_beside_the_project_or_a_folder_above(tmp_path):
    (tmp_path / "shared" / "pulumi-plugins").mkdir(parents=True)
    deep = tmp_path / "ci" / "run-7" / "checkout"
    deep.mkdir(parents=True)
    assert plugins.default_dir(deep, env={}) == tmp_path / "shared" / "pulumi-plugins"
    assert plugins.default_dir(deep, env={"MLOX_PULUMI_PLUGINS": "/x"}) == Path("/x")
