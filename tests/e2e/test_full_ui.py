"""End to end: ``mlox-iac ui`` against the shared full stack, in a real headless Chromium, and
the stack's own home page.

The UI runs as a user runs it (``python -m mlox_iac.cli.main ui --no-browser`` in the stack's
project with the user's environment); Playwright drives Debian's Chromium at the URL it
printed. Nothing here changes the stack for the other modules: a preview only, and a backup
(a new snapshot) where the stack has a backup repository. Screenshots of the main pages are
saved (``MLOX_TEST_ARTIFACTS`` or the tmp dir) and checked.
"""

from __future__ import annotations

import base64
import html.parser
import json
import re
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ui"))

from browser import artifacts_dir, launch, screenshot  # noqa: E402

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def ui(full_stack):
    """The UI process, and the URL with its token."""
    # The sandbox's key, as its user passes it to every command that uses SSH (backups, logs, the CA).
    key = full_stack.folder / "id_ed25519"
    proc = subprocess.Popen([sys.executable, "-m", "mlox_iac.cli.main", "ui", "--no-browser", "--identity", str(key)],
                            cwd=full_stack.project,
                            env=full_stack.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    url = None
    deadline = time.monotonic() + 60
    while url is None and time.monotonic() < deadline:
        line = proc.stderr.readline()
        assert line or proc.poll() is None, f"mlox-iac ui ended: exit {proc.poll()}"
        found = re.search(r"(http://127\.0\.0\.1:\d+/\?token=\S+)", line)
        url = found.group(1) if found else None
    assert url, "mlox-iac ui printed no URL within 60 s"
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    rest = proc.stderr.read()
    assert "Traceback" not in rest, rest[-3000:]


@pytest.fixture(scope="module")
def browser_page(ui):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch(p)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.set_default_timeout(120_000)  # each page asks the engine and the server
        page.goto(ui)
        yield page
        browser.close()


def _base(ui: str) -> str:
    return ui.split("/?token=")[0]


def _job_ends(page, timeout_ms: int) -> str:
    """Wait for the job page's job to end (done or failed, not a fixed text); its state."""
    # A locator, not wait_for_function: the UI's Content-Security-Policy (script-src 'self')
    # forbids the eval that a string predicate needs.
    page.locator('#job:not([data-state="running"])').wait_for(state="attached", timeout=timeout_ms)
    state = page.locator("#job").get_attribute("data-state")
    assert state == "done", (page.locator("#job-state").inner_text(), page.locator("#job-log").inner_text()[-3000:])
    return state


def _secrets(outputs: dict) -> list[str]:
    values = []
    for key in ("ui_passwords", "login_passwords", "api_tokens"):
        values += [str(v) for v in (outputs.get(key) or {}).values()]
    values += [str(outputs[k]) for k in ("s3_access_key", "s3_secret_key", "backup_password") if outputs.get(k)]
    return [v for v in values if len(v) >= 8]


def test_stacks_page_lists_the_stack_healthy(browser_page, ui, full_stack, tmp_path):
    page = browser_page
    page.goto(f"{_base(ui)}/")
    row = page.locator(f'tr[data-stack="{full_stack.stack}"]')
    assert row.get_attribute("data-health") == "up", row.inner_text()
    assert full_stack.outputs["provider"] in row.inner_text()
    screenshot(page, artifacts_dir(tmp_path), "e2e-stacks")


def test_stack_page_shows_every_service_and_no_secret(browser_page, ui, full_stack, tmp_path):
    page = browser_page
    page.goto(f"{_base(ui)}/stacks/{full_stack.stack}")
    shown = {el.get_attribute("data-service"): el.get_attribute("data-up")
             for el in page.locator("#health .service").all()}
    assert set(shown) == set(full_stack.outputs["urls"]), shown
    assert all(up == "true" for up in shown.values()), shown
    text = page.content()
    for value in _secrets(full_stack.outputs):
        assert value not in text, f"a secret is in the page before a reveal: {value[:3]}..."
    screenshot(page, artifacts_dir(tmp_path), "e2e-stack")


def test_reveal_shows_the_right_password(browser_page, ui, full_stack):
    page = browser_page
    page.goto(f"{_base(ui)}/stacks/{full_stack.stack}")
    row = page.locator('tr[data-secret="ui_passwords.mlflow"]')
    row.locator("button.reveal").click()
    from playwright.sync_api import expect

    expect(row.locator(".secret-value")).to_have_text(full_stack.outputs["ui_passwords"]["mlflow"])


def test_a_request_without_the_token_is_refused(ui, full_stack):
    for path in ("/", f"/stacks/{full_stack.stack}", "/new"):
        try:
            urllib.request.urlopen(f"{_base(ui)}{path}", timeout=30)
            raise AssertionError(f"{path} answered without the token")
        except urllib.error.HTTPError as error:
            assert error.code == 403 and b"refused" in error.read()


def test_preview_of_a_changed_setting_shows_the_diff(browser_page, ui, full_stack, tmp_path):
    path = full_stack.project / "stacks" / f"Pulumi.{full_stack.stack}.yaml"
    original = path.read_text()
    document = yaml.safe_load(original)
    services = document["config"].setdefault("mlox:services", {})
    mlflow = services.setdefault("mlflow", {}) or {}
    services["mlflow"] = mlflow
    mlflow["workers"] = 3 if mlflow.get("workers", 2) != 3 else 2
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    try:
        page = browser_page
        page.goto(f"{_base(ui)}/stacks/{full_stack.stack}")
        page.click("#preview")
        page.wait_for_url("**/jobs/*")
        _job_ends(page, 900_000)
        blocks = page.locator(".diff-resource")
        assert blocks.count() >= 1, page.locator("#job-log").inner_text()
        rows = page.locator(".diff-resource .add, .diff-resource .del, .diff-resource .chg").all_inner_texts()
        assert rows, page.locator("#job-diff").inner_text()
        screenshot(page, artifacts_dir(tmp_path), "e2e-preview")
    finally:
        path.write_text(original)  # the other modules find the stack file as it was


def test_back_up_now_produces_a_snapshot_the_page_lists(browser_page, ui, full_stack, tmp_path):
    page = browser_page
    page.goto(f"{_base(ui)}/stacks/{full_stack.stack}")
    if not full_stack.outputs.get("backup_repository"):
        assert "No backup repository" in page.locator("#backups").inner_text()
        pytest.skip("the shared stack has no backup repository (mlox:backup): the page says so; nothing to back up")
    before = set(page.locator("#snapshots tbody tr").evaluate_all("rows => rows.map(r => r.dataset.snapshot)"))
    page.click("#backup-now")
    page.wait_for_url("**/jobs/*")
    _job_ends(page, 1_200_000)
    screenshot(page, artifacts_dir(tmp_path), "e2e-backup")
    page.goto(f"{_base(ui)}/stacks/{full_stack.stack}")
    after = set(page.locator("#snapshots tbody tr").evaluate_all("rows => rows.map(r => r.dataset.snapshot)"))
    assert len(after - before) == 1, (before, after)


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []
        self.rows: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])
        if tag == "tr" and attrs.get("data-service"):
            self.rows[attrs["data-service"]] = ""


