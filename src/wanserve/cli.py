"""The `wanserve` command: serve, worker, keys, models, sweep."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import textwrap
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when needed: the signal handlers are installed before anything slow
    from .config import Settings


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="where the database and files live (default ./wanserve-data)")
    p.add_argument("--config", help="TOML settings file")
    p.add_argument("--database-url",
                   help="SQLAlchemy URL, e.g. postgresql+psycopg://host/db (default: SQLite)")


class _CannotStart(Exception):
    """A problem that stops a command before it starts; main prints it as one line and exits 2."""


class _Stopped(BaseException):
    """Raised in the main thread by the first SIGINT/SIGTERM while a command is still starting."""


class _StopSignals:
    """SIGINT/SIGTERM handlers, installed first thing by the long-running commands. While the command
    starts, the first signal raises _Stopped in the main thread: the command closes what it opened and exits
    0. Once `started()`, a signal only sets `stop` (and calls `on_stop`): the command lets running tasks
    finish within `shutdown_grace_seconds`, hands back the rest and exits 0; a further signal (`on_repeat`)
    cuts the grace period short."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self._starting = True
        self._on_stop: Callable[[], None] | None = None
        self._on_repeat: Callable[[], None] | None = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def started(self, on_stop: Callable[[], None] | None = None) -> None:
        self._on_stop = on_stop
        self._starting = False

    def on_repeat(self, callback: Callable[[], None]) -> None:
        """Also call `callback` for every signal after the first (e.g. to cut a grace period short)."""
        self._on_repeat = callback

    def _handle(self, signum: int, frame: Any) -> None:
        repeated = self.stop.is_set()
        self.stop.set()
        if self._on_stop is not None:
            self._on_stop()
        if repeated and self._on_repeat is not None:
            self._on_repeat()
        if self._starting:
            self._starting = False  # a second signal, while the first unwinds, only sets `stop`
            raise _Stopped


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    from .config import SettingsError, load_settings

    try:
        return load_settings(args.config, data_dir=args.data_dir, database_url=args.database_url, **extra)
    except SettingsError as exc:
        raise _CannotStart(str(exc)) from None


def _logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _engines(settings: Settings, services: Any) -> Any:
    """Load every configured engine now, so a bad checkpoint stops the start, not the first task."""
    from .engines import EngineSet

    try:
        return EngineSet(settings.models)
    except ValueError as exc:  # EngineConfigError names the model and the path
        print(f"wanserve: cannot start: {exc}", file=sys.stderr, flush=True)
        services.close()
        return None


