"""Settings: defaults, then the TOML file given with --config, then the environment (WANSERVE_<NAME>), then
command-line flags.

Embedded defaults need nothing: SQLite and files under the data dir, the preview engine for
every model. `database_url = "postgresql+psycopg://..."` moves the task store to PostgreSQL.

This module is the only reader of the environment. Values are checked when they are loaded: in the TOML file
strictly (`lease_seconds = "30"` is a string, not a number), in the environment as strings that are parsed
(WANSERVE_WORKERS=2, WANSERVE_ALLOW_PRIVATE_MEDIA_URLS=1/true/yes/on or 0/false/no/off); then numbers must be
finite and in range, URLs of their scheme, the database supported (config_checks.py, docs/settings.md), and
storage = "s3" needs s3_bucket. Every problem raises
`SettingsError`, whose message is one line: `<where>: <key>: <what is wrong and what to write instead>`,
e.g. `wanserve.toml: workers: ...` or `environment WANSERVE_WORKERS: ...`.
"""

from __future__ import annotations

import difflib
import os
import re
import secrets
import tomllib
from contextvars import ContextVar
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as _SourceError

from . import config_checks as checks
from .config_checks import LOG_LEVELS, DistributedEnv, QuotaLimits, QuotaSettings, bad_numbers, field_at

__all__ = ["LOG_LEVELS", "DistributedEnv", "QuotaLimits", "QuotaSettings"]  # defined in config_checks.py
_as_path, _comma_list, _hosts, _log_level, _names = (checks.as_path, checks.comma_list, checks.host_list,
                                                     checks.log_level, checks.names)
_toml, _plain, _shown, _one_line = checks.toml_text, checks.plain, checks.shown, checks.one_line

ENV_PREFIX = "WANSERVE_"
_TEN_YEARS = 3650 * 86400
_WHERE: ContextVar[str] = ContextVar("settings_source", default="Settings()")  # named in cross-checks


class SettingsError(ValueError):
    """A settings problem, as one line: `<where>: <key>: <what is wrong and what to write instead>`."""


