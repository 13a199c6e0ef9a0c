"""The checks config.py makes of every setting beyond its type, and the `[quotas]` tables.

Every number is finite and within its range: the bounds a field declares (`Field(gt=0, le=3600)`), and at
most CEILING where it declares no upper bound, so a setting added without one still cannot overflow a
timer or a date. URLs have the schemes they need, database URLs a supported dialect whose driver is
installed. docs/settings.md lists each setting's range; tests/test_config.py keeps the two in step.
No environment here: config.py is its only reader.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import annotated_types as at
from pydantic import BaseModel, ConfigDict, Field
from pydantic.fields import FieldInfo

CEILING = 10**9  # a number setting that declares no upper bound is at most this

# database URL dialects: the driver of `dialect://` and those that may follow it as `dialect+driver://`
DIALECTS = {"sqlite": ("sqlite3", {"pysqlite": "sqlite3"}),
            "postgresql": ("psycopg2", {"psycopg": "psycopg", "psycopg2": "psycopg2"})}


class QuotaLimits(BaseModel):
    """One set of limits; 0 means unlimited."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # creates per second (burst: one second's worth, at least 1)
    rate_per_second: float = Field(0.0, ge=0, le=1_000_000)
    max_running: int = Field(0, ge=0, le=1_000_000)  # tasks RUNNING at once; more wait PENDING ("queued")
    # PENDING tasks at once; beyond it 429 Throttling.AllocationQuota
    max_queued: int = Field(0, ge=0, le=1_000_000_000)


class QuotaSettings(QuotaLimits):
    """The `[quotas]` table: per-account limits (its own keys), overridden for one account by
    `[quotas.accounts."name"]` and narrowed for one API key by `[quotas.keys."key id"]`; limits per account
    and model in `[quotas.models."model"]`. Absent: no limits (the embedded
    single-user default). The hosted table (2.2/2.1 models 2 RPS / 2 running, 2.5+ 5 / 5) is written out in
    docs/deploy.md."""

    accounts: dict[str, QuotaLimits] = Field(default_factory=dict)
    keys: dict[str, QuotaLimits] = Field(default_factory=dict)
    models: dict[str, QuotaLimits] = Field(default_factory=dict)

    def for_account(self, account_id: str) -> QuotaLimits:
        """The account's limits: its own table if it has one, else the defaults."""
        return self.accounts.get(account_id, self)

    def running_limit(self, account_id: str) -> int:
        """How many of the account's tasks may run at once (0: unlimited)."""
        return self.for_account(account_id).max_running


# ------------------------------------------------------------------------------------- names and lists

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def log_level(value: str) -> str:
    level = value.strip().upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"unknown log level {value!r}; use one of {', '.join(LOG_LEVELS)}")
    return level


HOST_OR_PORT = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9]([a-z0-9.-]*[a-z0-9])?)(:[0-9]{1,5})?")


def comma_list(value: Any) -> Any:
    """A list given as one string (the environment): comma-separated items."""
    return [item for item in value.split(",") if item.strip()] if isinstance(value, str) else value


def names(value: list[str]) -> list[str]:
    """Names from a list, stripped, empty ones left out (`a, b,` is ["a", "b"])."""
    return [item.strip() for item in value if item.strip()]


def host_list(value: list[str]) -> list[str]:
    hosts = [item.strip().lower() for item in value]
    for host in hosts:
        match = HOST_OR_PORT.fullmatch(host)
        if not match or (match.group(3) and int(match.group(3)[1:]) > 65535):
            raise ValueError(f"{host!r} is not a host name or host:port; list names as a Host header has "
                             'them, e.g. "api.example.com", "10.0.0.5:8000" or "[::1]:8000" (no scheme, '
                             "no path)")
    return hosts


def as_path(value: Any) -> Any:
    """A path written as a string (TOML, JSON), checked strictly otherwise."""
    return Path(value) if isinstance(value, str) else value



