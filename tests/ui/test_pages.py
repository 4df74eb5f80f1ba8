"""The UI's pages and actions on fixture data (``tests/ui/fixture.py``), through a test client:
each page renders, the token and the CSRF token are required, no secret is in a page until a
reveal, and each action does what its CLI twin does."""

from __future__ import annotations

import json
import threading
import time

import pytest

from conftest import KEY
from fixture import PASSWORDS, SECRET_VALUES
from ui_fixtures import anonymous, backend, client, guard, ui_env  # noqa: F401 (fixtures)


def _wait_job(client, job_path: str, timeout: float = 20) -> list[dict]:
    """The events of a job page's stream, to its end."""
    items = []
    deadline = time.monotonic() + timeout
    with client.stream("GET", f"{job_path}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                item = json.loads(line[len("data: "):])
                items.append(item)
                if item["kind"] == "end":
                    return items
            assert time.monotonic() < deadline, items
    return items


def _no_secret(text: str) -> None:
    for value in SECRET_VALUES:
        assert value not in text, f"a secret is in the page: {value[:4]}..."


def test_stacks_page_lists_every_stack_with_cost_health_backup(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    text = response.text
    for name, health in (("prod", "up"), ("lab", "up"), ("staging", "not deployed"), ("broken", "unknown")):
        assert f'data-stack="{name}" data-health="{health}"' in text
    assert "7.63 EUR" in text and "cx23" in text and "own host" in text
    assert "mlox:hetzner.server_typ: unknown key (did you mean &#39;server_type&#39;?)" in text
    assert "2 h ago" in text  # prod's last backup
    assert "$ mlox-iac status --stack NAME --json" in text
    _no_secret(text)


def test_a_down_service_shows_on_both_pages(client, backend):
    backend.down.add("mlflow")
    assert 'data-stack="prod" data-health="down"' in client.get("/").text
    text = client.get("/stacks/prod").text
    assert 'data-service="mlflow" data-up="false"' in text and 'data-service="s3" data-up="true"' in text


def test_stack_page_shows_every_part_and_no_secret(client):
    text = client.get("/stacks/prod").text
    for route in ("s3", "mlflow", "home"):
        assert f'data-service="{route}" data-up="true"' in text
    assert "version v3.17.2-full" in text and "version 4.48" in text
    assert 'data-secret="ui_passwords.mlflow"' in text and 'data-secret="s3_secret_key"' in text
    assert 'data-snapshot="4f2a91c0"' in text and "Back up now" in text
    assert "export MLFLOW_TRACKING_URI=https://192.0.2.10/mlflow" in text
    assert "# MLFLOW_TRACKING_PASSWORD: [secret]" in text
    assert "This stack costs 7.63 EUR a month here" in text and "<meter" in text
    assert 'data-url="/stacks/prod/logs/mlflow?tail=100"' in text
    for command in ("mlox-iac status --stack prod", "mlox-iac backup --stack prod", "mlox-iac env --stack prod",
                    "mlox-iac preview --stack prod", "mlox-iac up --stack prod --yes", "mlox-iac cost --stack prod"):
        assert f"$ {command}" in text
    assert "No backup repository" not in text and "Monitoring is not enabled" in text
    _no_secret(text)


def test_stack_page_with_monitoring_lists_the_firing_alerts(client):
    text = client.get("/stacks/lab").text
    assert "BackupMissing" in text and "No backup in 26 h" in text
    assert "No backup repository" in text
    _no_secret(text)


def test_stack_not_deployed_and_unknown_stack(client):
    text = client.get("/stacks/staging").text
    assert "stack staging has not been deployed yet: run mlox-iac up --stack staging" in text
    response = client.get("/stacks/nope")
    assert response.status_code == 404 and "no stack nope in this project" in response.text


def test_reveal_returns_the_secret_uncached(client, guard):
    response = client.post("/stacks/prod/reveal", json={"secret": "ui_passwords.mlflow"},
                           headers={"X-CSRF-Token": guard.csrf})
    assert response.status_code == 200 and response.json() == {"secret": "ui_passwords.mlflow",
                                                              "value": PASSWORDS["mlflow"]}
    assert response.headers["cache-control"] == "no-store"
    bad = client.post("/stacks/prod/reveal", json={"secret": "server_address"}, headers={"X-CSRF-Token": guard.csrf})
    assert bad.status_code == 400 and "is not a secret of stack prod" in bad.json()["error"]


def test_requests_without_the_token_are_refused(anonymous, guard):
    for path in ("/", "/stacks/prod", "/new", "/static/ui.js", "/stacks/prod/logs/mlflow"):
        response = anonymous.get(path)
        assert response.status_code == 403 and "refused: no token" in response.text, path
    response = anonymous.post("/stacks/prod/reveal", json={"secret": "ui_passwords.mlflow"},
                              headers={"X-CSRF-Token": guard.csrf})
    assert response.status_code == 403 and PASSWORDS["mlflow"] not in response.text
    assert anonymous.get("/?token=wrong").status_code == 403
    anonymous.cookies.set("mlox_ui", "wrong")
    assert anonymous.get("/").status_code == 403


def test_the_token_moves_from_the_url_to_a_strict_httponly_cookie(anonymous, guard):
    response = anonymous.get(f"/stacks/prod?token={guard.token}", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/stacks/prod"
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and guard.token.lower() in cookie
    assert anonymous.get("/stacks/prod").status_code == 200


def test_another_host_name_is_refused(client):
    response = client.get("/", headers={"Host": "evil.example.com:8765"})
    assert response.status_code == 403 and "127.0.0.1" in response.text


@pytest.mark.parametrize("path, form", [
    ("/stacks/prod/backup", {}),
    ("/stacks/prod/restore", {"snapshot": "4f2a91c0", "confirm": "prod"}),
    ("/stacks/prod/preview", {}),
    ("/stacks/prod/up", {"confirm": "prod"}),
    ("/stacks/prod/migrate", {"step": "abort", "confirm": "prod"}),
    ("/new", {"stack": "x", "provider": "hetzner"}),
])
def test_every_change_without_the_csrf_token_is_refused(client, backend, guard, path, form):
    response = client.post(path, data=form)
    assert response.status_code == 403 and "CSRF" in response.text
    response = client.post(path, data={**form, "csrf": "forged"})
    assert response.status_code == 403
    response = client.post(path, data={**form, "csrf": guard.csrf}, headers={"Origin": "http://evil.example.com"})
    assert response.status_code == 403 and "another site" in response.text
    assert backend.restored == [] and len(backend.snapshot_list["prod"]) == 1
    assert not client.app_state.jobs.for_stack("prod")


def test_reveal_without_csrf_is_refused(client):
    response = client.post("/stacks/prod/reveal", json={"secret": "ui_passwords.mlflow"})
    assert response.status_code == 403 and PASSWORDS["mlflow"] not in response.text


def test_back_up_now_runs_as_a_job_and_the_snapshot_is_listed(client, guard):
    response = client.post("/stacks/prod/backup", data={"csrf": guard.csrf}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"].startswith("/jobs/")
    page = client.get(response.headers["location"]).text
    assert "$ mlox-iac backup --stack prod" in page
    items = _wait_job(client, response.headers["location"])
    assert items[-1] == {"kind": "end", "state": "done", "error": None}
    lines = [i["text"] for i in items if i["kind"] == "line"]
    assert lines[0] == "[databases] databases done" and lines[-1].endswith("check ok")
    new_id = lines[-1].split()[1].rstrip(":")
    assert f'data-snapshot="{new_id}' in client.get("/stacks/prod").text


def test_restore_needs_the_typed_stack_name(client, backend, guard):
    response = client.post("/stacks/prod/restore", data={"csrf": guard.csrf, "snapshot": "4f2a91c0", "confirm": "prd"})
    assert response.status_code == 400 and "type the stack name &#39;prod&#39; to confirm" in response.text
    assert backend.restored == []
    response = client.post("/stacks/prod/restore", data={"csrf": guard.csrf, "snapshot": "4f2a91c0", "confirm": "prod"},
                           follow_redirects=False)
    assert _wait_job(client, response.headers["location"])[-1]["state"] == "done"
    assert backend.restored == [("prod", "4f2a91c0")]


def test_preview_shows_each_changed_setting_as_a_diff(client, guard):
    response = client.post("/stacks/prod/preview", data={"csrf": guard.csrf}, follow_redirects=False)
    items = _wait_job(client, response.headers["location"])
    assert items[-1]["state"] == "done", items[-1]
    diffs = [i for i in items if i["kind"] == "diff"]
    assert len(diffs) == 1 and diffs[0]["name"] == "main-bundle-compose-up" and diffs[0]["op"] == "update"
    assert diffs[0]["rows"] == [["-", "environment.MLFLOW_WORKERS", "2"], ["+", "environment.MLFLOW_WORKERS", "4"]]
    assert any(i["kind"] == "progress" for i in items)
    assert any(i["kind"] == "line" and i["text"].startswith("preview: 1 resource(s) would change") for i in items)


def test_up_needs_the_typed_stack_name_then_streams_progress(client, guard):
    response = client.post("/stacks/prod/up", data={"csrf": guard.csrf, "confirm": ""})
    assert response.status_code == 400 and "deploy: type the stack name" in response.text
    response = client.post("/stacks/prod/up", data={"csrf": guard.csrf, "confirm": "prod"}, follow_redirects=False)
    items = _wait_job(client, response.headers["location"])
    assert items[-1]["state"] == "done", items[-1]
    assert any(i["kind"] == "line" and i["text"] == "updated main-bundle-compose-up (command:remote:Command)" for i in items)
    _no_secret(json.dumps(items))


def test_one_job_per_stack_at_a_time(client, backend, guard):
    backend.gate = threading.Event()
    first = client.post("/stacks/prod/backup", data={"csrf": guard.csrf}, follow_redirects=False)
    second = client.post("/stacks/prod/preview", data={"csrf": guard.csrf})
    assert second.status_code == 400 and "stack prod is busy: backup is running (job 1)" in second.text
    assert 'backup is running: <a href="/jobs/1">follow it</a>' in second.text
    other = client.post("/stacks/lab/preview", data={"csrf": guard.csrf}, follow_redirects=False)
    assert other.status_code == 303  # another stack is free
    backend.gate.set()
    assert _wait_job(client, first.headers["location"])[-1]["state"] == "done"
    _wait_job(client, other.headers["location"])


def test_logs_tail(client):
    response = client.get("/stacks/prod/logs/mlflow?tail=5")
    assert response.status_code == 200 and response.text.startswith("mlflow-1  | line 1 of mlflow")


def test_new_stack_form_errors_are_the_clis_lines_next_to_their_field(client, guard, ui_env):
    project, _ = ui_env
    assert 'name="services" value="home" checked' in client.get("/new").text
    form = {"csrf": guard.csrf, "stack": "dev", "provider": "hetzner", "size": "cx22", "ssh_key": "not a key",
            "admin_cidr": "203.0.113.7"}
    response = client.post("/new", data=form)
    assert response.status_code == 400
    text = response.text
    assert ('<p class="field-error" data-field="size">stacks/Pulumi.dev.yaml: mlox:hetzner.server_type: &#39;cx22&#39; '
            'is retired') in text
    assert '<p class="field-error" data-field="ssh_key">stacks/Pulumi.dev.yaml: mlox:ssh.public_keys' in text
    assert not (project / "stacks" / "Pulumi.dev.yaml").exists()
    exists = client.post("/new", data={**form, "stack": "prod", "size": "cx23", "ssh_key": KEY})
    assert '<p class="field-error" data-field="stack">stacks/Pulumi.prod.yaml: already exists' in exists.text


def test_new_stack_form_writes_what_init_writes(client, guard, ui_env, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from mlox_iac.cli.main import app

    project, _ = ui_env
    response = client.post("/new", data={"csrf": guard.csrf, "stack": "dev", "provider": "hetzner", "size": "cx33",
                                         "ssh_key": KEY, "admin_cidr": "203.0.113.7",
                                         "services": ["postgres", "seaweedfs", "mlflow", "jupyter"]},
                           follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/stacks/dev"
    written = (project / "stacks" / "Pulumi.dev.yaml").read_text()
    result = CliRunner().invoke(app, ["init", "--stack", "dev2", "--provider", "hetzner", "--size", "cx33",
                                      "--ssh-key", KEY, "--admin-cidr", "203.0.113.7",
                                      "--services", "postgres,seaweedfs,mlflow,jupyter"])
    assert result.exit_code == 0, result.output
    assert (project / "stacks" / "Pulumi.dev2.yaml").read_text() == written.replace("Stack dev,", "Stack dev2,") \
        .replace("--stack dev\n", "--stack dev2\n")


def test_a_reconnecting_browser_gets_only_the_events_it_missed(client, guard):
    response = client.post("/stacks/prod/backup", data={"csrf": guard.csrf}, follow_redirects=False)
    everything = _wait_job(client, response.headers["location"])
    with client.stream("GET", f"{response.headers['location']}/events", headers={"Last-Event-ID": "2"}) as again:
        ids = [int(line[4:]) for line in again.iter_lines() if line.startswith("id: ")]
    assert ids[0] == 3 and len(ids) == len(everything) - 3


def test_a_migration_record_shows_its_phases(client, ui_env):
    from mlox_iac.migrations import stack as migrate

    project, _ = ui_env
    record = migrate.Record("prod", "hetzner", "digitalocean", "main", "main2", done={"preflight": 1.0, "provision": 2.0})
    migrate.save_record(project, record)
    text = client.get("/stacks/prod").text
    assert '<li class="done">provision</li>' in text and '<li class="next">copy</li>' in text
    assert "rerun `mlox-iac migrate --stack prod --to digitalocean` to resume at copy" in text
    assert 'data-stack="prod"' in client.get("/").text and "running: next copy" in client.get("/").text
    (project / migrate.RECORD_DIR / "prod.json").write_text("{not json")
    assert "not a migration record" in client.get("/").text and client.get("/stacks/prod").status_code == 200
