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
