"""The Pulumi resource plugins the program needs, installed from a local folder of tarballs.

A provider's Python SDK asks the engine for the plugin of *its own* version: with
``pulumi-random`` 4.21.4 installed the engine looks for ``random`` 4.21.4 and, where no
download site is reachable, fails deep inside a deploy. On such machines the plugins come
from a folder (``../shared/pulumi-plugins`` beside the project, or ``MLOX_PULUMI_PLUGINS``)
holding ``pulumi-resource-NAME-vVERSION-linux-amd64.tar.gz`` files and their ``SHA256SUMS``.
:func:`install` checks the checksums and that every installed SDK matches its plugin, then
installs what is missing into the plugin cache (``$PULUMI_HOME/plugins``) with
``pulumi plugin install``. Elsewhere the engine downloads the same versions by itself.

    python -m mlox_iac.plugins [--dir DIR]     # what scripts/setup runs
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from mlox_iac.errors import MloxError

# Plugin name -> the Python SDK distribution that asks for it.
SDKS = {"command": "pulumi-command", "random": "pulumi-random", "tls": "pulumi-tls", "hcloud": "pulumi-hcloud"}
# What every stack's program uses, and the plugin of each cloud provider (``mlox:provider``).
BASE_PLUGINS = {name: SDKS[name] for name in ("command", "random", "tls")}
PROVIDER_PLUGINS = {"hetzner": ("hcloud", SDKS["hcloud"]), "digitalocean": ("digitalocean", "pulumi-digitalocean"),
                    "aws": ("aws", "pulumi-aws")}
_TARBALL = re.compile(r"pulumi-resource-(?P<name>[a-z0-9-]+)-v(?P<version>[0-9][^-]*)-linux-amd64\.tar\.gz")


@dataclass(frozen=True)
class Plugin:
    name: str
    version: str
    tarball: Path


def default_dir(project_dir: Path, env: Mapping[str, str] | None = None) -> Path:
    """``MLOX_PULUMI_PLUGINS``, else the first ``shared/pulumi-plugins`` beside the project or
    beside a folder above it (``../shared/pulumi-plugins`` for a checkout next to it)."""
    env = os.environ if env is None else env
    if env.get("MLOX_PULUMI_PLUGINS"):
        return Path(env["MLOX_PULUMI_PLUGINS"])
    project_dir = project_dir.resolve()
    for folder in project_dir.parents:
        candidate = folder / "shared" / "pulumi-plugins"
        if candidate.is_dir():
            return candidate
    return project_dir.parent / "shared" / "pulumi-plugins"


def bundled(folder: Path) -> dict[str, Plugin]:
    """The plugins in ``folder``, by name, after checking every tarball against ``SHA256SUMS``."""
    sums_file = folder / "SHA256SUMS"
    if not sums_file.is_file():
        raise MloxError(f"{sums_file}: missing (the plugin folder must list each tarball's sha256)")
    sums = {}
    for line in sums_file.read_text().splitlines():
        if line.strip():
            digest, _, file = line.strip().partition("  ")
            sums[file.strip()] = digest
    plugins = {}
    for path in sorted(folder.glob("pulumi-resource-*.tar.gz")):
        match = _TARBALL.fullmatch(path.name)
        if not match:
            continue
        if path.name not in sums:
            raise MloxError(f"{path}: not listed in {sums_file}")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != sums[path.name]:
            raise MloxError(f"{path}: sha256 {digest} does not match {sums_file} ({sums[path.name]}); "
                            "the file is damaged or not the one the recipe built")
        plugins[match["name"]] = Plugin(match["name"], match["version"], path)
    return plugins


def installed_sdks(version_of: Callable[[str], str] = metadata.version) -> dict[str, str]:
    """Plugin name -> version of its installed Python SDK (absent SDKs are left out)."""
    found = {}
    for name, dist in SDKS.items():
        try:
            found[name] = version_of(dist)
        except metadata.PackageNotFoundError:
            pass
    return found


def mismatches(sdks: Mapping[str, str], plugins: Mapping[str, Plugin], folder: Path) -> list[str]:
    """One line per installed SDK whose plugin in ``folder`` is missing or of another version."""
    problems = []
    for name, version in sorted(sdks.items()):
        plugin = plugins.get(name)
        if plugin is None:
            problems.append(f"{SDKS[name]} {version} is installed but {folder} has no {name} plugin: the engine "
                            f"would try to download resource plugin {name} v{version} and fail without internet")
        elif plugin.version != version:
            problems.append(f"{SDKS[name]} {version} is installed but {folder} has the {name} plugin {plugin.version}: "
                            f"the engine asks for the SDK's own version; install {SDKS[name]}=={plugin.version} "
                            "(pyproject.toml pins it)")
    return problems


def plugin_cache(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("PULUMI_HOME") or Path.home() / ".pulumi") / "plugins"


def is_installed(plugin: Plugin, cache: Path) -> bool:
    """Pulumi keeps plugin NAME at VERSION in ``resource-NAME-vVERSION/``; a ``.partial`` file
    beside it marks an install that did not finish."""
    folder = cache / f"resource-{plugin.name}-v{plugin.version}"
    return (folder / f"pulumi-resource-{plugin.name}").is_file() and not folder.with_name(folder.name + ".partial").exists()


def all_in_cache(names: Mapping[str, str], env: Mapping[str, str] | None = None,
                 version_of: Callable[[str], str] = metadata.version) -> bool:
    """Whether each plugin of ``names`` (plugin name -> its SDK distribution) is in the plugin
    cache at the version of its installed SDK (False when an SDK is not installed)."""
    cache = plugin_cache(env)
    for name, dist in names.items():
        try:
            version = version_of(dist)
        except metadata.PackageNotFoundError:
            return False
        if not is_installed(Plugin(name, version, Path()), cache):
            return False
    return True


def install(folder: Path, *, pulumi: str = "pulumi", env: Mapping[str, str] | None = None,
            sdks: Mapping[str, str] | None = None, log: Callable[[str], None] = print) -> list[Plugin]:
    """Check ``folder`` and install into the plugin cache each plugin an SDK needs and the cache
    lacks. Returns what was installed. Raises :class:`MloxError` with one line per problem."""
    plugins = bundled(folder)
    sdks = installed_sdks() if sdks is None else sdks
    problems = mismatches(sdks, plugins, folder)
    if problems:
        raise MloxError("; ".join(problems))
    cache = plugin_cache(env)
    done = []
    for name in sorted(sdks):
        plugin = plugins[name]
        if is_installed(plugin, cache):
            continue
        log(f"[plugins] installing resource plugin {name} v{plugin.version} from {plugin.tarball}")
        run = subprocess.run([pulumi, "plugin", "install", "resource", name, f"v{plugin.version}",
                              "--file", str(plugin.tarball)], capture_output=True, text=True,
                             env=None if env is None else dict(env))
        if run.returncode != 0:
            reason = (run.stderr or run.stdout).strip().splitlines()[-1:] or [f"exit {run.returncode}"]
            raise MloxError(f"pulumi plugin install resource {name} v{plugin.version} failed: {reason[0]}")
        done.append(plugin)
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlox_iac.plugins", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="folder of plugin tarballs (default: MLOX_PULUMI_PLUGINS, "
                                                 "else ../shared/pulumi-plugins beside the project)")
    parser.add_argument("--pulumi", default="pulumi", help="the Pulumi CLI to install with")
    args = parser.parse_args(argv)
    folder = args.dir or default_dir(Path(__file__).resolve().parents[1])
    if not folder.is_dir():
        print(f"[plugins] no plugin folder at {folder}: the engine downloads the plugins it needs by itself")
        return 0
    try:
        done = install(folder, pulumi=args.pulumi)
    except MloxError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    sdks = installed_sdks()
    print(f"[plugins] {len(done)} installed, {len(sdks) - len(done)} already there "
          f"({', '.join(f'{n} {v}' for n, v in sorted(sdks.items()))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
