"""The two replacements of BentoML/uvicorn internals the service needs, installed by one call (:func:`install`).

BentoML 1.4 offers no setting for either:

* :mod:`mcdrop.service.bentoml_fixes`: BentoML's ``TimeoutMiddleware.__call__`` (every request's timer outlived it;
  a request that ended without an answer waited for the whole backstop).  BentoML always installs that middleware
  (``traffic.timeout`` must be a positive number).
* :mod:`mcdrop.service.protocol`: ``uvicorn.Config.__init__`` (a header deadline and a bounded graceful shutdown:
  BentoML's worker builds uvicorn's ``Config`` itself, with no protocol or shutdown option).

Both replace private code, so :func:`install` refuses a BentoML outside :data:`TESTED_BENTOML`, the range the
tests (``tests/service/test_bentoml_fixes.py``, ``test_protocol.py``, ``test_service.py``) ran on; pyproject's
``serve`` extra pins the same range.
"""

from __future__ import annotations

from mcdrop.errors import MCDropError

__all__ = ["TESTED_BENTOML", "UntestedBentoML", "check_bentoml_version", "install"]

TESTED_BENTOML = ("1.4.39", "1.4.40")
"""The BentoML versions the patches were tested on: at least the first, below the second."""


class UntestedBentoML(MCDropError, RuntimeError):
    """The installed BentoML is outside :data:`TESTED_BENTOML`."""


def check_bentoml_version(version: str | None = None) -> None:
    """Raise :class:`UntestedBentoML` unless ``version`` (default: the installed BentoML's) is in the tested range."""
    from packaging.version import Version

    if version is None:
        import bentoml

        version = bentoml.__version__
    low, high = TESTED_BENTOML
    if not Version(low) <= Version(version) < Version(high):
        raise UntestedBentoML(f"mcdrop's service patches BentoML internals tested on bentoml>={low},<{high}, but "
                              f"bentoml {version} is installed; install a tested version (pip install "
                              f"'bentoml>={low},<{high}') or re-test mcdrop/service/patches.py on this one")


def install() -> None:
    """Check the BentoML version, then install both replacements (idempotent)."""
    from mcdrop.service import bentoml_fixes, protocol

    check_bentoml_version()
    bentoml_fixes.install()
    protocol.install()
