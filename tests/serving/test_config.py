"""Service settings: read from a given environment, every bad value named."""

import pytest

from mcdrop.serving.config import LOOPBACK_HOSTS, ServiceConfig, SettingError


def test_defaults_and_values():
    default = ServiceConfig.from_env({})
    assert default.models == () and default.allowed_hosts == LOOPBACK_HOSTS and default.api_key is None
    assert default.limits.max_rows == 1024 and default.limits.max_cost == 2e12 and not default.docs
    config = ServiceConfig.from_env({"MCDROP_SERVE_MODELS": "a, b", "MCDROP_MAX_ROWS": "8", "MCDROP_MAX_COST": "0",
                                     "MCDROP_ALLOWED_HOSTS": "api.example.com,*", "MCDROP_API_KEY": "k" * 20,
                                     "MCDROP_DOCS": "1", "MCDROP_THREADS": "2", "MCDROP_DEVICE": " CUDA:1 "})
    assert config.models == ("a", "b") and config.limits.max_rows == 8 and config.limits.max_cost is None
    assert config.allowed_hosts == ("api.example.com", "*") and config.docs and config.threads == 2
    assert default.device == "cpu" and config.device == "cuda:1"
    assert default.body_deadline_s == 60 and ServiceConfig.from_env({"MCDROP_BODY_DEADLINE": "5"}).body_deadline_s == 5


def test_api_key_from_a_file(tmp_path):
    (tmp_path / "key").write_text("s3cret-token-0123456789\n")
    assert ServiceConfig.from_env({"MCDROP_API_KEY_FILE": str(tmp_path / "key")}).api_key == "s3cret-token-0123456789"
    with pytest.raises(SettingError, match="MCDROP_API_KEY_FILE: cannot read"):
        ServiceConfig.from_env({"MCDROP_API_KEY_FILE": str(tmp_path / "none")})


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"MCDROP_MAX_ROWS": "many"}, "MCDROP_MAX_ROWS"),
        ({"MCDROP_MAX_ROWS": "0"}, "MCDROP_MAX_ROWS"),
        ({"MCDROP_MAX_BODY_BYTES": "10"}, "MCDROP_MAX_BODY_BYTES"),
        ({"MCDROP_REQUEST_TIMEOUT": "-1"}, "MCDROP_REQUEST_TIMEOUT"),
        ({"MCDROP_MAX_COST": "nan"}, "MCDROP_MAX_COST"),
        ({"MCDROP_API_KEY": "short"}, "MCDROP_API_KEY"),
        ({"MCDROP_DOCS": "maybe"}, "MCDROP_DOCS"),
        ({"MCDROP_DEVICE": "gpu"}, "MCDROP_DEVICE"),
        ({"MCDROP_DEVICE": "cuda:x"}, "MCDROP_DEVICE"),
        ({"MCDROP_BODY_DEADLINE": "0"}, "MCDROP_BODY_DEADLINE"),
    ],
)
def test_bad_values_name_the_variable(env, variable):
    with pytest.raises(SettingError) as err:
        ServiceConfig.from_env(env)
    assert err.value.variable == variable and str(err.value).startswith(variable)


def test_precision_and_workers():
    default = ServiceConfig.from_env({})
    assert default.precision == "float32" and default.workers == 1 and default.worker_threads(16) is None
    config = ServiceConfig.from_env({"MCDROP_PRECISION": " BFloat16 ", "MCDROP_WORKERS": "4"})
    assert config.precision == "bfloat16" and config.workers == 4
    assert config.worker_threads(16) == 4 and config.worker_threads(2) == 1  # cores shared, at least one each
    pinned = ServiceConfig.from_env({"MCDROP_WORKERS": "4", "MCDROP_THREADS": "2"})
    assert pinned.worker_threads(16) == 2  # MCDROP_THREADS wins


def test_precision_names_match_the_librarys():
    from mcdrop.sampling.precision import PRECISIONS
    from mcdrop.serving.config import PRECISIONS as CONFIG_PRECISIONS

    assert CONFIG_PRECISIONS == PRECISIONS


@pytest.mark.parametrize(("env", "variable"), [({"MCDROP_PRECISION": "fp16"}, "MCDROP_PRECISION"),
                                               ({"MCDROP_WORKERS": "0"}, "MCDROP_WORKERS"),
                                               ({"MCDROP_WORKERS": "two"}, "MCDROP_WORKERS")])
