"""backup, backups, restore and the status row through the CLI, with the server's side faked."""

from __future__ import annotations

import io
import json
import subprocess

import pytest

from mlox_iac import connect
from mlox_iac.errors import MloxError

OUTPUTS = {"server_address": "203.0.113.10", "ssh_user": "ubuntu", "ssh_port": 22,
           "backup_repository": "s3:https://s3.example.com/b/prod", "backup_password": "pw"}


class FakeProc:
    def __init__(self, lines, code=0, stderr=""):
        self.stdout = io.StringIO("".join(json.dumps(line) + "\n" if isinstance(line, dict) else line for line in lines))
        self.stderr = io.StringIO(stderr)
        self.code = code

    def wait(self):
        return self.code


def test_backup_argv_runs_the_shipped_tooling_as_root_without_secrets():
    argv = connect.backup_argv(OUTPUTS, "restore", ["--snapshot", "abc123"], identity="/k")
    assert argv[:3] == ["ssh", "-p", "22"] and "ubuntu@203.0.113.10" in argv
    assert argv[-1] == ("sudo -n sh -c 'cd /opt/mlox/bundle/backup && exec python3 -m mlox_data restore --snapshot abc123'")
    assert "pw" not in " ".join(argv)


def test_no_backup_block_is_a_config_error():
    from mlox_iac.errors import ConfigError

    with pytest.raises(ConfigError):
        connect.backup_argv({"server_address": "x"}, "backup")


def test_events_stream_progress_and_return_the_result():
    seen = []
    proc = FakeProc([{"event": "progress", "phase": "dump", "message": "database mlflow"}, "noise\n",
                     {"event": "result", "result": {"ok": True}}])
    assert connect.run_backup_verb(["ssh"], seen.append, popen=lambda *a, **k: proc) == {"ok": True}
    assert seen == [{"event": "progress", "phase": "dump", "message": "database mlflow"}]


def test_a_server_error_is_one_line():
    proc = FakeProc([{"event": "error", "message": "the backup repository is unreachable (x): y"}], code=1)
    with pytest.raises(MloxError, match=r"^the backup repository is unreachable \(x\): y$"):
        connect.run_backup_verb(["ssh"], popen=lambda *a, **k: proc)
    proc = FakeProc([], code=255, stderr="ssh: connect to host x port 22: Connection refused\n")
    with pytest.raises(MloxError, match="cannot reach the server over ssh"):
        connect.run_backup_verb(["ssh"], popen=lambda *a, **k: proc)


def test_a_dropped_connection_says_the_restore_goes_on_on_the_server():
    progress = {"event": "progress", "phase": "objects", "message": "bucket data"}
    proc = FakeProc([progress], code=255, stderr="Connection to 203.0.113.10 closed by remote host.\n")
    with pytest.raises(MloxError, match=r"^the connection to the server dropped \(Connection to .* closed by remote "
                                        r"host.\); the restore goes on there by itself: mlox-iac status shows how it ended"):
        connect.run_backup_verb(["ssh"], popen=lambda *a, **k: proc, goes_on="restore")
    # Nothing answered yet: the server was never reached.
    proc = FakeProc([], code=255, stderr="ssh: connect to host x port 22: Connection refused\n")
    with pytest.raises(MloxError, match="cannot reach the server over ssh"):
        connect.run_backup_verb(["ssh"], popen=lambda *a, **k: proc, goes_on="restore")


def test_ctrl_c_leaves_a_started_restore_running_and_says_so():
    class Interrupted(FakeProc):
        killed = False

        def kill(self):
            self.killed = True

    def lines():
        yield json.dumps({"event": "progress", "phase": "stop", "message": "stopping mlflow"}) + "\n"
        raise KeyboardInterrupt

    proc = Interrupted([])
    proc.stdout = lines()
    with pytest.raises(connect.LeftRunning, match="^interrupted here; the restore goes on on the server by itself") as info:
        connect.run_backup_verb(["ssh"], popen=lambda *a, **k: proc, goes_on="restore")
    assert proc.killed and info.value.exit_code == 130
    proc = Interrupted([])
    proc.stdout = lines()
    with pytest.raises(KeyboardInterrupt):  # snapshots, status: nothing goes on
        connect.run_backup_verb(["ssh"], popen=lambda *a, **k: proc)


