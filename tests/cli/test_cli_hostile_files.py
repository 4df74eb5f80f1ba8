"""Hostile stack files through ``mlox-iac validate``: whatever the file holds, the answer is
exit 0, or exit 2 with one line per problem, each naming the file; never a traceback, never
exit 1, never a hang (an alarm fails the test after 30 s) or a memory blow-up (for the alias
cases, the peak of Python allocations stays under 64 MiB: an expanded bomb needs far more).

Runs through the CLI's real entry point in-process (``cli_helpers.invoke``): a subprocess per
file would add ~3 s of imports each.
"""

from __future__ import annotations

import base64
import signal
import tracemalloc

import pytest
from cli_helpers import invoke

from conftest import KEY

GOOD = f"""config:
  mlox:provider: hetzner
  mlox:hetzner: {{location: fsn1, server_type: cx23}}
  mlox:ssh:
    public_keys: ["{KEY}"]
    admin_cidrs: [203.0.113.7/32]
"""


def _bomb(levels: int, width: int = 10) -> str:
    lines = ["config:", "  mlox:l0: &l0 [" + ",".join(["lol"] * width) + "]"]
    lines += [f"  mlox:l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def _nested_mapping(depth: int) -> str:
    return "config:\n  mlox:services: " + "{a: " * depth + "1" + "}" * depth + "\n"


HOSTILE = {
    "truncated_mid_mapping": GOOD[: len(GOOD) // 2],
    "truncated_mid_string": GOOD.replace("]\n    admin", "\n    admin")[:-20],
    "unclosed_quote": 'config:\n  mlox:provider: "hetzner\n',
    "tabs": GOOD.replace("  ", "\t"),
    "mixed_indentation": GOOD.replace("    public_keys", "   public_keys"),
    "billion_laughs": _bomb(10),
    "billion_laughs_in_mapping_values": "config:\n  a: &a {x: 1, y: 1}\n" + "".join(
        f"  b{i}: &b{i} {{x: *{'a' if i == 0 else f'b{i - 1}'}, y: *{'a' if i == 0 else f'b{i - 1}'}}}\n" for i in range(40)),
    "recursive_alias": "config: &c\n  mlox:services: *c\n",
    "undefined_alias": "config:\n  mlox:provider: *nope\n",
    "huge_integer": GOOD + "  mlox:volume_size_gb: " + "1" * 100_000 + "\n",
    "huge_float": GOOD + "  mlox:volume_size_gb: 1e999999\n",
    "negative_volume": GOOD + "  mlox:volume_size_gb: -20\n",
    "float_volume": GOOD + "  mlox:volume_size_gb: 20.5\n",
    "boolean_volume": GOOD + "  mlox:volume_size_gb: yes\n",
    "huge_string": GOOD + "  mlox:domain: " + "a" * 500_000 + "\n",
    "deep_mapping": _nested_mapping(5000),
    "deep_list": "config:\n  mlox:services: " + "[" * 20000 + "]" * 20000 + "\n",
    "null_everywhere": "config:\n  mlox:provider: ~\n  mlox:hetzner: ~\n  mlox:ssh: ~\n  mlox:services: ~\n",
    "null_config": "config: ~\n",
    "null_document": "~\n",
    "null_keys": "config:\n  ~: hetzner\n  mlox:ssh: {~: 1}\n",
    "null_list_items": GOOD.replace(f'["{KEY}"]', "[~, ~]"),
    "wrong_type_provider": GOOD.replace("provider: hetzner", "provider: [hetzner]"),
    "wrong_type_provider_block": GOOD.replace("{location: fsn1, server_type: cx23}", "[fsn1, cx23]"),
    "wrong_type_ssh": GOOD.replace("  mlox:ssh:\n", "  mlox:ssh: 5\n  mlox:unused:\n"),
    "wrong_type_keys": GOOD.replace(f'["{KEY}"]', f'"{KEY}"'),
    "wrong_type_cidrs": GOOD.replace("[203.0.113.7/32]", "{a: 1}"),
    "wrong_type_services": GOOD + "  mlox:services: [mlflow]\n",
    "wrong_type_service": GOOD + "  mlox:services: {mlflow: true}\n",
    "wrong_type_buckets": GOOD + "  mlox:services: {seaweedfs: {buckets: data}}\n",
    "wrong_type_docker": GOOD + "  mlox:docker: docker\n",
    "date_value": GOOD + "  mlox:domain: 2026-02-30\n",
    "binary_tag": GOOD + "  mlox:domain: !!binary aGVsbG8=\n",
    "set_tag": GOOD + "  mlox:services: !!set {mlflow, postgres}\n",
    "python_tag": "config: !!python/name:os.system\n",
    "complex_key": "config:\n  ? [a, b]\n  : c\n",
    "confusable_key": GOOD.replace("mlox:provider", "mlox:prоvider"),  # Cyrillic о
    "confusable_namespace": GOOD.replace("mlox:hetzner", "mⅼox:hetzner"),  # U+217C small roman numeral fifty
    "zero_width_key": GOOD.replace("mlox:provider", "mlox:pro\u200bvider"),
    "bidi_override_value": GOOD + "  mlox:domain: \u202eexample.com\n",
    "multiple_documents": GOOD + "---\n" + GOOD,
    "duplicate_keys": GOOD + "  mlox:provider: aws\n",
    "ssh_key_body_not_a_key": GOOD.replace(KEY.split()[1], "bm90IGEga2V5IGF0IGFsbA=="),
    "bom": "\ufeff" + GOOD,
    "crlf": GOOD.replace("\n", "\r\n"),
    "nul_byte": GOOD + "\x00",
    "control_characters": GOOD + "  mlox:domain: a\x07b\n",
}
BINARY = {
    "latin1": GOOD.replace("you", "y\xf6u").encode("latin-1") + "  mlox:domain: caf\xe9.example.com\n".encode("latin-1"),
    "utf16": GOOD.encode("utf-16"),
    "gzip": b"\x1f\x8b\x08\x00" + bytes(range(256)),
    "random_bytes": bytes((i * 7919) % 256 for i in range(4096)),
}


def _validate(path, measure_memory: bool):
    def hang(signum, frame):
        raise AssertionError("validate did not finish within 30 s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(30)
    if measure_memory:  # tracemalloc slows everything down: only where memory is the risk
        tracemalloc.start()
    try:
        result = invoke("validate", "--file", str(path))
        peak = tracemalloc.get_traced_memory()[1] if measure_memory else 0
    finally:
        tracemalloc.stop()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert peak < 64 << 20, f"validate allocated {peak >> 20} MiB"
    return result


@pytest.mark.parametrize("case", sorted(HOSTILE) + sorted(BINARY))
def test_hostile_file_is_refused_in_one_line_per_problem(tmp_path, case):
    path = tmp_path / "Pulumi.hostile.yaml"
    if case in BINARY:
        path.write_bytes(BINARY[case])
    else:
        path.write_text(HOSTILE[case], encoding="utf-8")
    result = _validate(path, measure_memory="laughs" in case or "alias" in case)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-2000:]
    assert result.exit_code in (0, 2), result.stderr[-2000:]
    if result.exit_code == 2:
        lines = result.stderr.splitlines()
        assert lines and all(line.startswith(f"{path}: ") for line in lines), result.stderr[:2000]
        assert all(line.isprintable() for line in lines), "invisible characters must be escaped"
        too_long = [line for line in lines if len(line) > 400]
        assert not too_long, f"an error line should be one readable line: {too_long[0][:600]}"


def test_the_three_reported_classes_exit_2_naming_file_and_key(tmp_path):
    """Issue 8's corpus: a file that is not UTF-8, duplicate keys, an SSH key whose body is not a key."""
    latin1 = GOOD.encode() + b"  mlox:domain: caf\xe9.example.com\n"
    cases = {
        "not_utf8": (latin1, f"not UTF-8 text (byte 0xe9 at offset {latin1.index(0xe9)}; allowed: a stack file in UTF-8)"),
        "duplicate": ((GOOD + "  mlox:provider: aws\n").encode(),
                      "mlox:provider: duplicate key on lines 2 and 7 (allowed: each key once, as Pulumi requires)"),
        "key_body": (GOOD.replace(KEY.split()[1], base64.b64encode(base64.b64decode(KEY.split()[1]) + b"x").decode()).encode(),
                     "mlox:ssh.public_keys[0]: the ssh-ed25519 key's body is not a valid ssh-ed25519 key "
                     "(allowed: the line of a .pub file, e.g. from ssh-keygen)"),
    }
    for name, (content, expected) in cases.items():
        path = tmp_path / f"Pulumi.{name}.yaml"
        path.write_bytes(content)
        result = invoke("validate", "--file", str(path))
        assert (result.exit_code, result.stderr, result.stdout) == (2, f"{path}: {expected}\n", ""), name