class PromptExtendSettings(BaseModel):
    """The `[prompt_extend]` table: the prompt rewriter (generation/rewrite/). Absent: prompts pass through
    unchanged. backend "openai": an OpenAI-compatible chat completions server at `base_url` (key from the
    environment variable named by `api_key_env`); "transformers": a local causal LM directory `model_path`
    (and optionally a vision-language model `vision_model_path` for image-driven tasks)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    backend: Literal["openai", "transformers"] = "openai"
    # e.g. "http://127.0.0.1:8001/v1"; requests go to {base_url}/chat/completions
    base_url: Annotated[str, AfterValidator(checks.http_url)] = ""
    model: str = ""  # the chat model's name sent to the server
    api_key_env: str = ""  # the name of the environment variable holding the server's key; empty: no key
    timeout_seconds: float = Field(30.0, gt=0, le=3600)
    temperature: float = Field(0.2, ge=0, le=2)
    send_images: bool = False  # openai: the model reads images; i2v/kf2v tasks send their first frame
    # transformers: a local directory (loaded with local_files_only), written as a string
    model_path: Annotated[Path | None, BeforeValidator(_as_path)] = None
    vision_model_path: Annotated[Path | None, BeforeValidator(_as_path)] = None  # a vision-language model
    max_new_tokens: int = Field(512, ge=1, le=32768)
    device: str = "cpu"

    @model_validator(mode="after")
    def _complete(self) -> PromptExtendSettings:
        if self.backend == "openai" and not (self.base_url and self.model):
            raise ValueError('backend "openai" needs base_url and model, e.g. '
                             'base_url = "http://127.0.0.1:8001/v1", model = "qwen-plus"')
        if self.backend == "transformers" and self.model_path is None:
            raise ValueError('backend "transformers" needs model_path, a local model directory, e.g. '
                             'model_path = "/models/Qwen2.5-3B-Instruct"')
        return self

    def api_key(self) -> str:
        """The key from the environment variable named by api_key_env (config.py reads the environment)."""
        return os.environ.get(self.api_key_env, "") if self.api_key_env else ""


class Settings(BaseSettings):
    """Every setting; each can come from the TOML file (`name = value`), the environment (WANSERVE_NAME) or,
    for some, a command-line flag. Immutable."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, frozen=True,
                                      extra="forbid", allow_inf_nan=False)

    data_dir: Path = Path("wanserve-data")
    # empty: sqlite:///<data_dir>/wanserve.db; else sqlite:// or postgresql+psycopg://
    database_url: Annotated[str, AfterValidator(checks.database_url)] = ""
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=0, le=1024)
    # links (video_url, upload_host) start with this; empty: the request's scheme and Host, if that Host is
    # one of allowed_hosts (else the first allowed one)
    public_base_url: Annotated[str, AfterValidator(checks.http_url)] = ""
    # the Host headers links may be built on when public_base_url is empty, as "name" or "name:port" (a
    # name without a port matches the scheme's default port). Empty: this server's own host:port and its
    # localhost / 127.0.0.1 / [::1] forms. WANSERVE_ALLOWED_HOSTS=a.example,b.example:8000
    allowed_hosts: Annotated[list[str], NoDecode, BeforeValidator(_comma_list), AfterValidator(_hosts)] = \
        Field(default_factory=list)
    # the embedded HTTP server's own bounds (api/server.py, docs/deploy.md)
    # open connections at once; beyond it the longest-idle connection still without a request is closed to
    # make room, and if none has waited 0.5 s the newcomer's request gets a 503
    max_connections: int = Field(1000, ge=1, le=1_000_000)
    # a request's line and headers must arrive within this
    header_timeout_seconds: float = Field(10.0, gt=0, le=3600)
    body_timeout_seconds: float = Field(30.0, gt=0, le=3600)  # a request body may pause this long at most
    # ...and must average at least this over each body_timeout_seconds (slow uploads are closed); 0: off
    body_min_bytes_per_second: int = Field(1024, ge=0, le=1 << 30)
    keep_alive_seconds: float = Field(5.0, gt=0, le=3600)  # an idle kept-alive connection is closed then
    max_header_bytes: int = Field(16 * 1024, ge=1024, le=1 << 20)  # request line plus headers
    backlog: int = Field(2048, ge=1, le=65535)  # connections the kernel queues before the server accepts them
    # a dead worker's task is retried this long after its last heartbeat
    lease_seconds: float = Field(30.0, gt=0, le=86400)
    poll_seconds: float = Field(0.5, gt=0, le=3600)  # how often an idle worker looks for work
    max_attempts: int = Field(3, ge=1, le=100)  # runs of one task (first run plus retries after lost leases)
    # on SIGTERM/SIGINT, running tasks may finish this long; then they are handed back (attempt not counted)
    shutdown_grace_seconds: float = Field(10.0, ge=0, le=86400)
    # tasks and result files are removed this long after they end
    task_ttl_seconds: int = Field(24 * 3600, gt=0, le=_TEN_YEARS)
    upload_ttl_seconds: int = Field(48 * 3600, gt=0, le=_TEN_YEARS)
    upload_policy_seconds: int = Field(300, gt=0, le=7 * 86400)
    upload_max_mb: int = Field(100, gt=0, le=1 << 20)
    # the largest create-request body (MiB), refused while it is read. 161 fits the largest legal request:
    # a wan2.7 first_clip (100 MiB) and last_frame (20 MiB) sent inline as data: URLs (base64: 160 MiB),
    # plus 1 MiB for prompts and JSON. Lower it to refuse inline media sooner (clients upload instead).
    max_body_mb: int = Field(161, gt=0, le=4096)
    sweep_seconds: float = Field(600.0, gt=0, le=86400)
    # task times are shown in this zone, as the hosted service (UTC+8) does
    utc_offset_hours: float = Field(8.0, ge=-24, le=24)
    allow_private_media_urls: bool = False
    # where results and uploads live (storage/__init__.py: open_storage): the data dir, or an S3 bucket
    storage: Literal["local", "s3"] = "local"
    models: dict[str, dict[str, Any]] = Field(default_factory=dict)  # [models."name"] tables
    # the models this process's workers serve: a subset of [models] (names or aliases); empty: all of them
    # (every model when [models] is empty). WANSERVE_WORKER_MODELS=a,b; `worker --models a,b`
    worker_models: Annotated[list[str], NoDecode, BeforeValidator(_comma_list), AfterValidator(_names)] = \
        Field(default_factory=list)
    api_key: str = ""  # WANSERVE_API_KEY: a bootstrap key (account "default") that `serve` also accepts
    log_level: Annotated[str, AfterValidator(_log_level)] = "INFO"  # WANSERVE_LOG_LEVEL
    # webhooks (docs/webhooks.md): a delivery that fails is retried until this long after its task ended
    webhook_retry_seconds: float = Field(3600.0, ge=0, le=30 * 86400)
    # ...after waiting this long, then twice as long each time (capped at 300 s)
    webhook_backoff_seconds: float = Field(1.0, gt=0, le=3600)
    # one attempt's whole time, connect to answer (a receiver that hangs costs this, then the next is sent)
    webhook_timeout_seconds: float = Field(5.0, gt=0, le=60)
    # attempts one API process sends at once, and of them for one account (docs/webhooks.md "Fairness")
    webhook_max_in_flight: int = Field(32, ge=1, le=1024)
    webhook_max_in_flight_per_account: int = Field(4, ge=1, le=1024)
    # open GET /tasks/{id}/events streams per API process (docs/deploy.md): in all, on top of max_connections
    # (0: streams off), and for one account or one API key (beyond: 429 Throttling with Retry-After)
    max_event_streams: int = Field(256, ge=0, le=100_000)
    max_event_streams_per_account: int = Field(32, ge=1, le=100_000)
    max_event_streams_per_key: int = Field(16, ge=1, le=100_000)
    # log lines as plain text, or one JSON object per line for log shippers (logs.py; WANSERVE_LOG_FORMAT)
    log_format: Literal["text", "json"] = "text"
    # storage = "s3" (storage/s3.py, docs/deploy.md "S3 storage"): the bucket results and uploads go to
    s3_bucket: str = ""
    # e.g. "http://minio.internal:9000"; empty: AWS S3 (its regional endpoint)
    s3_endpoint_url: Annotated[str, AfterValidator(checks.http_url)] = ""
    s3_region: str = ""  # empty: boto3's default (AWS_REGION, ~/.aws/config, else us-east-1)
    s3_prefix: str = ""  # prepended to every object key, e.g. "wanserve/" (a "/" is added if missing)
    # credentials; both empty: boto3's default chain (environment, ~/.aws files, instance or task role)
    s3_access_key_id: str = ""
    s3_secret_access_key: str = ""
    # video_url: "redirect" = wanserve's signed link, answered 307 to a fresh presigned S3 URL; "direct" =
    # the presigned S3 URL itself, valid until the task expires (needs long-lived keys: SigV4 links die
    # with the temporary credentials that signed them)
    s3_links: Literal["redirect", "direct"] = "redirect"
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"  # bucket in the path or host name
    # multi-GPU tasks (docs/deploy.md "Multi-GPU tasks"): how long one rank waits for the others in a
    # collective (a task's start, a denoising step, the end of rank 0's decode/encode) before it gives the
    # group up as broken and exits, so a hung or dead rank never holds the GPUs for ever
    dist_timeout_seconds: float = Field(600.0, gt=0, le=86400)
    # `worker --gpus 0,1`: how long a rank may take to stop after the group is told to stop
    dist_stop_seconds: float = Field(30.0, gt=0, le=3600)
    # [quotas]: per-account create rate, running and queued limits; None (absent): no limits
    quotas: QuotaSettings | None = None
    # a task running longer than this ends FAILED InternalError.Timeout (the hosted 3 h cap)
    max_run_seconds: float = Field(3 * 3600.0, gt=0, le=30 * 86400)
    # [prompt_extend]: the prompt rewriter for requests with prompt_extend true; None: prompts pass unchanged
    prompt_extend: PromptExtendSettings | None = None
    # /readyz: why each failed check failed (endpoints, bucket and host names, driver messages) in its
    # body; false: only which checks failed, their reasons in the log
    readyz_details: bool = False

    def __init__(self, **values: Any) -> None:
        """Direct construction (`Settings(data_dir=..., workers=...)`): the given values beat the environment,
        which beats the defaults. Problems raise SettingsError, as load_settings does."""
        try:
            super().__init__(**values)
        except _SourceError as exc:
            raise SettingsError(_env_source_problem(exc)) from None
        except ValidationError as exc:
            error = exc.errors()[0]
            name = str(error["loc"][0]) if error["loc"] else ""
            kind = "init" if name in values or name not in Settings.model_fields else "env"
            raise SettingsError(_problem(kind, name, error, where="Settings()")) from None
        where = _WHERE.get()
        for name, field in Settings.model_fields.items():  # settings without an upper bound too
            for loc, value in bad_numbers(getattr(self, name), field, (name,)):
                raise SettingsError(_problem("init", name, _out_of_range(loc, value), where=where))
        if self.storage == "s3" and not self.s3_bucket:
            raise SettingsError(f'{where}: s3_bucket: must be set with storage = "s3", got ""; write e.g. '
                                's3_bucket = "wanserve-videos" (or set WANSERVE_S3_BUCKET)')

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


