"""The open event streams of one API process (GET /tasks/{id}/events), counted per API key, per account and
in all, so that streams are bounded on their own and never take the capacity plain requests need.

`EventStreams.open()` is asked before a stream starts: None, and the stream is counted until `close()`; or
why not (the key's `max_event_streams_per_key`, the account's `max_event_streams_per_account`, or this
process's `max_event_streams`), which the route answers 429 Throttling with a Retry-After.

The embedded server (api/server.py) reads `count`: a connection carrying a stream does not count against
`max_connections`, so up to `max_event_streams` streams sit on top of the connections GETs and creates use.
"""

from __future__ import annotations

import threading
from collections import Counter

from ..config import Settings

RETRY_AFTER_SECONDS = 5.0  # what a refused stream is told (streams end when their task does)


class EventStreams:
    def __init__(self, total: int, per_account: int, per_key: int) -> None:
        self.total, self.per_account, self.per_key = total, per_account, per_key
        self._lock = threading.Lock()
        self._accounts: Counter[str] = Counter()
        self._keys: Counter[str] = Counter()
        self.count = 0  # streams open now

    @classmethod
    def from_settings(cls, settings: Settings) -> EventStreams:
        return cls(settings.max_event_streams, settings.max_event_streams_per_account,
                   settings.max_event_streams_per_key)

    def open(self, account_id: str, key_id: str) -> str | None:
        """Count a new stream of this key and account: None; or, counting nothing, why it may not open."""
        with self._lock:
            if self._keys[key_id] >= self.per_key:
                return (f"This API key already has {self.per_key} event streams open "
                        "(max_event_streams_per_key); close one, or poll GET /tasks/{task_id} instead.")
            if self._accounts[account_id] >= self.per_account:
                return (f"This account already has {self.per_account} event streams open "
                        "(max_event_streams_per_account); close one, or poll GET /tasks/{task_id} instead.")
            if self.count >= self.total:
                return (f"The server has {self.total} event streams open, its most (max_event_streams); "
                        "poll GET /tasks/{task_id} instead, or try again later.")
            self._keys[key_id] += 1
            self._accounts[account_id] += 1
            self.count += 1
            return None

    def close(self, account_id: str, key_id: str) -> None:
        """A stream counted by `open` has ended."""
        with self._lock:
            for counter, name in ((self._keys, key_id), (self._accounts, account_id)):
                counter[name] -= 1
                if counter[name] <= 0:
                    del counter[name]
            self.count -= 1
