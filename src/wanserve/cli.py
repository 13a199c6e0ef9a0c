"""The `wanserve` command: serve, worker, keys, models, sweep."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Any

from .config import Settings, load_settings


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="where the database and files live (default ./wanserve-data)")
    p.add_argument("--config", help="TOML settings file")
    p.add_argument("--database-url", help="SQLAlchemy URL, e.g. postgresql+psycopg://host/db (default: SQLite)")


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    return load_settings(args.config, data_dir=args.data_dir, database_url=args.database_url, **extra)


def _logging() -> None:
    logging.basicConfig(level=os.environ.get("WANSERVE_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


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
    import uvicorn

    from .api.app import create_app
    from .services import Services
    from .tasks.sweeper import run_sweeper
    from .worker.runner import run_workers

    _logging()
    settings = _settings(args, host=args.host, port=args.port, workers=args.workers,
                         lease_seconds=args.lease_seconds)
    services = Services.open(settings)
    engines = _engines(settings, services)
    if engines is None:
        return 2
    stop = threading.Event()
    run_workers(services, engines, settings.workers, stop)
    threading.Thread(target=run_sweeper, args=(services, stop), daemon=True, name="sweeper").start()
    base = f"http://{settings.host}:{settings.port}/api/v1"
    print(f"wanserve: serving on {base}  (data: {settings.data_dir.resolve()}, workers: {settings.workers}, "
          "engine: preview unless configured)", flush=True)
    if os.environ.get("WANSERVE_API_KEY"):
        print("wanserve: accepting the key in WANSERVE_API_KEY", flush=True)
    else:
        print(f"wanserve: create an API key with: wanserve keys create --data-dir {settings.data_dir}", flush=True)
    print(f"wanserve: point the SDK here with: export DASHSCOPE_HTTP_BASE_URL={base}", flush=True)
    app = create_app(services)
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
    finally:
        stop.set()
        services.close()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from .services import Services
    from .worker.runner import run_workers

    _logging()
    settings = _settings(args, workers=args.workers, lease_seconds=args.lease_seconds)
    services = Services.open(settings)
    engines = _engines(settings, services)
    if engines is None:
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    threads = run_workers(services, engines, settings.workers, stop)
    print(f"wanserve: {settings.workers} worker(s) on {settings.db_url}", flush=True)
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(0.5)
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

    print(f"{'model':<22} {'kind':<6} {'endpoint':<17} {'resolutions (default)':<24} {'durations (default)':<20} "
          f"{'audio':<12} {'prompt':>6}")
    for m in MODELS:
        durations = f"{m.durations[0]}-{m.durations[-1]}" if len(m.durations) > 3 else ",".join(map(str, m.durations))
        res = f"{','.join(m.resolutions)} ({m.default_size or m.default_resolution})"
        print(f"{m.name:<22} {m.kind:<6} {m.endpoint:<17} {res:<24} {durations + f' ({m.default_duration})':<20} "
              f"{m.audio:<12} {m.prompt_max:>6}" + (f"  aliases: {', '.join(m.aliases)}" if m.aliases else ""))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .services import Services
    from .tasks.sweeper import sweep

    n_tasks, n_uploads = sweep(Services.open(_settings(args)))
    print(f"removed {n_tasks} expired tasks and {n_uploads} expired uploads")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wanserve", description="Self-hosted, DashScope-compatible Wan video "
                                     "synthesis.")
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
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
