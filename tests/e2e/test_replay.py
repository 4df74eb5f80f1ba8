"""Loopback tests of the replay engine (tests/e2e/replay.py) against real sshd processes.

Two throw-away OpenSSH servers on 127.0.0.1 (target-hosts.md, Option C), each with its own
config, host key and authorized client key (``sshd_env`` and ``sshd_default``; the second
is the one whose host key a mispinned connection names). Commands run as the current user
on this machine's filesystem, inside pytest's tmp dirs. The replay serves only
``test_migrate_cloud.py``: these tests cover what mlox-iac's program uses and that the rest
is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

try:
    from tests.e2e import replay as rp
except ImportError:  # tests/e2e is not a package: pytest put its directory on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import replay as rp  # type: ignore[no-redef]

from pulumi import asset as pa

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SFTP_SERVER = next((p for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server")
                    if os.path.exists(p)), "internal-sftp")

SECRET_SIG = {rp.SECRET_SIG_KEY: rp.SECRET_SIG}

pytestmark = pytest.mark.skipif(not os.path.exists(SSHD) or not shutil.which("ssh-keygen"),
                                reason="openssh-server (sshd, ssh-keygen) is not installed")


# --- fixtures ------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sshd:
    def __init__(self, root: Path, accept_env: str):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "host_key")], check=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "client_key")], check=True)
        shutil.copy(root / "client_key.pub", root / "authorized_keys")
        self.private_key = (root / "client_key").read_text()
        self.host_public_key = (root / "host_key.pub").read_text().strip()
        self.port = _free_port()
        self.user = os.environ.get("USER") or __import__("getpass").getuser()
        cfg = root / "sshd_config"
        cfg.write_text("\n".join([
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {root / 'host_key'}",
            f"PidFile {root / 'sshd.pid'}",
            f"AuthorizedKeysFile {root / 'authorized_keys'}",
            "UsePAM no",
            "StrictModes no",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            accept_env,
            f"Subsystem sftp {SFTP_SERVER}",
            "LogLevel ERROR",
            "",
        ]))
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege-separation dir
        self.log = open(root / "sshd.log", "w")
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(cfg)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(root / 'sshd.log').read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(4).startswith(b"SSH-"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("sshd did not answer within 10 s")
            time.sleep(0.05)

    def connection(self, **extra) -> dict:
        conn = {"host": "127.0.0.1", "port": float(self.port), "user": self.user, "privateKey": self.private_key}
        conn.update(extra)
        return {**SECRET_SIG, "value": conn}  # the SDK always marks `connection` secret

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def sshd_env(tmp_path_factory):
    server = Sshd(tmp_path_factory.mktemp("sshd-env"), "AcceptEnv LANG LC_*")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sshd_default(tmp_path_factory):
    server = Sshd(tmp_path_factory.mktemp("sshd-default"), "AcceptEnv LANG LC_*")
    yield server
    server.stop()


class Log(list):
    def __call__(self, line: str) -> None:
        self.append(line)

    @property
    def text(self) -> str:
        return "\n".join(self)


# --- helpers -------------------------------------------------------------------------------
def urn(typ: str, name: str) -> str:
    return f"urn:pulumi:test::mlox::{typ}::{name}"


def secret(value):
    return {**SECRET_SIG, "value": value}


def command(server: Sshd, name: str, create=None, *, deps=(), parent=None, **inputs) -> rp.RecordedResource:
    ins = {"connection": server.connection()}
    if create is not None:
        ins["create"] = create
    ins.update(inputs)
    opts = {k: ins.pop(k) for k in ("delete_before_replace",) if k in ins}
    return rp.RecordedResource(type=rp.COMMAND, name=name, urn=urn(rp.COMMAND, name), parent=parent,
                               inputs=ins, dependencies=list(deps), **opts)


def copy(server: Sshd, name: str, source, remote_path: str, *, deps=(), **inputs) -> rp.RecordedResource:
    ins = {"connection": server.connection(), "source": source, "remotePath": remote_path, **inputs}
    return rp.RecordedResource(type=rp.COPY_TO_REMOTE, name=name, urn=urn(rp.COPY_TO_REMOTE, name), parent=None,
                               inputs=ins, dependencies=list(deps))


def lines(path: Path) -> list:
    return path.read_text().splitlines() if path.exists() else []


# --- tests without SSH ---------------------------------------------------------------------
def test_go_quote_matches_strconv_quote():
    assert rp.go_quote('echo "hi"\n\ttab\\') == r'"echo \"hi\"\n\ttab\\"'
    assert rp.go_quote("a\x01b") == r'"a\x01b"'
    assert rp.go_quote("grüße") == '"grüße"'


def test_order_follows_dependencies_parents_and_component_expansion():
    comp = rp.RecordedResource("mlox:index:Service", "svc", "urn:c:svc", None, {}, ["urn:z:first"])
    nodes = [
        rp.RecordedResource(rp.COMMAND, "child", "urn:a:child", "urn:c:svc", {}, []),
        comp,
        rp.RecordedResource(rp.COMMAND, "first", "urn:z:first", None, {}, []),
        rp.RecordedResource(rp.COMMAND, "after-svc", "urn:b:after", None, {}, ["urn:c:svc"]),
        rp.RecordedResource(rp.COMMAND, "lone", "urn:0:lone", None, {}, []),
    ]
    order = [n.name for n in rp._order(rp._normalise(nodes, rp._Secrets()))]
    assert order.index("first") < order.index("svc") < order.index("child") < order.index("after-svc")
    assert order[0] == "lone"  # ties break by urn
    cyc = [rp.RecordedResource(rp.COMMAND, "a", "urn:a", None, {}, ["urn:b"]),
           rp.RecordedResource(rp.COMMAND, "b", "urn:b", None, {}, ["urn:a"])]
    with pytest.raises(rp.ReplayError, match="cycle"):
        rp._order(rp._normalise(cyc, rp._Secrets()))


# --- command semantics ---------------------------------------------------------------------
def test_dependency_order_and_unchanged_rerun(sshd_env, tmp_path):
    trace = tmp_path / "trace"
    # urn order is a < b < c, dependencies force c -> b -> a
    res = [
        command(sshd_env, "a", f"echo a >> {trace}", deps=[urn(rp.COMMAND, "b")]),
        command(sshd_env, "b", f"echo b >> {trace}", deps=[urn(rp.COMMAND, "c")]),
        command(sshd_env, "c", f"echo c >> {trace}"),
        rp.RecordedResource("random:index/randomPassword:RandomPassword", "pw", "urn:pw", None,
                            {"length": 20.0}, []),
    ]
    state = rp.ReplayState(tmp_path / "state.json")
    log = Log()
    result = rp.replay(res, state, log=log)
    assert lines(trace) == ["c", "b", "a"]
    assert [(s.name, s.action) for s in result.steps] == [("c", "created"), ("b", "created"), ("a", "created")]
    assert all(s.seconds >= 0 for s in result.steps)

    again = rp.replay(res, rp.ReplayState(tmp_path / "state.json"), log=log)
    assert lines(trace) == ["c", "b", "a"]  # nothing ran
    assert set(again.actions().values()) == {"unchanged"}
    assert again.changed() == []


def test_stdin_arrives_and_file_is_private(sshd_env, tmp_path):
    target = tmp_path / "secret.env"
    password = "s3cr3t-Pa55word-do-not-log"
    res = [command(sshd_env, "write-secret", f"umask 077; cat > {target}",
                   stdin=secret(f"PASSWORD={password}\n"))]
    state = rp.ReplayState(tmp_path / "state.json")
    log = Log()
    rp.replay(res, state, log=log)
    assert target.read_text() == f"PASSWORD={password}\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert password not in log.text
    assert password not in (tmp_path / "state.json").read_text()
    assert "write-secret" in log.text


def test_empty_stdin_still_sends_eof(sshd_env, tmp_path):
    out = tmp_path / "out"
    rp.replay([command(sshd_env, "cat-eof", f"cat > {out}; echo done >> {out}")], rp.ReplayState(), log=Log())
    assert lines(out) == ["done"]


@pytest.mark.parametrize("inputs, refused", [
    ({"update": "echo u"}, "update"),
    ({"environment": {"MLOX_X": "1"}}, "environment"),
    ({"addPreviousOutputInEnv": False}, "addPreviousOutputInEnv"),
    ({"logging": "stdout"}, "logging"),
    ({"update": "echo u", "environment": {"MLOX_X": "1"}}, "update, environment"),
])
def test_what_the_program_does_not_use_is_refused_before_anything_runs(sshd_env, tmp_path, inputs, refused):
    out = tmp_path / "never"
    with pytest.raises(rp.ReplayError, match=f"does not support {refused} "):
        rp.replay([command(sshd_env, "first", f"echo ran > {out}"), command(sshd_env, "odd", "true", **inputs)],
                  rp.ReplayState(), log=Log())
    assert not out.exists()


def test_a_proxy_connection_is_refused(sshd_env, tmp_path):
    res = command(sshd_env, "jump", "true")
    res.inputs["connection"]["value"]["proxy"] = {"host": "127.0.0.1", "user": "x"}
    with pytest.raises(rp.ReplayError, match="does not support connection.proxy"):
        rp.replay([res], rp.ReplayState(), log=Log())


def test_failure_carries_output_and_rerun_converges(sshd_env, tmp_path):
    trace = tmp_path / "trace"
    state_file = tmp_path / "state.json"
    ok = command(sshd_env, "ok", f"echo ok >> {trace}")
    bad = command(sshd_env, "flaky", "echo to-stdout; echo to-stderr >&2; exit 3", deps=[ok.urn])
    after = command(sshd_env, "after", f"echo after >> {trace}", deps=[bad.urn])
    with pytest.raises(rp.ReplayError) as err:
        rp.replay([ok, bad, after], rp.ReplayState(state_file), log=Log())
    msg = str(err.value)
    assert "flaky" in msg
    assert 'Process exited with status 3: running "echo to-stdout; echo to-stderr >&2; exit 3":' in msg
    assert "to-stdout" in msg and "to-stderr" in msg
    assert [(s.name, s.action) for s in err.value.result.steps] == [("ok", "created")]
    assert lines(trace) == ["ok"]

    fixed = command(sshd_env, "flaky", f"echo flaky >> {trace}", deps=[ok.urn])
    result = rp.replay([ok, fixed, after], rp.ReplayState(state_file), log=Log())
    assert result.actions() == {"ok": "unchanged", "flaky": "created", "after": "created"}
    assert lines(trace) == ["ok", "flaky", "after"]
    assert rp.replay([ok, fixed, after], rp.ReplayState(state_file), log=Log()).changed() == []


def test_changed_create_without_update_reruns_create(sshd_env, tmp_path):
    trace = tmp_path / "trace"
    state = rp.ReplayState()
    rp.replay([command(sshd_env, "c", f"echo one >> {trace}")], state, log=Log())
    r = rp.replay([command(sshd_env, "c", f"echo two >> {trace}", delete=f"echo deleted >> {trace}")], state, log=Log())
    assert r.action("c") == "updated"
    assert lines(trace) == ["one", "two"]  # an update, not a replace: no delete ran


def test_triggers_change_replaces_create_before_delete(sshd_env, tmp_path):
    trace = tmp_path / "trace"
    state = rp.ReplayState(tmp_path / "state.json")

    def res(version):
        return [
            command(sshd_env, "install", f"echo create-{version} >> {trace}; echo out-{version}",
                    delete=f'echo "delete of {version}" >> {trace}', triggers=[version]),
            command(sshd_env, "later", f"echo later-{version} >> {trace}", deps=[urn(rp.COMMAND, "install")],
                    triggers=[version]),
        ]

    rp.replay(res("v1"), state, log=Log())
    log = Log()
    result = rp.replay(res("v2"), rp.ReplayState(tmp_path / "state.json"), log=log)
    assert result.actions() == {"install": "replaced", "later": "replaced"}
    # default Pulumi replacement: create the replacement(s) first, delete the original at the end
    assert lines(trace) == ["create-v1", "later-v1", "create-v2", "later-v2", "delete of v1"]
    assert rp.ReplayState(tmp_path / "state.json").pending_deletes == []
    assert rp.replay(res("v2"), rp.ReplayState(tmp_path / "state.json"), log=Log()).changed() == []


def test_failed_delete_of_replaced_original_is_retried_first(sshd_env, tmp_path):
    trace = tmp_path / "trace"
    block = tmp_path / "block-delete"
    state_file = tmp_path / "state.json"

    def res(version):
        return [command(sshd_env, "r", f"echo create-{version} >> {trace}", triggers=[version],
                        delete=f"test ! -e {block} && echo delete >> {trace}")]

    rp.replay(res("v1"), rp.ReplayState(state_file), log=Log())
    block.touch()
    with pytest.raises(rp.ReplayError, match="Process exited with status 1"):
        rp.replay(res("v2"), rp.ReplayState(state_file), log=Log())
    assert len(rp.ReplayState(state_file).pending_deletes) == 1
    block.unlink()
    result = rp.replay(res("v2"), rp.ReplayState(state_file), log=Log())
    assert [(s.name, s.action) for s in result.steps] == [("r", "deleted"), ("r", "unchanged")]
    assert lines(trace) == ["create-v1", "create-v2", "delete"]
    assert rp.ReplayState(state_file).pending_deletes == []


def test_triggers_change_with_delete_before_replace(sshd_env, tmp_path):
    trace = tmp_path / "trace"
    state = rp.ReplayState()

    def res(version):
        return [command(sshd_env, "dbr", f"echo create-{version} >> {trace}", delete=f"echo delete >> {trace}",
                        triggers=[secret(version)], delete_before_replace=True)]

    rp.replay(res("v1"), state, log=Log())
    assert rp.replay(res("v2"), state, log=Log()).action("dbr") == "replaced"
    assert lines(trace) == ["create-v1", "delete", "create-v2"]


def test_removed_resource_runs_its_delete(sshd_env, tmp_path):
    trace = tmp_path / "trace"
    state_file = tmp_path / "state.json"
    keep = command(sshd_env, "keep", f"echo keep >> {trace}")
    base = command(sshd_env, "base", f"echo base >> {trace}", delete=f"echo delete-base >> {trace}")
    top = command(sshd_env, "top", f"echo top >> {trace}", delete=f'echo "delete-top $(cat)" >> {trace}',
                  deps=[base.urn], stdin="stdin-kept")
    rp.replay([keep, base, top], rp.ReplayState(state_file), log=Log())
    result = rp.replay([keep], rp.ReplayState(state_file), log=Log())
    # dependents are deleted first; the old stdin goes with the delete
    assert lines(trace) == ["base", "keep", "top", "delete-top stdin-kept", "delete-base"]
    assert result.actions() == {"keep": "unchanged", "top": "deleted", "base": "deleted"}
    assert set(rp.ReplayState(state_file).resources) == {keep.urn}


def test_secret_delete_of_removed_resource_cannot_be_replayed(sshd_env, tmp_path):
    state = rp.ReplayState()
    rp.replay([command(sshd_env, "s", "true", delete=secret("echo secret-delete-cmd"))], state, log=Log())
    assert "secret-delete-cmd" not in json.dumps(state.resources)
    with pytest.raises(rp.ReplayError, match="it was secret"):
        rp.replay([], state, log=Log())


def test_dial_failure_reports_attempts(sshd_env, tmp_path):
    res = [command(sshd_env, "unreachable", "true")]
    res[0].inputs["connection"]["value"].update(port=float(_free_port()), dialErrorLimit=1.0)
    log = Log()
    with pytest.raises(rp.ReplayError) as err:
        rp.replay(res, rp.ReplayState(), log=log)
    assert "after 1 failed attempts: dial tcp 127.0.0.1:" in str(err.value)
    assert "connection refused" in str(err.value)
    assert "Dial 1/1 failed: retrying" in log.text


def test_host_key_is_checked_when_given(sshd_env, sshd_default, tmp_path):
    good = command(sshd_env, "pinned", "true")
    good.inputs["connection"]["value"]["hostKey"] = sshd_env.host_public_key
    rp.replay([good], rp.ReplayState(), log=Log())
    bad = command(sshd_env, "mispinned", "true")
    bad.inputs["connection"]["value"].update(hostKey=sshd_default.host_public_key, dialErrorLimit=0.0)
    with pytest.raises(rp.ReplayError, match="after 0 failed attempts"):
        rp.replay([bad], rp.ReplayState(), log=Log())


# --- secrets -------------------------------------------------------------------------------
def test_secrets_never_logged_or_stored(sshd_env, tmp_path, capsys):
    token = "tok-9f8e7d6c5b4a-very-secret"
    state_file = tmp_path / "state.json"
    log = Log()
    ok = command(sshd_env, "uses-secret", f"cat > {tmp_path / 'tok'}", stdin=secret(token), triggers=[secret(token)])
    rp.replay([ok], rp.ReplayState(state_file), log=log)
    # a failing command that echoes its secret stdin: the error must not carry the secret
    leaky = command(sshd_env, "leaky", "cat; exit 1", stdin=secret(token))
    with pytest.raises(rp.ReplayError) as err:
        rp.replay([ok, leaky], rp.ReplayState(state_file), log=log)
    captured = capsys.readouterr()
    for text in (log.text, str(err.value), state_file.read_text(), captured.out, captured.err):
        assert token not in text
        assert sshd_env.private_key.splitlines()[1] not in text
    assert "[secret]" in str(err.value)
    assert "Process exited with status 1" in str(err.value)
    assert (tmp_path / "tok").read_text() == token


# --- CopyToRemote --------------------------------------------------------------------------
def test_copy_file_semantics(sshd_env, tmp_path):
    src = tmp_path / "src" / "app.conf"
    src.parent.mkdir()
    src.write_text("v1\n")
    dest_root = tmp_path / "remote"
    existing_dir = dest_root / "etc"
    existing_dir.mkdir(parents=True)
    state = rp.ReplayState()
    res = [
        copy(sshd_env, "to-new-path", pa.FileAsset(str(src)), str(dest_root / "new" / "deep" / "renamed.conf")),
        copy(sshd_env, "into-dir", pa.FileAsset(str(src)), str(existing_dir)),
        # the wire form of a FileAsset, as some mock recorders keep it
        copy(sshd_env, "wire-form", {rp.SECRET_SIG_KEY: rp.ASSET_SIG, "path": str(src)}, str(dest_root / "w.conf")),
        copy(sshd_env, "text", pa.StringAsset("text-content"), str(dest_root / "t" / "text.txt")),
    ]
    rp.replay(res, state, log=Log())
    assert (dest_root / "new" / "deep" / "renamed.conf").read_text() == "v1\n"
    assert (existing_dir / "app.conf").read_text() == "v1\n"
    assert (dest_root / "w.conf").read_text() == "v1\n"
    assert (dest_root / "t" / "text.txt").read_text() == "text-content"

    assert rp.replay(res, state, log=Log()).changed() == []
    src.write_text("v2\n")  # content change -> asset hash changes -> update copies again
    result = rp.replay(res, state, log=Log())
    assert result.actions() == {"to-new-path": "updated", "into-dir": "updated", "wire-form": "updated",
                                "text": "unchanged"}
    assert (existing_dir / "app.conf").read_text() == "v2\n"
    assert (dest_root / "new" / "deep" / "renamed.conf").read_text() == "v2\n"

    # removing a CopyToRemote deletes nothing on the host (it has no Delete)
    assert rp.replay([], state, log=Log()).actions() == {n: "deleted" for n in result.actions()}
    assert (existing_dir / "app.conf").exists()


def test_copy_directory_semantics(sshd_env, tmp_path):
    src = tmp_path / "bundle"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.txt").write_text("b")
    remote = tmp_path / "remote"
    (remote / "existing").mkdir(parents=True)
    res = [
        # a directory without trailing slash lands *inside* remotePath, as remotePath/bundle
        copy(sshd_env, "dir-into-existing", pa.FileArchive(str(src)), str(remote / "existing")),
        copy(sshd_env, "dir-into-missing", pa.FileArchive(str(src)), str(remote / "missing" / "x")),
        # with a trailing slash, the contents land directly in remotePath
        copy(sshd_env, "dir-contents", pa.FileArchive(str(src) + "/"), str(remote / "flat")),
    ]
    state = rp.ReplayState()
    rp.replay(res, state, log=Log())
    assert (remote / "existing" / "bundle" / "a.txt").read_text() == "a"
    assert (remote / "existing" / "bundle" / "sub" / "b.txt").read_text() == "b"
    assert (remote / "missing" / "x" / "bundle" / "sub" / "b.txt").read_text() == "b"
    assert (remote / "flat" / "a.txt").read_text() == "a"
    assert (remote / "flat" / "sub" / "b.txt").read_text() == "b"

    (src / "sub" / "b.txt").write_text("b2")
    assert set(rp.replay(res, state, log=Log()).actions().values()) == {"updated"}
    assert (remote / "existing" / "bundle" / "sub" / "b.txt").read_text() == "b2"

    (remote / "file").write_text("x")
    with pytest.raises(rp.ReplayError, match="exists but is not a directory"):
        rp.replay([copy(sshd_env, "dir-onto-file", pa.FileArchive(str(src)), str(remote / "file"))],
                  rp.ReplayState(), log=Log())


def test_copy_rejects_asset_archive_like_v1_2_1(sshd_env, tmp_path):
    res = [copy(sshd_env, "assets", pa.AssetArchive({"a.txt": pa.StringAsset("a")}), str(tmp_path / "x"))]
    with pytest.raises(rp.ReplayError, match="archive must be a path to a file or directory"):
        rp.replay(res, rp.ReplayState(), log=Log())


def test_copy_then_command_in_dependency_order(sshd_env, tmp_path):
    src = tmp_path / "script.sh"
    src.write_text("echo from-script\n")
    dest = tmp_path / "remote" / "script.sh"
    out = tmp_path / "out"
    cp = copy(sshd_env, "ship-script", pa.FileAsset(str(src)), str(dest))
    run = command(sshd_env, "run-script", f"sh {dest} > {out}", deps=[cp.urn], triggers=[pa.FileAsset(str(src))])
    state = rp.ReplayState()
    rp.replay([run, cp], state, log=Log())
    assert lines(out) == ["from-script"]
    src.write_text("echo changed\n")
    result = rp.replay([run, cp], state, log=Log())
    assert result.actions() == {"ship-script": "updated", "run-script": "replaced"}
    assert lines(out) == ["changed"]


# --- a real Pulumi program under mocks, recorded, then replayed ----------------------------
def _record(program) -> list:
    """A minimal stand-in for mlox_iac.plan's recorder: what the mock monitor receives."""
    import asyncio

    import pulumi
    from pulumi.runtime import rpc, settings
    from pulumi.runtime.mocks import MockMonitor, test as run_test

    recorded: list = []

    class Mocks(pulumi.runtime.Mocks):
        def new_resource(self, args):
            outputs = dict(args.inputs)
            if args.typ == "random:index/randomPassword:RandomPassword":
                outputs["result"] = pulumi.Output.secret("mocked-Password-0123456789")
            return f"{args.name}-id", outputs

        def call(self, args):
            return {}

    class Recorder(MockMonitor):
        def RegisterResource(self, request):
            response = super().RegisterResource(request)
            if request.type != "pulumi:pulumi:Stack":
                recorded.append(rp.RecordedResource(
                    type=request.type, name=request.name, urn=response.urn, parent=request.parent or None,
                    inputs=dict(rpc.deserialize_properties(request.object, keep_unknowns=True)),
                    dependencies=sorted(set(request.dependencies)),
                    delete_before_replace=bool(request.deleteBeforeReplace)))
            return response

    asyncio.set_event_loop(asyncio.new_event_loop())
    settings.ROOT.set(None)
    mocks = Mocks()
    pulumi.runtime.set_mocks(mocks, project="mlox", stack="test", preview=False, monitor=Recorder(mocks))
    run_test(program)()
    return recorded


