"""Settings: defaults, then the TOML file given with --config, then command-line flags.

Embedded defaults need nothing: SQLite and files under the data dir, the preview engine for
every model. `database_url = "postgresql+psycopg://..."` moves the task store to PostgreSQL.
"""

from __future__ import annotations

import os
import secrets
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .media.fetch import private_urls_allowed_from_env


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("wanserve-data")
    database_url: str = ""  # empty: sqlite:///<data_dir>/wanserve.db
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    public_base_url: str = ""  # empty: the base URL of each incoming request
    lease_seconds: float = 30.0  # a dead worker's task is retried this long after its last heartbeat
    poll_seconds: float = 0.5  # how often an idle worker looks for work
    max_attempts: int = 3  # runs of one task (first run plus retries after lost leases)
    task_ttl_seconds: int = 24 * 3600  # tasks and result files are removed this long after they end
    upload_ttl_seconds: int = 48 * 3600
    upload_policy_seconds: int = 300
    upload_max_mb: int = 100
    sweep_seconds: float = 600.0
    utc_offset_hours: float = 8.0  # task times are shown in this zone, as the hosted service (UTC+8) does
    allow_private_media_urls: bool = False
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # [models."name"] tables
    api_key: str = field(default_factory=lambda: os.environ.get("WANSERVE_API_KEY", ""))  # a bootstrap key

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'wanserve.db').resolve()}"

    def secret(self) -> bytes:
        """The HMAC key for signed URLs and upload policies, created once per data dir and shared by
        every process that uses it (API and workers)."""
        path = self.data_dir / "secret.key"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(secrets.token_hex(32))
            tmp.chmod(0o600)
            try:
                os.link(tmp, path)  # atomic create-if-absent: concurrent starters agree on one key
            except FileExistsError:
                pass
            tmp.unlink()
        return path.read_text().strip().encode()


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {}
    if config_file:
        with open(config_file, "rb") as fh:
            raw = tomllib.load(fh)
        known = {f.name for f in fields(Settings)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"{config_file}: unknown settings {sorted(unknown)}; known: {sorted(known)}")
        values.update(raw)
    if private_urls_allowed_from_env():
        values["allow_private_media_urls"] = True
    values.update({k: v for k, v in overrides.items() if v is not None})
    if "data_dir" in values:
        values["data_dir"] = Path(values["data_dir"])
    return replace(Settings(), **values)