def inherited_environment() -> dict[str, str]:
    """This process's whole environment, for child processes that inherit it (the ranks `worker --gpus`
    starts); passed through, not read as settings."""
    return dict(os.environ)


def distributed_env() -> DistributedEnv | None:
    """RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT as torchrun (or `worker --gpus`) sets them; None
    when this process is not one rank of several (absent, or WORLD_SIZE 1). Read here because this module is
    the only reader of the environment."""
    env = os.environ
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        if world <= 1 or "RANK" not in env:
            return None
        rank = int(env["RANK"])
        return DistributedEnv(rank=rank, world_size=world, local_rank=int(env.get("LOCAL_RANK", rank)),
                              master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
                              master_port=int(env.get("MASTER_PORT", "29500")))
    except ValueError as exc:
        raise SettingsError(f"environment RANK/WORLD_SIZE/LOCAL_RANK/MASTER_PORT: not integers "
                            f"({exc})") from None


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Defaults < the TOML file `config_file` < the environment (WANSERVE_<NAME>) < `overrides` that are not
    None (the command-line flags). Raises SettingsError (one line naming the file or variable and the key)."""
    values: dict[str, Any] = {}
    if config_file:
        values.update(_read_file(str(config_file)))
    for name, raw in _environment().items():
        values[name] = _check("env", name, raw, where=_env_name(name))
    for name, value in overrides.items():
        if value is not None:
            values[name] = _check("flag", name, value, where=f"command line --{name.replace('_', '-')}")
    token = _WHERE.set(str(config_file) if config_file else "settings")
    try:
        return Settings(**values)
    finally:
        _WHERE.reset(token)


def client_environment() -> tuple[str, str]:
    """(base URL, API key) from the DashScope SDK's own variables, DASHSCOPE_HTTP_BASE_URL and
    DASHSCOPE_API_KEY ("" where unset), for the client commands (`wanserve generate`, `wanserve tasks`), so a
    shell set up for the SDK works with them too. Read here because this module is the environment's only
    reader; they are not settings of the server."""
    return os.environ.get("DASHSCOPE_HTTP_BASE_URL", ""), os.environ.get("DASHSCOPE_API_KEY", "")


# ----------------------------------------------------------------------------------------------- the sources


def _read_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read the settings file ({exc.strerror or exc}); "
                            "check the --config path") from None
    except UnicodeDecodeError as exc:
        raise SettingsError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
                            f"{exc.start}); the settings file must be TOML saved as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not valid TOML ({_one_line(str(exc))}); write `name = value` lines, "
                            'strings in quotes, e.g. host = "0.0.0.0"') from None
    unknown = [key for key in raw if key not in Settings.model_fields]
    if unknown:
        guess = difflib.get_close_matches(unknown[0], list(Settings.model_fields), n=1)
        hint = f" (did you mean {guess[0]}?)" if guess and len(unknown) == 1 else ""
        raise SettingsError(f"{path}: {', '.join(unknown)}: unknown setting{'s' if len(unknown) > 1 else ''}"
                            f"{hint}; known settings: {_known()}")
    return {name: _check("file", name, value, where=path) for name, value in raw.items()}


def _environment() -> dict[str, Any]:
    """The WANSERVE_<NAME> variables that name a setting and are not empty, as strings (JSON-decoded for
    `models`)."""
    try:
        return EnvSettingsSource(Settings)()
    except _SourceError as exc:
        raise SettingsError(_env_source_problem(exc)) from None


def _env_name(name: str) -> str:
    return f"environment {ENV_PREFIX}{name.upper()}"


@cache
def _adapter(name: str) -> TypeAdapter[Any]:
    field = Settings.model_fields[name]
    if not field.metadata:
        return TypeAdapter(field.annotation)
    return TypeAdapter(Annotated[(field.annotation, *field.metadata)])


def _check(kind: str, name: str, value: Any, *, where: str) -> Any:
    """`value` for setting `name`, validated: strictly for the TOML file, where a string is never a number."""
    if name not in Settings.model_fields:
        raise SettingsError(f"{where}: {name}: unknown setting; known settings: {_known()}")
    strict = kind == "file"
    if strict and Settings.model_fields[name].annotation is Path:
        if not isinstance(value, str):
            raise SettingsError(f"{where}: {name}: expected a path in quotes, got {_shown(value)}; "
                                f'write e.g. {name} = "/var/lib/wanserve"')
        strict = False  # a path is written as a string in TOML
    try:
        checked = _adapter(name).validate_python(value, strict=strict)
    except ValidationError as exc:
        error = exc.errors()[0]
        error["loc"] = (name, *error["loc"])
        raise SettingsError(_problem(kind, name, error, where=where)) from None
    for loc, number in bad_numbers(checked, Settings.model_fields[name], (name,)):  # not finite, too large
        raise SettingsError(_problem(kind, name, _out_of_range(loc, number), where=where))
    return checked


def _out_of_range(loc: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A number outside its range (or not finite) as a pydantic error, for _problem."""
    return {"type": "out_of_range", "loc": loc, "input": value, "msg": "out of range"}


