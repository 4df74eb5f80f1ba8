"""End-to-end suite: list every phase's wall time at the end of the run."""

from __future__ import annotations


def pytest_terminal_summary(terminalreporter):
    try:
        from . import hosts
    except ImportError:  # tests/e2e as a plain directory on sys.path
        import hosts  # type: ignore[no-redef]

    if not hosts.TIMINGS:
        return
    terminalreporter.section("e2e phase times")
    for name, seconds in hosts.TIMINGS:
        terminalreporter.write_line(f"{seconds:8.1f}s  {name}")
    terminalreporter.write_line(f"{sum(s for _, s in hosts.TIMINGS):8.1f}s  sum (phases overlap: images build while hosts boot)")
