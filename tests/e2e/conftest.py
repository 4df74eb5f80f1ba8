"""The end-to-end modules' shared fixture: one deployed full stack (tests/e2e/full_stack.py)."""

from __future__ import annotations

import os

import pytest

from full_stack import FullStack

FULL_PREFIX = "tests/e2e/test_full_"  # modules that share the full stack (one xdist worker runs them all)
_deployed: list[FullStack] = []


def in_full_group(item) -> bool:
    return item is not None and item.nodeid.startswith(FULL_PREFIX)


@pytest.fixture(scope="session")
def full_stack(tmp_path_factory):
    """``mlox-iac sandbox up --preset full --name shared``, deployed once, removed after the last
    test_full_* test (not at the end of the session, so its memory is free for what follows)."""
    if os.geteuid() != 0:
        pytest.fail("the end-to-end tests need root: they boot Debian hosts with systemd-nspawn")
    stack = FullStack(tmp_path_factory.mktemp("full-stack"))
    _deployed.append(stack)
    try:
        stack.deploy()
        yield stack
    finally:
        _tear_down()


def _tear_down() -> None:
    while _deployed:
        _deployed.pop().tear_down()


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    if in_full_group(item) and not in_full_group(nextitem):
        _tear_down()
