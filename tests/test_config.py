"""Settings: defaults, TOML file, environment, command-line flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from wanserve.config import load_settings


def test_defaults_need_nothing():
    s = load_settings()
    assert s.db_url.startswith("sqlite:///") and s.db_url.endswith("wanserve-data/wanserve.db")
    assert not s.allow_private_media_urls


def test_toml_file_then_flags_override(tmp_path):
    cfg = tmp_path / "w.toml"
    cfg.write_text('workers = 3\nport = 9000\nallow_private_media_urls = true\n[models."wan2.6-t2v"]\nengine = "preview"\n')
    s = load_settings(cfg, port=9100, data_dir=str(tmp_path))
    assert (s.workers, s.port, s.data_dir) == (3, 9100, Path(tmp_path))
    assert s.allow_private_media_urls and s.models == {"wan2.6-t2v": {"engine": "preview"}}


def test_unknown_setting_is_an_error_naming_it(tmp_path):
    cfg = tmp_path / "w.toml"
    cfg.write_text("wokers = 3\n")
    with pytest.raises(ValueError, match="wokers"):
        load_settings(cfg)


def test_environment_allows_private_media_urls(monkeypatch):
    monkeypatch.setenv("WANSERVE_ALLOW_PRIVATE_MEDIA_URLS", "1")
    assert load_settings().allow_private_media_urls


def test_secret_is_created_once_and_shared(tmp_path):
    a = load_settings(data_dir=tmp_path).secret()
    b = load_settings(data_dir=tmp_path).secret()
    assert a == b and len(a) == 64