class DistributedEnv(BaseModel):
    """This process's place in a torchrun-style process group (one rank per GPU of a multi-GPU worker)."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str = "127.0.0.1"
    master_port: int = 29500


# ------------------------------------------------------------------------------------------------ numbers


def bounds(info: FieldInfo) -> tuple[tuple[float, bool] | None, tuple[float, bool]]:
    """(lower, upper) of a number field, each (limit, inclusive); lower None when unbounded below."""
    lower, upper = None, None
    for rule in info.metadata:
        if isinstance(rule, at.Gt | at.Ge):
            lower = (rule.gt, False) if isinstance(rule, at.Gt) else (rule.ge, True)
        elif isinstance(rule, at.Lt | at.Le):
            upper = (rule.lt, False) if isinstance(rule, at.Lt) else (rule.le, True)
    return lower, upper or (CEILING, True)


def range_text(info: FieldInfo) -> str:
    """The allowed range in words: `greater than 0 and at most 3600`."""
    lower, (high, high_in) = bounds(info)
    top = f"{'at most' if high_in else 'less than'} {_number(high)}"
    if lower is None:
        return top
    return f"{'at least' if lower[1] else 'greater than'} {_number(lower[0])} and {top}"


def is_number_field(info: FieldInfo) -> bool:
    return any(t in (int, float) for t in _members(info.annotation))


def out_of_range(value: Any, info: FieldInfo) -> bool:
    """Whether a number `value` of field `info` is not finite or outside its bounds (CEILING at most)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if not math.isfinite(value):
        return True
    lower, (high, high_in) = bounds(info)
    if lower is not None and (value < lower[0] if lower[1] else value <= lower[0]):
        return True
    return value > high if high_in else value >= high


def bad_numbers(value: Any, info: FieldInfo, loc: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(location, value) of each number in `value` (a setting, a table, a table of tables) out of range."""
    if is_number_field(info) and out_of_range(value, info):
        yield loc, value
    elif isinstance(value, BaseModel):
        for name, field in type(value).model_fields.items():
            yield from bad_numbers(getattr(value, name), field, (*loc, name))
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, BaseModel):
                yield from bad_numbers(item, info, (*loc, str(key)))


def field_at(model: type[BaseModel], loc: tuple[Any, ...]) -> FieldInfo | None:
    """The field a validation error's location names (`("quotas", "accounts", "a", "max_running")`)."""
    info, annotation = None, model
    for part in loc:
        if isinstance(part, int):
            continue
        found = [t for t in _members(annotation) if isinstance(t, type) and issubclass(t, BaseModel)]
        if found and part in found[0].model_fields:
            info = found[0].model_fields[part]
            annotation = info.annotation
            continue
        tables = [typing.get_args(t)[1] for t in _members(annotation) if typing.get_origin(t) is dict]
        if not tables:
            return None
        annotation = tables[0]  # `part` was a table's key
    return info


def _members(annotation: Any) -> list[Any]:
    """The types of a union (`X | None`), else the annotation itself."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return list(typing.get_args(annotation))
    return [annotation]


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


# --------------------------------------------------------------------------------------------- addresses


def http_url(value: str) -> str:
    """An http(s) URL with a host (empty: unset); no other scheme, no credentials, query or fragment."""
    if not value:
        return value
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises for a port that is not a number or out of range
    except ValueError:
        parts = None
    if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.username
            or parts.password or parts.query or parts.fragment or re.search(r"[\s\\]", value)):
        raise ValueError(f"must be empty or an http:// or https:// URL with a host (no user, query or "
                         f"fragment), got {value[:60]!r}; write e.g. \"https://host.example/\"")
    return value


def database_url(value: str) -> str:
    """A database URL of a supported dialect whose driver is installed (empty: SQLite in data_dir)."""
    if not value:
        return value
    match = re.fullmatch(r"([a-z0-9]+)(?:\+([a-z0-9_]+))?://.*", value, re.DOTALL)
    dialect, driver = (match.group(1), match.group(2)) if match else (value.split(":", 1)[0][:20], None)
    example = ('write e.g. "postgresql+psycopg://user:password@host:5432/wanserve" or '
               '"sqlite:////var/lib/wanserve/wanserve.db"')
    if dialect not in DIALECTS:
        raise ValueError(f"unsupported database {dialect!r} (supported: SQLite and PostgreSQL); {example}")
    default, drivers = DIALECTS[dialect]
    module = default if driver is None else drivers.get(driver)
    if module is None:
        raise ValueError(f"unsupported driver {dialect}+{driver} (supported: "
                         f"{', '.join(f'{dialect}+{d}' for d in drivers)}); {example}")
    if importlib.util.find_spec(module) is None:
        raise ValueError(f"{dialect}{'+' + driver if driver else ''}: its driver {module} is not installed; "
                         "install wanserve[postgres] and write postgresql+psycopg://...")
    return value


# ---------------------------------------------------------------------------------------------- messages


def toml_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))
    if isinstance(value, list):
        return json.dumps(value)
    return repr(value)


def plain(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(value)
    return ("1" if value else "0") if isinstance(value, bool) else str(value)


def shown(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, str) else toml_text(value) if isinstance(value, bool) \
        else repr(value)
    return one_line(text if len(text) <= 60 else text[:57] + "...")


def one_line(text: str) -> str:
    return " ".join(text.split())