# ---------------------------------------------------------------------------------------------- the messages

_MODELS_JSON = '{"wan2.6-t2v": {"engine": "preview"}}'
_EXPECTED = {
    "int": "expected a whole number",
    "float": "expected a number",
    "bool": "expected true or false",
    "string": "expected a string",
    "dict": "expected a table",
    "path": "expected a path",
}


def _problem(kind: str, name: str, error: Any, *, where: str) -> str:
    """One line for one pydantic error about setting `name` that came from `kind` ("file", "env", "flag",
    "init"): where it came from, the key, what is wrong and what to write instead."""
    key = ".".join(str(part) for part in error["loc"]) or name
    where = _env_name(name) if kind == "env" else where
    prefix = f"{where}: " if kind == "env" or kind == "flag" else f"{where}: {key}: "
    value = error.get("input")
    family = error["type"].split("_")[0]
    if error["type"] == "extra_forbidden" and name == "prompt_extend" and len(error["loc"]) > 1:
        known = ", ".join(sorted(PromptExtendSettings.model_fields))
        return f"{where}: {key}: unknown key; known keys: {known}"
    if error["type"] == "extra_forbidden":
        return f"{where}: {key}: unknown setting; known settings: {_known()}"
    if error["type"] == "value_error":  # our own validators say what to write
        return prefix + _one_line(str(error.get("ctx", {}).get("error", error["msg"])))
    if family in _EXPECTED:
        what = _EXPECTED[family]
        if kind == "env" and family == "bool":
            what = "expected 1, true, yes or on, or 0, false, no or off"
        elif kind == "env" and family == "dict":
            what = "expected a JSON object"
        elif kind == "file" and family == "string":
            what = "expected a string in quotes"
        if kind == "file" and isinstance(value, str) and _valid_unquoted(name, value):
            return f"{prefix}{what}, got the string {_shown(value)}; write {name} = {value.strip()} " \
                   "(no quotes)"
        return f"{prefix}{what}, got {_shown(value)}; {_write(kind)} e.g. {_example(kind, name)}"
    ranged = ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number",
              "out_of_range")
    info = field_at(Settings, tuple(error["loc"])) if error["type"] in ranged else None
    if info is not None:  # the whole allowed range, whichever end was crossed
        return (f"{prefix}must be {checks.range_text(info)}, got {_shown(value)}; "
                f"{_write(kind)} e.g. {_example(kind, name, tuple(error['loc']))}")
    return (f"{prefix}{_one_line(error['msg'])}, got {_shown(value)}; "
            f"{_write(kind)} e.g. {_example(kind, name)}")


