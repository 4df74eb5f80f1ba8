"""Image store seeds (mlox_iac.sandbox.images): which seed a host gets, and seeds sharing
the layers they have in common as hard links. On fake overlay2 stores in a temp cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlox_iac.sandbox import images

DRIVER = "overlay2"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MLOX_HOSTS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def fake_store(root: Path, layers: dict[str, str]) -> None:
    """An overlay2 store as a seed holds it: {chain ID: file content}, one layer each."""
    for n, (chain, content) in enumerate(layers.items()):
        cache_id = f"cache{root.name}{n}"
        db = root / "image" / DRIVER / "layerdb" / "sha256" / chain
        db.mkdir(parents=True)
        (db / "cache-id").write_text(cache_id)
        diff = root / "layers" / cache_id / "diff" / "usr" / "lib"
        diff.mkdir(parents=True)
        (diff / "file").write_text(content)
        (root / "layers" / cache_id / "link").write_text(cache_id[:6])
    (root / "driver").write_text(DRIVER)


def complete_seed(cache: Path, name: str, held: dict[str, str], layers: dict[str, str]) -> Path:
    seed = cache / "docker-seeds" / name
    fake_store(seed, layers)
    (seed / "images").write_text("".join(f"{n}={i}\n" for n, i in held.items()))
    (seed / "complete").touch()
    return seed


def layer_file(seed: Path, chain: str) -> Path:
    cache_id = (seed / "image" / DRIVER / "layerdb" / "sha256" / chain / "cache-id").read_text()
    return seed / "layers" / cache_id / "diff" / "usr" / "lib" / "file"


def test_a_host_gets_the_smallest_seed_holding_every_image_it_needs(cache):
    core = complete_seed(cache, "core", {"caddy": "sha256:c1", "postgres": "sha256:p1"}, {"a": "x"})
    full = complete_seed(cache, "full", {"caddy": "sha256:c1", "postgres": "sha256:p1", "mlflow": "sha256:m1"},
                         {"b": "y"})
    assert images._superset_seed({"caddy": "sha256:c1"}) == core
    assert images._superset_seed({"caddy": "sha256:c1", "mlflow": "sha256:m1"}) == full
    # Another build of an image (another ID), or an image no seed holds: none fits.
    assert images._superset_seed({"caddy": "sha256:c2"}) is None
    assert images._superset_seed({"redis": "sha256:r1"}) is None


def test_a_seed_without_its_list_of_images_is_never_taken_for_another_set(cache):
    old = complete_seed(cache, "old", {}, {"a": "x"})
    (old / "images").unlink()
    assert images._superset_seed({"caddy": "sha256:c1"}) is None


def test_a_new_seed_shares_the_layers_an_earlier_seed_holds(cache):
    earlier = complete_seed(cache, "core", {"caddy": "sha256:c1"}, {"base": "debian", "caddy": "caddy"})
    partial = cache / "docker-seeds" / "full.partial"
    fake_store(partial, {"base": "debian", "mlflow": "mlflow"})
    assert images._share_layers(partial, DRIVER) == 1
    shared, own = layer_file(partial, "base"), layer_file(partial, "mlflow")
    assert shared.stat().st_ino == layer_file(earlier, "base").stat().st_ino
    assert shared.read_text() == "debian" and own.read_text() == "mlflow"
    assert own.stat().st_nlink == 1
    # The layer directory keeps its other entries (overlay2's link file); nothing is left over.
    assert (shared.parents[3] / "link").exists()
    assert not list(partial.rglob("diff.shared"))


def test_a_seed_in_progress_is_not_shared_from(cache):
    unfinished = cache / "docker-seeds" / "other.partial"
    fake_store(unfinished, {"base": "debian"})
    partial = cache / "docker-seeds" / "full.partial"
    fake_store(partial, {"base": "debian"})
    assert images._share_layers(partial, DRIVER) == 0
    assert layer_file(partial, "base").stat().st_nlink == 1
