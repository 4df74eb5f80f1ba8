"""Where a project keeps things (light: imported by the CLI before anything heavy)."""

from __future__ import annotations

from pathlib import Path


def stack_file(project_dir: Path, stack: str) -> Path:
    """``<project>/stacks/Pulumi.<stack>.yaml`` (the project's ``stackConfigDir``)."""
    return project_dir / "stacks" / f"Pulumi.{stack}.yaml"
