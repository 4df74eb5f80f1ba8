"""``mlox_data move-*`` pieces that need no server: the maintenance config of the proxy, the
send between two local directories."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import tool
from mlox_iac.data import move


@pytest.fixture(autouse=True)
def _locks(tmp_path, monkeypatch):
    monkeypatch.setattr(move, "COPY_LOCK_FILE", str(tmp_path / "move.lock"))
    monkeypatch.setattr(move.backup, "LOCK_FILE", str(tmp_path / "backup.lock"))


ADAPTED = {
    "apps": {"http": {"servers": {"srv0": {
        "listen": [":443"],
        "routes": [
            {"match": [{"host": ["203.0.113.10"]}],
             "handle": [{"handler": "subroute", "routes": [{"handle": [{"handler": "reverse_proxy"}]}]}],
             "terminal": True},
        ],
    }}}, "tls": {"automation": {"policies": [{"subjects": ["203.0.113.10"], "issuers": [{"module": "internal"}]}]}}},
}


def test_maintenance_answers_503_with_retry_after_on_the_same_sites_and_tls():
    config = move.maintenance_config(json.loads(json.dumps(ADAPTED)))
    route = config["apps"]["http"]["servers"]["srv0"]["routes"][0]
    assert route["match"] == [{"host": ["203.0.113.10"]}]  # same sites: automatic HTTPS keeps its certificates
    (handler,) = route["handle"]
    assert handler["handler"] == "static_response" and handler["status_code"] == 503
    assert handler["headers"]["Retry-After"] == [str(move.RETRY_AFTER_S)]
    assert config["apps"]["tls"] == ADAPTED["apps"]["tls"]


def test_maintenance_config_is_valid_for_caddy(tmp_path):
    caddy = tool("caddy")
    path = tmp_path / "maintenance.json"
    path.write_text(json.dumps(move.maintenance_config(json.loads(json.dumps(ADAPTED)))))
    done = subprocess.run([caddy, "validate", "--config", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-500:]


class LocalPair:
    """Host A's ``Host`` whose ssh to B runs B's side locally (B's data dir is another directory)."""

    def __init__(self, tmp_path):
        import argparse
        import io
        import shlex
        import sys

        from mlox_iac.data.host import Host

        self.a = Host({"compose": ["false"], "data_dir": str(tmp_path / "a"), "services": {}})
        self.b = Host({"compose": ["false"], "data_dir": str(tmp_path / "b"), "services": {}})
        real_run = self.a.run
        pair = self

        def run(argv, **kw):
            if argv[0] != "ssh":
                return real_run(argv, **kw)
            remote = shlex.split(argv[-1])
            script = remote[-1]
            if "python3 -m mlox_data" in script:  # a verb on B, in-process
                verb = script.rsplit(" ", 1)[-1]
                old_stdin = sys.stdin
                sys.stdin = io.StringIO(kw.get("input") or "")
                try:
                    result = move.run_verb(pair.b, verb, argparse.Namespace())
                finally:
                    sys.stdin = old_stdin
                pair.calls.append(verb)
                return subprocess.CompletedProcess(argv, 0, json.dumps({"event": "result", "result": result}) + "\n", "")
            # tar on B: the same command with B's paths
            local = script.replace(str(move._incoming(pair.a)), str(move._incoming(pair.b)))
            pair.calls.append("tar")
            return real_run(["sh", "-c", local], **kw)

        self.a.run = run
        self.calls: list[str] = []


def test_send_moves_only_what_b_lacks_prunes_the_rest_and_ends_with_the_manifest(tmp_path):
    pair = LocalPair(tmp_path)
    staging = move._root(pair.a) / "staging"
    (staging / "objects" / "data").mkdir(parents=True)
    for i in range(3000):  # a file list longer than a pipe's buffer
        (staging / "objects" / "data" / f"object-with-a-long-name-{i:05d}.txt").write_text(f"object {i}\n")
    volume = pair.a.data_dir / "volumes" / "caddy-data"
    volume.mkdir(parents=True)
    (volume / "ca.crt").write_text("certificate\n")
    manifest = {"services": {"caddy": {"databases": {}, "buckets": {}, "volumes": {
        "caddy-data": move.volumes.tree_manifest(volume)}, "writers": ["caddy"]}}}
    (staging / "manifest.json").write_text(json.dumps(manifest))

    first = move.send(pair.a, "b.example", 22, "root")
    assert first["files"] == 3001 and first["pruned"] == 0
    incoming = move._incoming(pair.b)
    assert (incoming / "staging" / "objects" / "data" / "object-with-a-long-name-02999.txt").read_text() == "object 2999\n"
    assert (incoming / "volumes" / "caddy-data" / "ca.crt").read_text() == "certificate\n"
    assert pair.calls[-1] == "move-manifest" and (incoming / "staging" / "manifest.json").is_file()

    # A second send after one change and one deletion: one file goes, one is pruned on B.
    (staging / "objects" / "data" / "object-with-a-long-name-00001.txt").write_text("changed\n")
    (staging / "objects" / "data" / "object-with-a-long-name-00002.txt").unlink()
    second = move.send(pair.a, "b.example", 22, "root")
    assert (second["files"], second["pruned"]) == (1, 1)
    assert (incoming / "staging" / "objects" / "data" / "object-with-a-long-name-00001.txt").read_text() == "changed\n"
    assert not (incoming / "staging" / "objects" / "data" / "object-with-a-long-name-00002.txt").exists()


def test_send_fails_at_once_when_the_receiver_dies_midway(tmp_path):
    """The receiving tar killed on B: send raises (naming the new server) instead of leaving
    A's tar blocked on a pipe nobody reads; the rerun of the copy then resumes."""
    import threading

    pair = LocalPair(tmp_path)
    staging = move._root(pair.a) / "staging"
    (staging / "objects" / "data").mkdir(parents=True)
    (staging / "objects" / "data" / "big.bin").write_bytes(b"x" * (8 << 20))  # far more than a pipe holds
    (staging / "manifest.json").write_text(json.dumps({"services": {}}))
    dying = pair.a.run

    def run(argv, **kw):
        if argv[0] == "ssh" and "tar -C" in argv[-1]:  # B's tar reads 1 MiB, then is killed
            return subprocess.run(["sh", "-c", "head -c 1048576 >/dev/null; kill -KILL $$"], stdin=kw["stdin"],
                                  capture_output=True)
        return dying(argv, **kw)

    pair.a.run = run
    outcome: dict = {}

    def send():
        try:
            move.send(pair.a, "b.example", 22, "root")
        except move.DataError as exc:
            outcome["error"] = str(exc)

    worker = threading.Thread(target=send, daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "send hangs once the receiver died"
    assert outcome["error"].startswith("the new server did not take the staging files"), outcome
    assert not (move._incoming(pair.b) / "staging" / "manifest.json").exists()  # no manifest: nothing to apply


def test_a_second_send_waits_for_the_one_still_running_then_sends_only_what_is_missing(tmp_path, monkeypatch):
    """A migrate interrupted on the user's side leaves its send running on the old server
    (the server side ignores the dropped connection); the rerun's send waits for it, says
    so once, and then finds everything arrived instead of writing the same files at once."""
    import threading
    import time

    pair = LocalPair(tmp_path)
    staging = move._root(pair.a) / "staging"
    (staging / "objects" / "data").mkdir(parents=True)
    for i in range(20):
        (staging / "objects" / "data" / f"part-{i}.bin").write_bytes(bytes([i]) * 100_000)
    (staging / "manifest.json").write_text(json.dumps({"services": {}}))
    events: list[dict] = []
    pair.a._emit = events.append
    receiving, running, most = threading.Event(), [0], [0]
    relay = pair.a.run

    def run(argv, **kw):
        if argv[0] != "ssh" or "tar -C" not in argv[-1]:
            return relay(argv, **kw)
        running[0] += 1
        most[0] = max(most[0], running[0])
        receiving.set()
        time.sleep(1.5)  # a slow link: the rerun starts while this one is still receiving
        try:
            return relay(argv, **kw)
        finally:
            running[0] -= 1

    pair.a.run = run
    first_result: dict = {}
    first = threading.Thread(target=lambda: first_result.update(move.send(pair.a, "b.example", 22, "root")))
    first.start()
    assert receiving.wait(30)
    second = move.send(pair.a, "b.example", 22, "root")
    first.join(30)
    assert first_result["files"] == 20 and second["files"] == 0
    assert most[0] == 1, "two sends wrote into the new server at once"
    assert [e["message"] for e in events if e["phase"] == "waiting"] == \
        ["waiting for the migration copy running on this server"]
    incoming = move._incoming(pair.b) / "staging" / "objects" / "data"
    assert (incoming / "part-19.bin").read_bytes() == bytes([19]) * 100_000


def test_the_new_server_lists_what_arrived_only_once_an_apply_still_running_ended(tmp_path):
    """An apply whose caller was interrupted goes on reading the arrived files; the resumed
    migrate's send starts by asking what arrived, and that answer waits for the apply, so
    no file is written or pruned under it."""
    import threading
    import time

    pair = LocalPair(tmp_path)
    arrived = move._incoming(pair.b) / "staging" / "dump.sql"
    arrived.parent.mkdir(parents=True)
    arrived.write_text("dump\n")
    events: list[dict] = []
    pair.b._emit = events.append
    held, order = threading.Event(), []

    def apply():
        with move.backup.Lock("migration restore"):
            held.set()
            time.sleep(1.5)
            order.append("apply done")

    running = threading.Thread(target=apply)
    running.start()
    assert held.wait(30)
    listed = move.have(pair.b)
    order.append("listed")
    running.join(30)
    assert order == ["apply done", "listed"]
    assert set(listed) == {"staging/dump.sql"}
    assert [e["message"] for e in events if e["phase"] == "waiting"] == \
        ["waiting for the migration restore running on this server"]


def test_verify_takes_every_old_file_unchanged_and_tolerates_files_the_new_server_wrote(tmp_path):
    from mlox_iac.data.host import Host

    b = Host({"compose": ["false"], "data_dir": str(tmp_path / "b"), "services": {}})
    live = move.volumes.live_dir(b, "caddy-data")
    (live / "caddy" / "pki").mkdir(parents=True)
    (live / "caddy" / "pki" / "root.crt").write_text("the old server's CA\n")
    (live / "caddy" / "instance.uuid").write_text("old\n")
    manifest = {"services": {"caddy": {"databases": {}, "buckets": {}, "volumes": {
        "caddy-data": move.volumes.tree_manifest(live)}, "writers": ["caddy"]}}}
    move.take_manifest(b, json.dumps(manifest))
    # Caddy on the new server issued a certificate for its own address after the restore.
    (live / "caddy" / "certificates" / "local" / "10.0.0.2").mkdir(parents=True)
    (live / "caddy" / "certificates" / "local" / "10.0.0.2" / "10.0.0.2.crt").write_text("new server's own\n")
    assert move.verify(b) == {"ok": True, "problems": [], "new_server_files": 1}

    (live / "caddy" / "pki" / "root.crt").write_text("another CA\n")
    (live / "caddy" / "instance.uuid").unlink()
    problems = move.verify(b)["problems"]
    assert problems[0] == "volume caddy-data: file caddy/instance.uuid: missing"
    assert problems[1].startswith("volume caddy-data: file caddy/pki/root.crt: differs") and len(problems) == 2
