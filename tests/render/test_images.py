"""The image table (docs/images.yaml, shown as docs/images.md) against what the stack runs.

Every image the rendered bundle references (compose services, the FROM of a Dockerfile the
bundle builds, the backup's images) has exactly one row, and every row is referenced; each
row's programs include what the compose file runs in the image and occur in the stack's
code; the markdown is generated from the table. For the end-to-end tests' stand-ins
(tests/standins/), each assumption the stand-in does not meet is named in the table.
"""

from __future__ import annotations

import functools
import json
import os
import re

import pytest
import yaml

from conftest import ROOT, settings
from e2e import images as e2e_images
from mlox_iac.components.services.base import Context
from mlox_iac.components.services.registry import SERVICES
from mlox_iac.config.loader import validate
from mlox_iac.render import backup
from mlox_iac.render.bundle import render_bundle, render_compose

TABLE = ROOT / "docs" / "images.yaml"
MARKDOWN = ROOT / "docs" / "images.md"
DATA_TOOLING = ROOT / "mlox_iac" / "data"
# Every stand-in starts from a debootstrap'ed Debian bookworm (minbase): its Essential
# packages (dash, coreutils, grep, util-linux) provide these.
DEBIAN_BASE_PROGRAMS = {"sh", "cat", "rm", "chown", "touch", "sleep", "grep", "setpriv", "test", "bash"}  # Essential: yes in Debian
BACKUP_USE = "backup, restore and migrate on the server (`docker run`)"


def _catalogue(domain: bool) -> Context:
    """The whole catalogue: every service on (serving with a model, monitoring with alerts)."""
    services: dict = {name: {"enabled": True} for name in SERVICES}
    services["serving"]["models"] = [{"name": "iris"}]
    services["monitoring"]["alerts"] = {"webhook_url": "https://hooks.example.com/mlox"}
    extra = {"domain": "ml.example.com", "acme_email": "ops@example.com"} if domain else {}
    raw = settings("onprem", services=services, **extra)
    raw["onprem"]["memory_mb"] = 32768
    return Context(validate(raw, {"onprem.private_key"}, "test.yaml", "test"))


def _word(word: str, text: str) -> bool:
    return re.search(rf"(?<![\w.-]){re.escape(word)}(?![\w-])", text) is not None


def _program(argv0: str) -> str:
    return argv0 if argv0.startswith("/label-studio/") else argv0.rsplit("/", 1)[-1]


def _run_programs(spec: dict) -> set[str]:
    """What a container runs by name: its health check's program and its entrypoint's (or
    command's) first word (scripts given to ``sh -c`` count as sh)."""
    found = set()
    test = spec["healthcheck"]["test"]
    found.add(_program(test[1] if test[0] == "CMD" else test[1].split()[0]))
    if spec.get("entrypoint"):
        found.add(_program(spec["entrypoint"][0]))
    elif spec.get("command") and not spec["command"][0].startswith("-"):
        found.add(_program(spec["command"][0]))
    return found


def _mount_target(mount) -> str:
    if isinstance(mount, dict):
        return mount["target"]
    return mount.split(":")[1]


@functools.cache
def referenced() -> dict[str, dict]:
    """Image -> what the stack does with it: containers, mount paths, programs it runs by
    name, setpriv users, and the text those come from (compose specs, Dockerfiles, the data
    tooling that runs commands in containers)."""
    uses: dict[str, dict] = {}

    def use(image: str) -> dict:
        return uses.setdefault(image, {"used_by": set(), "paths": set(), "programs": set(), "users": set(), "text": ""})

    for domain in (False, True):
        ctx = _catalogue(domain)
        compose = render_compose(ctx)
        for name, spec in compose["services"].items():
            entry = use(spec["image"])
            entry["used_by"].add(f"`{name}`")
            entry["paths"] |= {_mount_target(m) for m in spec.get("volumes", [])}
            entry["programs"] |= _run_programs(spec)
            entry["users"] |= set(re.findall(r"setpriv --reuid=(\S+)", json.dumps(spec)))
            entry["text"] += json.dumps(spec)
        for path, text in render_bundle(ctx).items():
            if path.endswith("Dockerfile"):
                built = next(s["image"] for s in compose["services"].values()
                             if s.get("build", {}).get("context") == f"./{path.rsplit('/', 1)[0]}")
                for base in re.findall(r"^FROM (\S+)", text, re.M):
                    entry = use(base)
                    entry["used_by"].add(f"the build of `{built}` (bundle `{path}`)")
                    entry["text"] += text
    for image in backup.IMAGES:
        use(image)["used_by"].add(BACKUP_USE)
    tooling = "".join(p.read_text() for p in sorted(DATA_TOOLING.glob("*.py")))
    for entry in uses.values():
        entry["text"] += tooling
    return uses