def test_bad_precision_or_workers_name_the_variable(env, variable):
    from mcdrop.serving.config import workers_from_env

    with pytest.raises(SettingError) as err:
        ServiceConfig.from_env(env)
    assert err.value.variable == variable
    if variable == "MCDROP_WORKERS":
        assert workers_from_env(env, strict=False) == 1  # the service's decorator: from_env reports it


def test_the_environment_is_read_as_a_given_mapping_is(monkeypatch):
    """ServiceConfig.from_env() reads os.environ through pydantic-settings; a mapping gives the same answer."""
    env = {"MCDROP_MAX_ROWS": " 7 ", "MCDROP_SERVE_MODELS": "a,b", "MCDROP_DOCS": "true", "MCDROP_THREADS": ""}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    from_os = ServiceConfig.from_env()
    assert from_os == ServiceConfig.from_env(env) and from_os.limits.max_rows == 7 and from_os.threads is None
    assert from_os.models == ("a", "b") and from_os.docs
    monkeypatch.setenv("MCDROP_MAX_ROWS", "seven")
    with pytest.raises(SettingError, match=r"^MCDROP_MAX_ROWS: expected an integer, but got 'seven'$"):
        ServiceConfig.from_env()
    assert ServiceConfig.from_env({}).limits.max_rows == 1024  # a given mapping is all that is read
    assert ServiceConfig.from_env({"mcdrop_max_rows": "5"}).limits.max_rows == 1024  # names are case-sensitive


def test_a_bad_value_is_one_line_naming_what_was_expected():
    with pytest.raises(SettingError) as err:
        ServiceConfig.from_env({"MCDROP_BODY_TIMEOUT": "soon", "MCDROP_PRECISION": "fp8"})
    assert "\n" not in str(err.value) and "expected" in str(err.value) and err.value.variable in str(err.value)


def test_the_readme_table_is_generated_from_the_fields():
    """README.md's settings table is settings_table()'s text, so the docs cannot drift from the code; regenerate it
    with ``python -c 'from mcdrop.serving.config import settings_table; print(settings_table())'``."""
    from pathlib import Path

    from mcdrop.serving.config import ServiceSettings, settings_table

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    begin = readme.index("| variable | flag | meaning | default |")
    assert readme[begin:readme.index("<!-- end of the generated table -->", begin)] == settings_table()
    assert len(settings_table().splitlines()) == 2 + len(ServiceSettings.model_fields)


def test_every_variable_the_code_reads_is_documented():
    import re
    from pathlib import Path

    root = Path(__file__).parents[2]
    read = {name for path in (root / "mcdrop").rglob("*.py") for name in re.findall(r"MCDROP_[A-Z0-9_]+", path.read_text())}
    internal = {"MCDROP_ANNOUNCE_URL"}  # set by `mcdrop serve` for the service it starts
    readme = (root / "README.md").read_text()
    assert "MCDROP_MAX_ROWS" in read and not {name for name in read - internal if name not in readme}


def test_serve_flags_set_their_variables():
    """Every flag the settings name exists on `mcdrop serve` and sets its variable."""
    import argparse

    from mcdrop.cli import serve
    from mcdrop.serving.config import flags

    parser = argparse.ArgumentParser()
    serve.add_parser(parser.add_subparsers(), "serve")
    args = parser.parse_args(["serve", *(arg for flag in flags() for arg in (flag, "3"))])
    assert flags() == {"--models": "MCDROP_SERVE_MODELS", "--max-rows": "MCDROP_MAX_ROWS",
                       "--max-samples": "MCDROP_MAX_SAMPLES", "--allowed-hosts": "MCDROP_ALLOWED_HOSTS",
                       "--threads": "MCDROP_THREADS"}
    assert all(getattr(args, flag[2:].replace("-", "_")) in ("3", 3) for flag in flags())


def test_openapi_description_lists_every_setting():
    from mcdrop.serving.config import SETTINGS, ServiceSettings, variable

    assert list(SETTINGS) == [variable(name) for name in ServiceSettings.model_fields]
    assert SETTINGS["MCDROP_MAX_ROWS"] == "rows per request (default 1024)"
