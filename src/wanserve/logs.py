"""How a wanserve process writes its log: plain lines (the default) or one JSON object per line
(`log_format = "json"`), which log shippers (Loki, Elasticsearch, CloudWatch) read without a parsing rule.

A JSON line has time (UTC, ISO 8601), level, logger and message, then every `extra=` field the call gave
(the access log's request_id, method, route, status, latency_ms), and `exception` with the traceback when
there is one. A bottom-layer module (stdlib only) so that every command configures logging the same way.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import IO, Any, Literal

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# the attributes every LogRecord has; anything else on a record came from `extra=`
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime",
                                                                                "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in messages and tracebacks are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def formatter(log_format: LogFormat) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def configure(level: str, log_format: LogFormat = "text", stream: IO[str] | None = None) -> None:
    """The root logger's one handler (stderr unless `stream`), in `log_format`, at `level`. Libraries'
    loggers (uvicorn's included, api/server.py) propagate to it, so every line has the same shape."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter(log_format))
    logging.basicConfig(level=level, handlers=[handler])
