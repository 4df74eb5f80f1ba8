"""The end-to-end tests' stand-in images: the product's (``mlox_iac/sandbox/images.py``)."""

try:  # the tests' cache and log tag first (tests/e2e as a package or as a plain directory on sys.path)
    from . import hosts  # noqa: F401
except ImportError:  # pragma: no cover
    import hosts  # type: ignore[no-redef]  # noqa: F401

from mlox_iac.sandbox.images import *  # noqa: E402,F403
from mlox_iac.sandbox.images import _pypi_binary, main  # noqa: E402,F401

if __name__ == "__main__":  # python tests/e2e/images.py [--force]
    main()
