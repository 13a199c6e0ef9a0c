"""Settings: defaults, TOML file, environment, command-line flags."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import Field, ValidationError

import wanserve
from wanserve.config import Settings, SettingsError, load_settings


@pytest.fixture(autouse=True)
def _no_wanserve_environment(monkeypatch):
    for name in list(os.environ):
        if name.upper().startswith("WANSERVE_"):
            monkeypatch.delenv(name)


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "w.toml"
    path.write_text(text)
    return path


def settings_error(*args, **kwargs) -> str:
    with pytest.raises(SettingsError) as info:
        load_settings(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults_need_nothing():
    s = load_settings()
    assert s.db_url.startswith("sqlite:///") and s.db_url.endswith("wanserve-data/wanserve.db")
    assert not s.allow_private_media_urls
    assert (s.api_key, s.log_level, s.workers, s.lease_seconds) == ("", "INFO", 1, 30.0)


def test_toml_file_then_flags_override(tmp_path):
    cfg = config(tmp_path, 'workers = 3\nport = 9000\nallow_private_media_urls = true\n'
                           '[models."wan2.6-t2v"]\nengine = "preview"\n')
    s = load_settings(cfg, port=9100, data_dir=str(tmp_path))
    assert (s.workers, s.port, s.data_dir) == (3, 9100, Path(tmp_path))
    assert s.allow_private_media_urls and s.models == {"wan2.6-t2v": {"engine": "preview"}}


def test_unknown_setting_is_an_error_naming_it_and_the_known_ones(tmp_path):
    cfg = config(tmp_path, "wokers = 3\n")
    message = settings_error(cfg)
    assert message.startswith(f"{cfg}: wokers: unknown setting")
    assert "did you mean workers?" in message
    assert "known settings: " in message and "lease_seconds" in message
    assert isinstance(SettingsError("x"), ValueError)


@pytest.mark.parametrize(
    ("text", "key", "hint"),
    [
        ('lease_seconds = "30"', "lease_seconds", "write lease_seconds = 30 (no quotes)"),
        ('workers = "two"', "workers", "expected a whole number"),
        ("workers = 2.5", "workers", "expected a whole number"),
        ('allow_private_media_urls = "true"', "allow_private_media_urls", "allow_private_media_urls = true"),
        ('port = "8000"', "port", "port = 8000"),
        ("host = 8000", "host", "expected a string in quotes"),
        ("data_dir = 1", "data_dir", "expected a path in quotes"),
        ("models = 3", "models", "expected a table"),
        ('log_level = "loud"', "log_level", "DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    ],
)
def test_a_value_of_the_wrong_type_in_the_file_is_refused_naming_file_and_key(tmp_path, text, key, hint):
    cfg = config(tmp_path, text + "\n")
    message = settings_error(cfg)
    assert message.startswith(f"{cfg}: {key}: ")
    assert hint in message


@pytest.mark.parametrize(
    "text",
    ["workers = -1", "lease_seconds = 0", "poll_seconds = -0.5", "max_attempts = 0", "port = 65536",
     "port = -1", "task_ttl_seconds = 0", "upload_ttl_seconds = -1", "upload_policy_seconds = 0",
     "sweep_seconds = 0", "upload_max_mb = 0"],
)
def test_values_out_of_range_are_refused(tmp_path, text):
    cfg = config(tmp_path, text + "\n")
    key = text.split()[0]
    message = settings_error(cfg)
    bound = r"must be (at least|greater than) -?\d+ and at most \d+, got "
    assert re.match(rf"{re.escape(str(cfg))}: {key}: {bound}", message)
    assert f"write e.g. {key} = " in message


@pytest.mark.parametrize("text", ["workers = 0", "port = 0", "port = 65535", "max_attempts = 1",
                                  "lease_seconds = 0.1", "lease_seconds = 5"])
def test_values_at_the_edge_of_their_range_are_accepted(tmp_path, text):
    key, value = text.split(" = ")
    assert getattr(load_settings(config(tmp_path, text + "\n")), key) == float(value)


def test_invalid_toml_and_a_missing_file_are_one_line_errors_naming_the_file(tmp_path):
    cfg = config(tmp_path, "workers = \n")
    assert settings_error(cfg).startswith(f"{cfg}: not valid TOML (")
    missing = tmp_path / "nope.toml"
    assert settings_error(missing).startswith(f"{missing}: cannot read the settings file")


def test_environment_is_read_and_parsed(monkeypatch):
    monkeypatch.setenv("WANSERVE_WORKERS", "2")
    monkeypatch.setenv("WANSERVE_API_KEY", "sk-env")
    monkeypatch.setenv("WANSERVE_LEASE_SECONDS", "2.5")
    monkeypatch.setenv("WANSERVE_LOG_LEVEL", "debug")
    monkeypatch.setenv("WANSERVE_MODELS", '{"wan2.6-t2v": {"engine": "preview"}}')
    s = load_settings()
    assert (s.workers, s.api_key, s.lease_seconds, s.log_level) == (2, "sk-env", 2.5, "DEBUG")
    assert s.models == {"wan2.6-t2v": {"engine": "preview"}}
    assert Settings().api_key == "sk-env"  # direct construction reads it too (make_server relies on it)


def test_environment_allows_private_media_urls(monkeypatch):
    monkeypatch.setenv("WANSERVE_ALLOW_PRIVATE_MEDIA_URLS", "1")
    assert load_settings().allow_private_media_urls


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("WANSERVE_WORKERS", "two", "environment WANSERVE_WORKERS: expected a whole number"),
        ("WANSERVE_WORKERS", "-1", "environment WANSERVE_WORKERS: must be at least 0"),
        ("WANSERVE_ALLOW_PRIVATE_MEDIA_URLS", "maybe",
         "environment WANSERVE_ALLOW_PRIVATE_MEDIA_URLS: expected 1, true, yes or on"),
        ("WANSERVE_PORT", "http", "environment WANSERVE_PORT: expected a whole number"),
        ("WANSERVE_MODELS", "{not json", "environment WANSERVE_MODELS: not valid JSON"),
        ("WANSERVE_LOG_LEVEL", "chatty", "environment WANSERVE_LOG_LEVEL: unknown log level"),
    ],
)
def test_an_invalid_environment_value_names_the_variable(monkeypatch, name, value, expected):
    monkeypatch.setenv(name, value)
    assert settings_error().startswith(expected)


def test_flags_beat_environment_beat_file(tmp_path, monkeypatch):
    cfg = config(tmp_path, 'workers = 3\nport = 9000\nhost = "0.0.0.0"\napi_key = "sk-file"\n')
    monkeypatch.setenv("WANSERVE_WORKERS", "4")
    monkeypatch.setenv("WANSERVE_PORT", "9001")
    monkeypatch.setenv("WANSERVE_API_KEY", "sk-env")
    s = load_settings(cfg, workers=5, port=None)  # None: the flag was not given
    assert (s.workers, s.port, s.host, s.api_key) == (5, 9001, "0.0.0.0", "sk-env")


def test_a_flag_out_of_range_names_the_flag():
    assert settings_error(workers=-1).startswith("command line --workers: must be at least 0")


def test_settings_are_immutable_and_built_directly(tmp_path):
    s = Settings(data_dir=tmp_path, workers=0, poll_seconds=0.05, allow_private_media_urls=True)
    assert (s.workers, s.poll_seconds, s.allow_private_media_urls) == (0, 0.05, True)
    with pytest.raises(ValidationError, match="frozen"):
        s.workers = 2  # type: ignore[misc]
    with pytest.raises(SettingsError, match="Settings\\(\\): wokers: unknown setting"):
        Settings(wokers=1)


def test_secret_is_created_once_and_shared(tmp_path):
    a = load_settings(data_dir=tmp_path).secret()
    b = load_settings(data_dir=tmp_path).secret()
    assert a == b and len(a) == 64


@pytest.mark.parametrize(
    ("text", "key", "shown", "allowed"),
    [
        ("lease_seconds = inf", "lease_seconds", "inf", "greater than 0 and at most 86400"),
        ("lease_seconds = nan", "lease_seconds", "nan", "greater than 0 and at most 86400"),
        ("poll_seconds = inf", "poll_seconds", "inf", "greater than 0 and at most 3600"),
        ("sweep_seconds = -inf", "sweep_seconds", "-inf", "greater than 0 and at most 86400"),
        ("task_ttl_seconds = 9223372036854775807", "task_ttl_seconds", "9223372036854775807",
         "greater than 0 and at most 315360000"),
        ("workers = 100000", "workers", "100000", "at least 0 and at most 1024"),
        ("[quotas]\nrate_per_second = inf", "quotas.rate_per_second", "inf",
         "at least 0 and at most 1000000"),
        ('[quotas.accounts."a"]\nmax_queued = -1', "quotas.accounts.a.max_queued", "-1",
         "at least 0 and at most 1000000000"),
        ('[prompt_extend]\nbase_url = "http://127.0.0.1:8001/v1"\nmodel = "m"\ntimeout_seconds = inf',
         "prompt_extend.timeout_seconds", "inf", "greater than 0 and at most 3600"),
        ('public_base_url = "javascript:alert(1)//"', "public_base_url", "'javascript:alert(1)//'",
         "empty or an http:// or https:// URL"),
        ('public_base_url = "https://user:pw@video.example/"', "public_base_url", "user:pw",
         "empty or an http:// or https:// URL"),
        ('s3_endpoint_url = "minio.internal:9000"', "s3_endpoint_url", "minio.internal:9000",
         "empty or an http:// or https:// URL"),
        ('[prompt_extend]\nbase_url = "file:///etc/passwd"\nmodel = "m"', "prompt_extend.base_url",
         "file:///etc/passwd", "http:// or https://"),
        ('database_url = "mysql://x"', "database_url", "'mysql'", "supported: SQLite and PostgreSQL"),
        ('database_url = "postgresql+asyncpg://u@h/db"', "database_url", "postgresql+asyncpg",
         "supported: postgresql+psycopg"),
        ('storage = "s3"', "s3_bucket", '""', 'must be set with storage = "s3"'),
    ],
)
def test_a_setting_out_of_its_range_is_refused_in_one_line_naming_key_value_and_range(tmp_path, text, key,
                                                                                     shown, allowed):
    cfg = config(tmp_path, text + "\n")
    message = settings_error(cfg)
    assert message.startswith(f"{cfg}: {key}: "), message
    assert shown in message and allowed in message


@pytest.mark.parametrize(("name", "value"), [
    ("WANSERVE_LEASE_SECONDS", "inf"), ("WANSERVE_POLL_SECONDS", "nan"),
    ("WANSERVE_TASK_TTL_SECONDS", "9223372036854775807"), ("WANSERVE_QUOTAS", '{"rate_per_second": 1e999}'),
    ("WANSERVE_DATABASE_URL", "mysql://x")])
def test_an_environment_value_out_of_range_names_the_variable(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    assert settings_error().startswith(f"environment {name}: ")


def test_direct_construction_and_flags_are_checked_too():
    with pytest.raises(SettingsError, match=r"^Settings\(\): poll_seconds: must be greater than 0 and at"):
        Settings(poll_seconds=float("inf"))
    with pytest.raises(SettingsError, match=r'^Settings\(\): s3_bucket: must be set with storage = "s3"'):
        Settings(storage="s3")
    assert settings_error(lease_seconds=float("inf")).startswith("command line --lease-seconds: must be ")


def test_a_number_setting_without_an_upper_bound_is_held_to_the_ceiling():
    """A setting added with `Field(1, ge=1)` alone still cannot overflow a timer or a date."""
    from pydantic.fields import FieldInfo

    from wanserve.config_checks import CEILING, out_of_range, range_text

    info = FieldInfo.from_annotated_attribute(int, Field(1, ge=1))
    assert range_text(info) == f"at least 1 and at most {CEILING}"
    assert out_of_range(CEILING + 1, info) and out_of_range(float("inf"), info) and out_of_range(0, info)
    assert not out_of_range(CEILING, info) and not out_of_range(1, info)


def test_a_binary_settings_file_is_a_one_line_error(tmp_path):
    cfg = tmp_path / "w.toml"
    cfg.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    assert settings_error(cfg) == f"{cfg}: not UTF-8 text (byte 0x89 at offset 0); the settings file must " \
                                  "be TOML saved as UTF-8"


def test_supported_urls_are_accepted(tmp_path):
    s = load_settings(config(tmp_path, 'public_base_url = "https://video.example.com/wan/"\n'
                                       's3_endpoint_url = "http://minio.internal:9000"\n'
                                       'database_url = "postgresql+psycopg://u:p@db:5432/w"\n'))
    assert s.public_base_url == "https://video.example.com/wan/"
    assert load_settings(database_url=f"sqlite:///{tmp_path}/x.db").db_url.startswith("sqlite:///")


@pytest.mark.parametrize("text", ["lease_seconds = inf", 'database_url = "mysql://x"', 'storage = "s3"'])
def test_serve_with_a_bad_setting_exits_non_zero_with_one_line_and_no_traceback(tmp_path, text):
    cfg = config(tmp_path, text + "\n")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("WANSERVE_")}
    proc = subprocess.run([sys.executable, "-m", "wanserve.cli", "serve", "--config", str(cfg), "--port", "0",
                           "--data-dir", str(tmp_path / "d")], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"wanserve: cannot start: {cfg}: "), proc.stderr


def test_the_docs_list_every_number_setting_with_its_range():
    """docs/settings.md: one row per setting, its range as the loader words it."""
    from wanserve.config_checks import is_number_field, range_text

    doc = (Path(wanserve.__file__).parents[2] / "docs" / "settings.md").read_text()
    for name, info in Settings.model_fields.items():
        assert f"| `{name}` |" in doc, name
        if is_number_field(info):
            row = next(line for line in doc.splitlines() if line.startswith(f"| `{name}` |"))
            assert range_text(info) in row, (name, range_text(info))


def test_only_the_config_module_reads_the_environment():
    src = Path(wanserve.__file__).parent
    readers = sorted(str(p.relative_to(src)) for p in src.rglob("*.py")
                     if re.search(r"os\.environ|getenv", p.read_text()))
    assert readers in ([], ["config.py"])
