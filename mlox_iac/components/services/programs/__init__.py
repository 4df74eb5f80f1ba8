"""Small programs of ours that run inside service containers (shipped in the bundle as they are).

Each is one standard-library-only Python file (the model server also uses MLflow and
boto3 from its image), or a template (the monitoring console), read by its service module
and mounted read-only.
"""

from pathlib import Path


def source(name: str) -> str:
    """The text of the program ``name`` (a file in this package)."""
    return (Path(__file__).parent / name).read_text()


def names() -> list[str]:
    """Every program and template here (the bundle ships them unchanged)."""
    return sorted(p.name for p in Path(__file__).parent.iterdir() if p.suffix in (".py", ".html") and p.name != "__init__.py")