def table() -> list[dict]:
    return yaml.safe_load(TABLE.read_text())["images"]


ROWS = {row["image"]: row for row in table()}


def row_problems(row: dict, use: dict) -> list[str]:
    """Where a row disagrees with what the stack does with its image."""
    image, problems = row["image"], []
    for key in ("source", "user", "programs", "relies_on", "standin"):
        if not row.get(key):
            problems.append(f"{image}: no {key}")
    unlisted = sorted(use["programs"] - set(row.get("programs", [])))
    if unlisted:
        problems.append(f"{image}: the compose file runs {unlisted}, not in its programs")
    unused = sorted(p for p in row.get("programs", []) if not _word(p, use["text"]))
    if unused:
        problems.append(f"{image}: programs {unused} appear nowhere in what the stack runs in it")
    if use["users"] - {row.get("user")}:
        problems.append(f"{image}: the stack drops to {sorted(use['users'])} with setpriv, the row says {row.get('user')}")
    return problems


def standin_problems(row: dict) -> list[str]:
    """Where a row's stand-in (for a built image: its base's) does not show that it meets the
    row's assumptions, unless the row names that in standin.lacks; and a lacks entry the
    stand-in does meet."""
    image = row["image"]
    base = row.get("built_from", image)
    if base not in e2e_images.STANDINS:
        return [f"{image}: no stand-in in tests/e2e/images.py, so the end-to-end tests cannot run it"]
    directory = e2e_images.STANDINS_DIR / e2e_images.STANDINS[base].directory
    text = "\n".join(p.read_text() for p in sorted(directory.rglob("*")) if p.is_file())
    problems = []
    if base not in (directory / "Dockerfile").read_text().splitlines()[0]:
        problems.append(f"{directory.name}/Dockerfile: its first line does not name {base}")
    final = re.findall(r"^FROM (\S+)", text, re.M)[-1]
    if final != e2e_images.BASE_IMAGE:
        problems.append(f"{directory.name}: the final stage starts FROM {final}, not {e2e_images.BASE_IMAGE}")
    standin = row.get("standin") or {}
    provides = standin.get("provides", {})
    unmet = {p for p in row.get("programs", [])
             if p not in DEBIAN_BASE_PROGRAMS and not _word(p.rsplit("/", 1)[-1], text)
             and not (p in provides and _word(provides[p], text))}
    if row.get("user") != "root" and not _word(str(row.get("user")), text):
        unmet.add("user")
    lacks = set(standin.get("lacks", []))
    if unmet - lacks:
        problems.append(f"{image}: its stand-in ({directory.name}) does not show {sorted(unmet - lacks)}; "
                        "name it in standin.lacks, or in standin.provides what provides it")
    if lacks - unmet:
        problems.append(f"{image}: standin.lacks names {sorted(lacks - unmet)}, which its stand-in has")
    if not standin.get("differs"):
        problems.append(f"{image}: say in standin.differs how the stand-in differs from upstream")
    return problems


def test_every_image_the_stack_runs_has_one_row_and_every_row_is_used():
    images = [row["image"] for row in table()]
    assert len(images) == len(set(images)), "an image has two rows"
    missing = sorted(set(referenced()) - set(images))
    stale = sorted(set(images) - set(referenced()))
    assert not missing, f"images the stack runs without a row in {TABLE.name}: {missing}"
    assert not stale, f"rows in {TABLE.name} for images the stack no longer runs: {stale}"


@pytest.mark.parametrize("image", sorted(ROWS))
def test_row_says_what_the_stack_runs_in_the_image(image):
    assert row_problems(ROWS[image], referenced()[image]) == []


