"""Reading the files a user hands the CLI (stack files, outputs files, certificates, keys)."""

from __future__ import annotations

from pathlib import Path

from mlox_iac.errors import ConfigError


def read_text(path: Path, source: str, what: str, max_bytes: int = 1 << 20) -> str:
    """The UTF-8 text of a file the CLI reads, or one error line saying why it cannot be had.

    Pipes are fine (``--outputs-file <(pulumi stack output --json)``); at most ``max_bytes``
    are read, so ``/dev/zero`` is refused rather than eating memory.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError([f"{source}: is a directory (allowed: a {what})"])
    if not path.exists():
        raise ConfigError([f"{source}: file not found"])
    try:
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise ConfigError([f"{source}: cannot be read: {exc.strerror or exc}"]) from None
    if len(data) > max_bytes:
        raise ConfigError([f"{source}: larger than {max_bytes // 1024} KiB (allowed: a {what} of a few KiB)"])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([
            f"{source}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}; allowed: a {what} in UTF-8)"
        ]) from None
