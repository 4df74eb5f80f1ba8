"""OpenSSH public key lines (``TYPE BASE64 [COMMENT]``), checked the way sshd would read them.

The line's type is only a label: the base64 body carries the key in SSH wire format, which
starts with its own type string. A body that is not base64, names another type, or does not
parse as that kind of key is rejected here rather than by every server at first login.
The structure is parsed by ``cryptography`` (its OpenSSH public key loader).
"""

from __future__ import annotations

import base64
import binascii
import struct

KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
             "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")
_ALLOWED = "allowed: the line of a .pub file, e.g. from ssh-keygen"


def problem(line: str) -> str | None:
    """What is wrong with ``line`` as an OpenSSH public key, or None when it is one."""
    fields = line.split()
    label = fields[0] if fields else ""
    if label not in KEY_TYPES or len(fields) < 2:
        shown = line if len(line) <= 24 else line[:24] + "..."
        return f"{shown!r} is not an OpenSSH public key (allowed: {', '.join(KEY_TYPES[:3])} ...)"
    try:
        body = base64.b64decode(fields[1], validate=True)
    except (binascii.Error, ValueError):
        return f"the {label} key's body is not base64 ({_ALLOWED})"
    inner = _first_string(body)
    if inner is None:
        return f"the {label} key's body is not an SSH key ({_ALLOWED})"
    if inner != label.encode():
        shown = inner.decode("ascii", "replace")[:40]
        return f"the line says {label} but its body holds a {shown!r} key ({_ALLOWED})"
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    try:
        load_ssh_public_key(f"{label} {fields[1]}".encode())
    except (ValueError, TypeError):
        return f"the {label} key's body is not a valid {label} key ({_ALLOWED})"
    return None


def _first_string(blob: bytes) -> bytes | None:
    """The first SSH wire-format string (uint32 length, bytes) of ``blob``, or None."""
    if len(blob) < 4:
        return None
    (length,) = struct.unpack(">I", blob[:4])
    if length == 0 or length > 64 or len(blob) < 4 + length:
        return None
    return blob[4:4 + length]
