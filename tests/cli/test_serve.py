"""`mcdrop serve` before it starts a server: the serve extra's packages, flags checked as their variables."""

from __future__ import annotations

import importlib.util


def test_without_the_serve_extra_it_says_what_to_install(cli, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "pydantic_settings" else find_spec(name, *a))
    run = cli("serve")
    assert run.returncode == 1 and run.stderr.strip().endswith(
        "pydantic_settings is not installed in this environment: pip install 'mcdrop[serve]'"), run.stderr


def test_a_bad_flag_or_variable_is_named(cli, monkeypatch):
    run = cli("serve", "--threads", "0")
    assert run.returncode == 2 and "--threads: expected a number >= 1, but got '0'" in run.stderr
    monkeypatch.setenv("MCDROP_BODY_DEADLINE", "soon")
    run = cli("serve")
    assert run.returncode == 2 and "MCDROP_BODY_DEADLINE: expected a number, but got 'soon'" in run.stderr
