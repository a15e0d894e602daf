"""The patches of BentoML/uvicorn internals are installed only on a tested BentoML."""

from __future__ import annotations

import bentoml
import pytest

from mcdrop.service import patches


def test_the_installed_bentoml_is_a_tested_one():
    patches.check_bentoml_version()  # the service imports (and installs its patches) only when this passes


@pytest.mark.parametrize("version", ["1.4.40", "1.5.0", "1.4.38", "2.0.0rc1"])
def test_an_untested_bentoml_is_refused_with_the_fix(version):
    with pytest.raises(patches.UntestedBentoML, match=rf"bentoml {version} is installed.*pip install 'bentoml>="):
        patches.check_bentoml_version(version)


def test_install_checks_the_version_first(monkeypatch):
    monkeypatch.setattr(bentoml, "__version__", "1.4.41")
    with pytest.raises(patches.UntestedBentoML, match=r"1\.4\.41"):
        patches.install()