def _ca_context(full_stack) -> ssl.SSLContext:
    ca = full_stack.client_env.get("MLOX_CA_FILE") or full_stack.client_env.get("AWS_CA_BUNDLE")
    return ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()


def _get(url: str, context, auth: tuple[str, str] | None, accept: str = "text/html") -> tuple[int, bytes]:
    headers = {"Accept": accept}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_home_page_lists_every_service_with_working_links(browser_page, full_stack, tmp_path):
    outputs = full_stack.outputs
    home = outputs["urls"]["home"]
    context = _ca_context(full_stack)
    user, passwords = outputs["ui_user"], outputs["ui_passwords"]
    assert _get(home, context, None)[0] == 401  # behind the stack's auth
    status, body = _get(home, context, (user, passwords["home"]))
    assert status == 200, body[:500]
    parser = _Links()
    parser.feed(body.decode())
    routes = set(outputs["urls"]) - {"home"}
    assert set(parser.rows) == routes, parser.rows
    data = json.loads(_get(home, context, (user, passwords["home"]), "application/json")[1])
    assert {s["name"]: s["health"]["up"] for s in data["services"]} == {r: True for r in routes}, data["services"]
    origin = re.match(r"https://[^/]+", home).group(0)
    for link in parser.links:
        url = link if link.startswith("https://") else origin + link
        route = next((r for r in routes if f"/{r}/" in url or url.startswith(f"https://{r}.")), None)
        auth = (user, passwords[route]) if route in passwords else None
        status, _ = _get(url, context, auth)
        # A UI answers its page (or a redirect to its login). APIs (Feast, served models) are not linked.
        assert status < 400, (url, status)
    # The S3 API still answers at the bare root: a signed request (boto3) lists the buckets.
    import boto3

    s3 = boto3.client("s3", endpoint_url=outputs["s3_endpoint"], aws_access_key_id=outputs["s3_access_key"],
                      aws_secret_access_key=outputs["s3_secret_key"], region_name="us-east-1",
                      verify=full_stack.client_env.get("AWS_CA_BUNDLE") or True)
    names = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert set(outputs["s3_buckets"]) <= names
    # The page as a browser shows it (its HTML, rendered here: the browser does not trust the stack's CA).
    page = browser_page
    page.set_content(body.decode())
    screenshot(page, artifacts_dir(tmp_path), "e2e-home")