def _cli(tmp_path, monkeypatch, events, *args, code=0):
    from typer.testing import CliRunner

    from mlox_iac.cli.main import app

    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(OUTPUTS))
    calls = []

    def popen(argv, **kw):
        calls.append(argv)
        return FakeProc(events, code=code)

    monkeypatch.setattr(subprocess, "Popen", popen)
    result = CliRunner().invoke(app, [*args, "--outputs-file", str(path)])
    return result, calls


def test_cli_backup_json(tmp_path, monkeypatch):
    result, calls = _cli(tmp_path, monkeypatch, [
        {"event": "progress", "phase": "upload", "message": "50% of 200 MB"},
        {"event": "result", "result": {"ok": True, "snapshot": "abcdef0123", "services": ["mlflow"], "check": "ok"}}],
        "backup", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["snapshot"] == "abcdef0123"
    assert "mlox_data backup" in calls[0][-1]


def test_cli_restore_needs_yes_without_a_terminal(tmp_path, monkeypatch):
    result, calls = _cli(tmp_path, monkeypatch, [], "restore")
    assert result.exit_code != 0 and calls == []
    assert "pass --yes" in str(result.exception) or "pass --yes" in result.output


def test_cli_restore_passes_snapshot_and_service(tmp_path, monkeypatch):
    result, calls = _cli(tmp_path, monkeypatch, [{"event": "result", "result": {
        "snapshot": "abc", "time": "2026-01-01T00:00:00Z", "verified": True,
        "restored": [{"service": "mlflow", "kind": "database", "name": "mlflow", "tables": 3, "rows": 10}]}}],
        "restore", "--yes", "--snapshot", "abc", "--service", "mlflow")
    assert result.exit_code == 0, result.output
    assert "mlox_data restore --snapshot abc --service mlflow" in calls[0][-1]
    assert "mlflow: database mlflow (tables 3, rows 10)" in result.stdout


def test_progress_lines_are_printed_as_given(tmp_path, monkeypatch):
    result, _ = _cli(tmp_path, monkeypatch, [
        {"event": "progress", "phase": "dump", "message": "database mlflow (mlflow)"},
        {"event": "result", "result": {"ok": True, "snapshot": "abcdef0123", "services": ["mlflow"], "check": "ok"}}],
        "backup")
    assert result.exit_code == 0, result.output
    assert "[dump] database mlflow (mlflow)" in result.stderr


@pytest.mark.parametrize("state, code, detail", [
    ({"ok": True, "detail": "ok", "age_s": 3600, "interval_s": 86400}, 0, "ok (last good backup 1h ago)"),
    ({"ok": False, "detail": "last backup failed: the backup repository is unreachable (x): y", "age_s": 90000,
      "interval_s": 86400}, 1, "last backup failed: the backup repository is unreachable (x): y (last good backup 1d ago)"),
])
def test_status_has_a_backup_row_and_fails_with_it(tmp_path, monkeypatch, state, code, detail):
    from mlox_iac.cli import connect_cmds

    monkeypatch.setattr(connect, "probe", lambda *a, **k: [])
    monkeypatch.setattr(connect_cmds, "ca_file", lambda *a, **k: None)
    result, calls = _cli(tmp_path, monkeypatch, [{"event": "result", "result": state}], "status", "--json")
    assert result.exit_code == code, result.output
    row = json.loads(result.stdout)[0]
    assert (row["name"], row["up"], row["detail"]) == ("backup", code == 0, detail)
    assert "mlox_data status" in calls[0][-1]