def test_replays_what_a_mocked_pulumi_program_registers(sshd_env, tmp_path):
    import warnings

    import pulumi
    import pulumi_random as random
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="This resource is deprecated")
        from pulumi_command import remote

    src = tmp_path / "app.conf"
    src.write_text("conf\n")
    dest = tmp_path / "remote" / "app.conf"
    target = tmp_path / "remote" / "password"
    trace = tmp_path / "trace"

    class Service(pulumi.ComponentResource):
        def __init__(self, name, conn, password, opts=None):
            super().__init__("mlox:test:Service", name, None, opts)
            child = pulumi.ResourceOptions(parent=self)
            ship = remote.CopyToRemote("ship", connection=conn, source=pulumi.FileAsset(str(src)),
                                       remote_path=str(dest), opts=child)
            remote.Command("write-password", connection=conn, create=f"umask 077; cat > {target}",
                           stdin=password, opts=pulumi.ResourceOptions(parent=self, depends_on=[ship]))
            self.register_outputs({})

    def program():
        conn = remote.ConnectionArgsDict(host="127.0.0.1", port=sshd_env.port, user=sshd_env.user,
                                         private_key=sshd_env.private_key)
        pw = random.RandomPassword("pw", length=24, special=False)
        first = remote.Command("first", connection=conn, create=f"echo first >> {trace}")
        svc = Service("svc", conn, pw.result, opts=pulumi.ResourceOptions(depends_on=[first]))
        remote.Command("after", connection=conn, create=f"ls {target} >/dev/null && echo after >> {trace}",
                       opts=pulumi.ResourceOptions(depends_on=[svc]))

    recorded = _record(program)
    by_name = {r.name: r for r in recorded}
    assert rp.SECRET_SIG_KEY in by_name["write-password"].inputs["stdin"]  # stdin arrived as a secret
    log = Log()
    state = rp.ReplayState(tmp_path / "state.json")
    result = rp.replay(recorded, state, log=log)
    assert [s.name for s in result.steps] == ["first", "ship", "write-password", "after"]
    assert target.read_text() == "mocked-Password-0123456789"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert dest.read_text() == "conf\n"
    assert lines(trace) == ["first", "after"]
    assert "mocked-Password-0123456789" not in log.text + (tmp_path / "state.json").read_text()
    assert rp.replay(_record(program), rp.ReplayState(tmp_path / "state.json"), log=log).changed() == []