def _env_source_problem(exc: Exception) -> str:
    """pydantic-settings' own error: a complex value (`models`) in the environment that is not JSON."""
    match = re.search(r'field "([^"]+)"', str(exc))
    name = match.group(1) if match else "models"
    example = f"{ENV_PREFIX}{name.upper()}='{_MODELS_JSON}'"
    return f"{_env_name(name)}: not valid JSON; set a JSON object, e.g. {example}"


def _valid_unquoted(name: str, text: str) -> bool:
    """Whether a quoted TOML string would be a valid value for `name` without its quotes ("30" for 30)."""
    try:
        _adapter(name).validate_python(tomllib.loads(f"v = {text.strip()}")["v"], strict=True)
    except (tomllib.TOMLDecodeError, ValidationError):
        return False
    return True


def _known() -> str:
    return ", ".join(sorted(Settings.model_fields))


def _write(kind: str) -> str:
    return {"file": "write", "env": "set", "flag": "use"}.get(kind, "pass")


def _example(kind: str, name: str, loc: tuple[Any, ...] = ()) -> str:
    nested = field_at(Settings, loc) if len(loc) > 1 else None
    if nested is not None:  # a key of a table: [quotas], [prompt_extend]
        text = _toml(nested.get_default(call_default_factory=True))
        return f"{loc[-1]} = {text} in [{'.'.join(str(p) for p in loc[:-1])}]" if kind == "file" else \
            f"{ENV_PREFIX}{name.upper()}='{{\"{loc[-1]}\": {text}}}'"
    if name == "prompt_extend":
        if kind == "file":
            return ('[prompt_extend] with backend = "openai", base_url = "http://127.0.0.1:8001/v1", '
                    'model = "m"')
        text = '{"backend": "openai", "base_url": "http://127.0.0.1:8001/v1", "model": "m"}'
        return f"{ENV_PREFIX}PROMPT_EXTEND='{text}'" if kind == "env" else f"{name}={text}"
    value = Settings.model_fields[name].get_default(call_default_factory=True)
    if isinstance(value, list):  # allowed_hosts, worker_models
        value = ["wan2.2-t2v-plus", "wan2.6-t2v"] if name == "worker_models" else ["api.example.com",
                                                                                  "localhost:8000"]
    if kind == "file":
        if isinstance(value, dict):
            return f'a [{name}."wan2.6-t2v"] table with engine = "preview"'
        return f"{name} = {_toml(value)}"
    if kind == "env":
        text = f"'{_MODELS_JSON}'" if isinstance(value, dict) else _plain(value)
        return f"{ENV_PREFIX}{name.upper()}={text}"
    if kind == "flag":
        return f"--{name.replace('_', '-')} {_plain(value)}"
    return f"{name}={value!r}"
