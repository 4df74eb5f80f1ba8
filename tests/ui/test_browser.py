"""The UI in a real headless Chromium, as a user sees it, on fixture data (no deployed
stack): the stacks page, the stack page, reveal and copy, back up now, preview's diff,
the create form's errors, and the token. Screenshots of the main pages are saved as test
artefacts and checked."""

from __future__ import annotations

import pytest

from browser import artifacts_dir, launch, screenshot
from fixture import PASSWORDS, SECRET_VALUES
from ui_fixtures import backend, live_ui, ui_env  # noqa: F401 (fixtures)

import playwright.sync_api as playwright_api  # noqa: E402 (the test extra; fails, never skips, without it)


@pytest.fixture
def page(live_ui):
    with playwright_api.sync_playwright() as p:
        browser = launch(p)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_ui.base)
        page = context.new_page()
        page.set_default_timeout(20_000)
        yield page
        browser.close()


def test_stacks_and_stack_pages_with_reveal_and_copy(page, live_ui, tmp_path):
    folder = artifacts_dir(tmp_path)
    page.goto(live_ui.url("/"))
    assert page.url == f"{live_ui.base}/"  # the token left the address bar
    assert page.locator('tr[data-stack="prod"][data-health="up"]').count() == 1
    assert page.locator('tr[data-stack="staging"] .pill').inner_text() == "not deployed"
    screenshot(page, folder, "stacks")

    page.click('a[href="/stacks/prod"]')
    page.wait_for_selector("#health .service")
    names = page.locator("#health .service .service-name").all_inner_texts()
    assert sorted(names) == ["home", "mlflow", "s3"]
    html = page.content()
    for value in SECRET_VALUES:
        assert value not in html
    screenshot(page, folder, "stack")

    row = page.locator('tr[data-secret="ui_passwords.mlflow"]')
    row.locator("button.reveal").click()
    value = row.locator(".secret-value")
    playwright_api.expect(value).to_have_text(PASSWORDS["mlflow"])
    row.locator("button.copy").click()
    playwright_api.expect(row.locator("button.copy")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == PASSWORDS["mlflow"]
    assert PASSWORDS["home"] not in page.content()  # only what was revealed

    page.locator('details.logs:has(summary:text-is("mlflow")) summary').click()
    playwright_api.expect(page.locator('details.logs:has(summary:text-is("mlflow")) pre')).to_contain_text(
        "line 1 of mlflow")


def test_back_up_now_and_the_snapshot_is_listed(page, live_ui, backend, tmp_path):
    page.goto(live_ui.url("/stacks/prod"))
    before = page.locator("#snapshots tbody tr").count()
    page.click("#backup-now")
    page.wait_for_url("**/jobs/*")
    playwright_api.expect(page.locator("#job-state")).to_have_text("done", timeout=30_000)
    assert "[upload] upload done" in page.locator("#job-log").inner_text()
    screenshot(page, artifacts_dir(tmp_path), "job-backup")
    new_id = backend.snapshot_list["prod"][-1]["id"]
    page.click('h1 a[href="/stacks/prod"]')
    assert page.locator("#snapshots tbody tr").count() == before + 1
    assert page.locator(f'tr[data-snapshot="{new_id}"]').count() == 1


def test_preview_shows_the_diff(page, live_ui, tmp_path):
    page.goto(live_ui.url("/stacks/prod"))
    page.click("#preview")
    page.wait_for_url("**/jobs/*")
    playwright_api.expect(page.locator("#job-state")).to_have_text("done", timeout=30_000)
    block = page.locator('.diff-resource[data-resource="main-bundle-compose-up"]')
    assert block.locator(".del").inner_text() == "- environment.MLFLOW_WORKERS: 2"
    assert block.locator(".add").inner_text() == "+ environment.MLFLOW_WORKERS: 4"
    assert page.locator("code.twin").first.inner_text() == "$ mlox-iac preview --stack prod"
    screenshot(page, artifacts_dir(tmp_path), "preview")


def test_new_stack_form_shows_the_error_next_to_the_field(page, live_ui, tmp_path):
    page.goto(live_ui.url("/new"))
    page.fill("#f-stack", "dev")
    page.fill("#f-size", "cx22")
    page.fill("#f-ssh_key", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZ7eBjBSRNkuS+BTDG+3vvqteolSI3QO1RHW674qdPL t@x")
    page.fill("#f-admin_cidr", "203.0.113.7")
    page.click("button[type=submit]")
    error = page.locator('.field.invalid p.field-error[data-field="size"]')
    playwright_api.expect(error).to_contain_text("mlox:hetzner.server_type: 'cx22' is retired")
    assert page.locator("#f-size").input_value() == "cx22"  # the answers stay in the form


def test_without_the_token_the_browser_gets_nothing(page, live_ui):
    response = page.goto(f"{live_ui.base}/stacks/prod")
    assert response.status == 403 and "refused: no token" in page.content()
    assert PASSWORDS["mlflow"] not in page.content()