def cmd_serve(args: argparse.Namespace) -> int:
    signals = _StopSignals()  # first: a signal during start-up exits 0; uvicorn takes them over once serving
    services = None
    try:
        from .api.app import create_app
        from .api.server import build_server
        from .services import Services
        from .worker.runner import run_workers

        settings = _settings(args, host=args.host, port=args.port, workers=args.workers,
                             lease_seconds=args.lease_seconds)
        _logging(settings)
        services = Services.open(settings)
        engines = _engines(settings, services)
        if engines is None:
            return 2
        server = build_server(create_app(services), settings)  # bounded: api/server.py, docs/deploy.md
        signals.started(on_stop=lambda: setattr(server, "should_exit", True))
    except _Stopped:
        if services is not None:
            services.close()
        return 0
    stop = signals.stop
    pool = run_workers(services, engines, settings.workers, stop)
    signals.on_repeat(pool.hurry)
    threading.Thread(target=services.run_sweeper, args=(stop,), daemon=True, name="sweeper").start()
    base = f"http://{settings.host}:{settings.port}/api/v1"
    print(f"wanserve: serving on {base}  (data: {settings.data_dir.resolve()}, workers: {settings.workers}, "
          "engine: preview unless configured)", flush=True)
    if settings.api_key:
        print("wanserve: accepting the bootstrap key (WANSERVE_API_KEY or api_key in the config file)",
              flush=True)
    else:
        print(f"wanserve: create an API key with: wanserve keys create --data-dir {settings.data_dir}",
              flush=True)
    print(f"wanserve: point the SDK here with: export DASHSCOPE_HTTP_BASE_URL={base}", flush=True)
    try:
        server.run()  # returns once a signal set should_exit: no new connections, open requests answered
    finally:
        stop.set()
        # running tasks finish within the grace period, the rest are handed back (attempt not counted)
        pool.shutdown(settings.shutdown_grace_seconds)
        services.close()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    signals = _StopSignals()  # first: a signal during start-up exits 0; once running, tasks finish or go back
    services = None
    try:
        from .services import Services
        from .worker.runner import run_workers

        settings = _settings(args, workers=args.workers, lease_seconds=args.lease_seconds)
        _logging(settings)
        services = Services.open(settings)
        engines = _engines(settings, services)
        if engines is None:
            return 2
        signals.started()
    except _Stopped:
        if services is not None:
            services.close()
        return 0
    pool = run_workers(services, engines, settings.workers, signals.stop)
    signals.on_repeat(pool.hurry)
    print(f"wanserve: {settings.workers} worker(s) on {settings.db_url}", flush=True)
    while not signals.stop.wait(0.5):
        pass
    # running tasks finish within the grace period, the rest are handed back (attempt not counted)
    pool.shutdown(settings.shutdown_grace_seconds)
    services.close()
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from .accounts.keys import create_key, list_keys, revoke_key
    from .services import Services

    services = Services.open(_settings(args))
    if args.action == "create":
        key_id, key = create_key(services.db, args.account)
        print(key)
        print(f"(key id {key_id}, account {args.account}; shown once, stored hashed)", file=sys.stderr)
    elif args.action == "list":
        for row in list_keys(services.db):
            state = "revoked" if row["revoked_ms"] else "active"
            print(f"{row['id']}  {row['account_id']:<16} {row['prefix']}…  {state}")
    else:
        if not args.key_id:
            print("usage: wanserve keys revoke KEY_ID", file=sys.stderr)
            return 2
        if not revoke_key(services.db, args.key_id):
            print(f"no active key {args.key_id}", file=sys.stderr)
            return 1
        print(f"revoked {args.key_id}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .catalog.models import MODELS

    print(f"{'model':<22} {'kind':<6} {'endpoint':<17} {'resolutions (default)':<24} "
          f"{'durations (default)':<20} {'audio':<12} {'prompt':>6}")
    for m in MODELS:
        durations = (f"{m.durations[0]}-{m.durations[-1]}" if len(m.durations) > 3
                     else ",".join(map(str, m.durations)))
        res = f"{','.join(m.resolutions)} ({m.default_size or m.default_resolution})"
        aliases = f"  aliases: {', '.join(m.aliases)}" if m.aliases else ""
        print(f"{m.name:<22} {m.kind:<6} {m.endpoint:<17} {res:<24} "
              f"{durations + f' ({m.default_duration})':<20} {m.audio:<12} {m.prompt_max:>6}{aliases}")
    driven = [m.name for m in MODELS if m.audio != "silent"]
    print("\n" + textwrap.fill(
          f"audio: {', '.join(driven)} take the caller's audio (audio_url; wan2.7: driving_audio), which "
          "is muxed into the video, cut or padded to its length; no engine here lip-syncs to it (that needs "
          "an audio-driven checkpoint, Wan2.2-S2V, which diffusers does not ship). Without it they get "
          "generated sound: a configured sound engine, or the preview's placeholder chord "
          "(docs/wan-engine.md, Sound).", width=110, subsequent_indent="  "))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .services import Services
    swept = Services.open(_settings(args)).sweep()
    print(f"removed {swept.tasks} expired tasks, {swept.uploads} expired uploads and {swept.orphans} "
          "orphaned files")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wanserve",
                                     description="Self-hosted, DashScope-compatible Wan video synthesis.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the HTTP API with in-process workers")
    _common(p)
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--workers", type=int, help="in-process workers (default 1)")
    p.add_argument("--lease-seconds", type=float, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="run workers as a separate process on the same database and files")
    _common(p)
    p.add_argument("--workers", type=int, help="worker threads (default 1)")
    p.add_argument("--lease-seconds", type=float, help="how long a task outlives a dead worker (default 30)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("keys", help="manage API keys")
    p.add_argument("action", choices=["create", "list", "revoke"])
    p.add_argument("key_id", nargs="?", help="for revoke: the key id shown by `keys list`")
    p.add_argument("--account", default="default", help="account the new key belongs to (default: default)")
    _common(p)
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("models", help="print the model catalog")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("sweep", help="remove expired tasks, videos and uploads now")
    _common(p)
    p.set_defaults(func=cmd_sweep)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except _CannotStart as exc:  # e.g. a settings problem: one line, no traceback
        print(f"wanserve: cannot start: {exc}", file=sys.stderr, flush=True)
        return 2
    except _Stopped:  # a signal before the command could handle it
        return 0


if __name__ == "__main__":
    sys.exit(main())