@pytest.mark.parametrize("image", sorted(ROWS))
def test_stand_in_meets_the_rows_assumptions_or_the_row_names_where_not(image):
    assert standin_problems(ROWS[image]) == []


def test_every_stand_in_is_for_an_image_in_the_table():
    assert set(e2e_images.STANDINS) <= set(ROWS), sorted(set(e2e_images.STANDINS) - set(ROWS))


def test_the_checks_catch_a_wrong_row():
    """A row that misses a program the compose file runs, names one the stack never runs,
    claims another user, or whose stand-in lacks what it assumes, is reported."""
    row = {**ROWS["redis:7.0.15-bookworm"], "programs": ["redis-server", "redis-cli", "setpriv", "grep", "chown",
                                                        "valkey-server"], "user": "nobody"}
    assert row_problems(row, referenced()["redis:7.0.15-bookworm"]) == [
        "redis:7.0.15-bookworm: the compose file runs ['sh'], not in its programs",
        "redis:7.0.15-bookworm: programs ['valkey-server'] appear nowhere in what the stack runs in it",
        "redis:7.0.15-bookworm: the stack drops to ['redis'] with setpriv, the row says nobody",
    ]
    assert standin_problems({**ROWS["caddy:2.11.7"], "programs": ["caddy", "curl"]}) == [
        "caddy:2.11.7: its stand-in (caddy) does not show ['curl']; "
        "name it in standin.lacks, or in standin.provides what provides it"]
    lacking = {**ROWS["caddy:2.11.7"], "standin": {**ROWS["caddy:2.11.7"]["standin"], "lacks": ["wget"]}}
    assert standin_problems(lacking) == ["caddy:2.11.7: standin.lacks names ['wget'], which its stand-in has"]


def render_markdown() -> str:
    """docs/images.md: the table, with the containers and paths from the rendered compose file."""
    used = referenced()

    def cell(text: str) -> str:
        return " ".join(str(text).split()).replace("|", "\\|")

    def code(items) -> str:
        return ", ".join(f"`{item}`" for item in sorted(items)) or "—"

    lines = [
        "# Images",
        "",
        "<!-- Generated from docs/images.yaml by tests/render/test_images.py "
        "(MLOX_UPDATE_GOLDEN=1 rewrites it); edit the YAML. -->",
        "",
        "Every image the stack runs, pinned. Each is pulled from its publisher's registry, except "
        "`mlox-iac/jupyterlab`, which the server builds from the bundle's `jupyter/image/Dockerfile` "
        "on top of the pinned docker-stacks image (no published image carries JupyterLab with the "
        "stack's clients; the build runs once and is cached). \"Used by\" and \"Paths\" come from "
        "the rendered compose file with every service on. The last column is for the tests: no "
        "registry is reachable where they run, so `tests/e2e/images.py` builds a stand-in for each "
        "image under the same tag from the same upstream release (`tests/standins/`), and "
        "`tests/render/test_images.py` checks that each stand-in provides the programs and user "
        "listed here, or that the row names what it lacks.",
        "",
        "| Image | Source | Used by | Runs as | Paths the stack mounts | Programs the stack runs in it "
        "| Also relies on | Stand-in differs (tests) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in table():
        use = used.get(row["image"], {"used_by": set(), "paths": set()})
        standin = row["standin"]
        lacks = f" Lacks: {', '.join(standin['lacks'])}." if standin.get("lacks") else ""
        lines.append("| " + " | ".join([
            f"`{row['image']}`", cell(row["source"]), cell(", ".join(sorted(use["used_by"], key=lambda u: u.strip("`")))),
            f"`{row['user']}`", code(use["paths"]), code(row["programs"]), cell(row["relies_on"]),
            cell(standin["differs"] + lacks),
        ]) + " |")
    return "\n".join(lines) + "\n"


def test_markdown_is_generated_from_the_table():
    text = render_markdown()
    if os.environ.get("MLOX_UPDATE_GOLDEN"):
        MARKDOWN.write_text(text)
    assert MARKDOWN.exists() and MARKDOWN.read_text() == text, \
        f"{MARKDOWN.name} is out of date; rerun with MLOX_UPDATE_GOLDEN=1 and review the diff"
