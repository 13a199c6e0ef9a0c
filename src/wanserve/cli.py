"""The `wanserve` command: serve, worker, keys, models, sweep."""

from __future__ import annotations

import argparse
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
    from .logs import configure

    configure(settings.log_level, settings.log_format)  # text, or one JSON object per line (log_format)


def _metrics_server(args: argparse.Namespace) -> None:
    """`worker --metrics-port`: serve this process's metrics (its tasks' histograms) for Prometheus."""
    if args.metrics_port is None:
        return
    from .metrics import serve_process_metrics

    try:
        serve_process_metrics(args.metrics_port, args.metrics_host)
    except OSError as exc:
        raise _CannotStart(f"--metrics-port {args.metrics_port}: {exc}") from None


def _engines(settings: Settings, services: Any) -> Any:
    """Load every configured engine now, so a bad checkpoint stops the start, not the first task."""
    from .engines import EngineSet

    try:
        return EngineSet(settings.models, serve=settings.worker_models)  # only what this process serves
    except ValueError as exc:  # EngineConfigError names the model and the path
        print(f"wanserve: cannot start: {exc}", file=sys.stderr, flush=True)
        services.close()
        return None


def cmd_serve(args: argparse.Namespace) -> int:
    signals = _StopSignals()  # first: a signal during start-up exits 0; uvicorn takes them over once serving
    services = None
    try:
        settings = _settings(args, host=args.host, port=args.port, workers=args.workers,
                             lease_seconds=args.lease_seconds, worker_models=args.worker_models)
        listener = _bind(settings.host, settings.port)  # first (before the slow imports): a busy port is said
        from .api.app import create_app
        from .api.server import build_server
        from .services import Services
        from .worker.runner import run_workers

        _logging(settings)
        services = Services.open(settings)
        engines = _engines(settings, services)
        if engines is None:
            return 2
        app = create_app(services)
        server = build_server(app, settings)  # bounded: api/server.py, docs/deploy.md
        app.state.stopping = lambda: server.should_exit  # open event streams (tasks/{id}/events) end then
        signals.started(on_stop=lambda: setattr(server, "should_exit", True))
    except _Stopped:
        if services is not None:
            services.close()
        return 0
    stop = signals.stop

    def workers_failed(why: str) -> None:  # worker threads kept dying: accept no more work, exit 1
        print(f"wanserve: stopping: {why}", file=sys.stderr, flush=True)
        server.should_exit = True

    pool = run_workers(services, engines, settings.workers, stop, on_fatal=workers_failed)
    signals.on_repeat(pool.hurry)
    threading.Thread(target=services.run_sweeper, args=(stop,), daemon=True, name="sweeper").start()
    from .api.dashscope.webhooks import run_deliverer  # ended tasks' webhooks (docs/webhooks.md)
    threading.Thread(target=run_deliverer, args=(services, stop), daemon=True, name="webhooks").start()
    listener.listen(settings.backlog)  # bound and listening: connections queue until uvicorn accepts them
    base = f"http://{settings.host}:{listener.getsockname()[1]}/api/v1"
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
        # serves the socket bound first; returns once a signal set should_exit: no new connections, open
        # requests answered
        server.run(sockets=[listener])
    finally:
        stop.set()
        # running tasks finish within the grace period, the rest are handed back (attempt not counted)
        pool.shutdown(settings.shutdown_grace_seconds)
        services.close()
    return 1 if pool.failed else 0


def _rank_argv(args: argparse.Namespace) -> list[str]:
    """The `worker` arguments each rank of `worker --gpus` gets (all but --gpus and --workers)."""
    argv: list[str] = []
    for flag, value in (("--data-dir", args.data_dir), ("--config", args.config),
                        ("--database-url", args.database_url), ("--models", getattr(args, "models", None)),
                        ("--lease-seconds", args.lease_seconds), ("--metrics-port", args.metrics_port),
                        ("--metrics-host", args.metrics_host)):
        if value is not None:
            argv += [flag, str(value)]
    return argv


def _launch_ranks(args: argparse.Namespace) -> int:
    """`worker --gpus 0,1,...`: one rank process per GPU, supervised (worker/distributed.py)."""
    from .config import inherited_environment
    from .worker.distributed import launch_ranks, parse_gpus

    settings = _settings(args)
    _logging(settings)
    try:
        gpus = parse_gpus(args.gpus)
    except ValueError as exc:
        raise _CannotStart(str(exc)) from None
    return launch_ranks(gpus, _rank_argv(args), inherited_environment(),
                        stop_seconds=settings.dist_stop_seconds)


def _worker_rank(args: argparse.Namespace, env: Any) -> int:
    """One rank of a multi-GPU worker (torchrun, or `worker --gpus`): join the group before the engines
    load (the wan engine sets up context parallelism over it); rank 0 claims and records with one worker,
    the others render in step with it (worker/distributed.py)."""
    signals = _StopSignals()
    services, group = None, None
    try:
        from .services import Services
        from .worker.distributed import RankGroup, follow, run_leader, tick_seconds
        from .worker.runner import run_workers

        settings = _settings(args, workers=1, lease_seconds=args.lease_seconds,
                             worker_models=getattr(args, "models", None))
        _logging(settings)
        group = RankGroup.init(env, settings.dist_timeout_seconds)
        if group.leader:
            _metrics_server(args)
        services = Services.open(settings)
        engines = _engines(settings, services)
        if engines is None:
            group.close()
            return 2
        signals.started()
    except _Stopped:
        if services is not None:
            services.close()
        if group is not None:
            group.close()
        return 0
    pipeline = services.pipeline(engines)
    if not group.leader:  # signals are rank 0's business: it hands back the task, then says stop
        code = follow(group, pipeline)
    else:
        print(f"wanserve: a {group.world_size}-GPU worker on {settings.db_url}", flush=True)
        code = run_leader(lambda leader: run_workers(services, engines, 1, signals.stop, pipeline=leader),
                          pipeline, group, signals.stop, grace_seconds=settings.shutdown_grace_seconds,
                          tick_s=tick_seconds(settings.dist_timeout_seconds))
    services.close()
    if code == 0:
        group.close()
    return code


def cmd_worker(args: argparse.Namespace) -> int:
    if getattr(args, "gpus", None):  # multi-GPU tasks: this process launches and supervises the ranks
        return _launch_ranks(args)
    from .config import distributed_env

    env = distributed_env()
    if env is not None:  # started as one rank of several (torchrun, or by `worker --gpus`)
        return _worker_rank(args, env)
    signals = _StopSignals()  # first: a signal during start-up exits 0; once running, tasks finish or go back
    services = None
    try:
        from .services import Services
        from .worker.runner import run_workers

        settings = _settings(args, workers=args.workers, lease_seconds=args.lease_seconds,
                             worker_models=args.models)
        _logging(settings)
        _metrics_server(args)
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
    print(f"wanserve: {settings.workers} worker(s) on {settings.db_url}, serving "
          f"{', '.join(engines.served_models())}", flush=True)
    while not signals.stop.wait(0.5):  # also set when the worker threads kept dying (pool.failed)
        pass
    # running tasks finish within the grace period, the rest are handed back (attempt not counted)
    pool.shutdown(settings.shutdown_grace_seconds)
    services.close()
    return 1 if pool.failed else 0


def cmd_keys(args: argparse.Namespace) -> int:
    from .accounts.keys import create_key, list_keys, revoke_key
    from .services import Services

    services = Services.open(_settings(args))
    if args.action == "create":
        key_id, key = create_key(services.db, args.account)
        print(key)
        print(f"(key id {key_id}, account {args.account}; shown once, stored hashed)", file=sys.stderr)
    elif args.action in ("callback", "webhook-secret"):
        return _keys_webhook(args, services)
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


def _keys_webhook(args: argparse.Namespace, services: Any) -> int:
    """`keys callback KEY_ID URL|--clear` and `keys webhook-secret [--account A]`: both print the account's
    webhook signing secret, which receivers need to check X-Wanserve-Signature (docs/webhooks.md)."""
    from .accounts.callbacks import set_key_callback, webhook_secret
    from .api.dashscope.webhooks import check_callback_url
    from .errors import ServiceError

    account = args.account
    if args.action == "callback":
        if not args.key_id or bool(args.url) == args.clear:
            print("usage: wanserve keys callback KEY_ID URL  (or KEY_ID --clear)", file=sys.stderr)
            return 2
        try:  # the create endpoints' own check, so a default that would be refused is refused now
            if args.url:
                check_callback_url(args.url, field="URL",
                                   allow_private=services.settings.allow_private_media_urls)
        except ServiceError as exc:
            print(f"wanserve: {exc.message}", file=sys.stderr)
            return 2
        account = set_key_callback(services.db, args.key_id, args.url or None)
        if account is None:
            print(f"no active key {args.key_id}", file=sys.stderr)
            return 1
        where = f"webhooks go to {args.url}" if args.url else "no default webhook URL"
        print(f"key {args.key_id}: {where}", file=sys.stderr)
    print(webhook_secret(services.settings.secret(), account))
    print(f"(the webhook signing secret of account {account})", file=sys.stderr)
    return 0


def cmd_workers(args: argparse.Namespace) -> int:
    """The worker registry, oldest first: who serves what, what each runs, and whether it still beats."""
    from datetime import datetime

    from .services import Services
    from .tasks.db import now_ms

    services = Services.open(_settings(args))
    try:
        registry, now = services.workers, now_ms()
        rows = registry.all()
    finally:
        services.close()
    if not rows:
        print("no workers registered (start one with: wanserve worker --config ...)", file=sys.stderr)
        return 0

    def when(ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")

    print(f"{'worker':<34} {'host':<16} {'pid':>7}  {'models':<28} {'gpus':<6} {'state':<8} {'task':<36} "
          f"{'started':<19}  {'last seen':<12} live")
    for w in rows:
        live = now - w["last_seen_ms"] < registry.live_ms
        seen = f"{(now - w['last_seen_ms']) / 1000:.0f} s ago"
        models, gpus, task = ",".join(w["models"]), w["gpus"] or "-", w["task_id"] or "-"
        print(f"{w['id']:<34} {w['host']:<16} {w['pid']:>7}  {models:<28} {gpus:<6} {w['state']:<8} "
              f"{task:<36} {when(w['started_ms']):<19}  {seen:<12} {'live' if live else 'dead'}")
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
          "orphaned or partial files")
    return 0


def _bind(host: str, port: int) -> Any:
    """A socket bound to host:port (SO_REUSEADDR, as uvicorn binds), which `serve` then serves on: binding
    before anything opens means a busy port is said at once, in one line, and "serving on" is only printed
    for a port that is really ours."""
    import errno
    import socket

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise _CannotStart(f"port {port} on {host} is already in use; stop the other server or pass "
                               "--port") from None
        raise _CannotStart(f"cannot listen on {host} port {port}: {exc.strerror or exc}; check --host and "
                           "--port") from None
    sock.set_inheritable(True)
    return sock


# ------------------------------------------------------------------ the client commands (wanserve.client)


def _connection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-url", help="the API root, e.g. http://127.0.0.1:8000/api/v1 "
                                      "(default: DASHSCOPE_HTTP_BASE_URL, else http://127.0.0.1:8000/api/v1)")
    p.add_argument("--api-key", help="the API key (default: DASHSCOPE_API_KEY)")
    p.add_argument("--poll-seconds", type=float, default=1.0, help=argparse.SUPPRESS)


def _client(args: argparse.Namespace) -> Any:
    from .client import DEFAULT_BASE_URL, Client, ClientError
    from .config import client_environment

    env_url, env_key = client_environment()
    key = args.api_key or env_key
    if not key:
        raise ClientError("--api-key", "no API key; pass --api-key or set DASHSCOPE_API_KEY (a local server "
                                       "makes one with: wanserve keys create)")
    return Client(args.base_url or env_url or DEFAULT_BASE_URL, key)


def _watch(client: Any, task_id: str, every: float) -> dict[str, Any]:
    """Poll the task until it ends, with a progress bar (percent and the server's ETA) on stderr."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    def clock(seconds: float | None) -> str:
        return "-:--" if seconds is None else f"{int(seconds) // 60}:{int(seconds) % 60:02d}"

    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
               TextColumn("ETA {task.fields[eta]}"), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        row = bar.add_task(f"{task_id} PENDING", total=100, eta="-:--")

        def update(out: dict[str, Any]) -> None:
            status, progress = out.get("task_status", "?"), out.get("progress") or {}
            done = 100.0 if status == "SUCCEEDED" else progress.get("percent")
            eta = 0 if status == "SUCCEEDED" else progress.get("eta_seconds")
            bar.update(row, description=f"{task_id} {status}", eta=clock(eta),
                       **({"completed": done} if done is not None else {}))

        return client.wait(task_id, update, every=every)


def _ended_badly(out: dict[str, Any]) -> int:
    """A task that did not succeed: its code and message, one line; exit status 1."""
    why = f": {out.get('code')}: {out.get('message')}" if out.get("code") else ""
    print(f"wanserve: task {out.get('task_id')} {out.get('task_status')}{why}", file=sys.stderr, flush=True)
    return 1


def cmd_generate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .client import ClientError, Generation

    params = {"size": args.size, "resolution": args.resolution, "duration": args.duration, "seed": args.seed,
              "watermark": args.watermark, "prompt_extend": args.prompt_extend, "shot_type": args.shot_type}
    gen = Generation(args.model, args.prompt, args.negative_prompt, args.image, args.last_frame, args.audio,
                     args.template, {k: v for k, v in params.items() if v is not None})
    task_id = None
    try:
        if args.output and not Path(args.output).parent.is_dir():  # refused before a task is made for it
            raise ClientError("-o", f"{Path(args.output).parent}: no such folder")
        with _client(args) as client:
            task_id = client.create(gen)
            out = _watch(client, task_id, args.poll_seconds)
            if out.get("task_status") != "SUCCEEDED":
                return _ended_badly(out)
            dest = client.download(out["video_url"], Path(args.output or f"{task_id}.mp4"))
    except ClientError as exc:
        print(f"wanserve: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        if task_id:
            print(f"wanserve: stopped watching; task {task_id} goes on (wanserve tasks cancel {task_id})",
                  file=sys.stderr)
        return 130
    print(dest)
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    import json
    from datetime import datetime

    from .client import ClientError

    try:
        with _client(args) as client:
            if args.action == "show":
                print(json.dumps(client.task(args.task_id), indent=2, ensure_ascii=False))
            elif args.action == "cancel":
                client.cancel(args.task_id)
                print(f"canceled {args.task_id}")
            elif args.action == "watch":
                out = _watch(client, args.task_id, args.poll_seconds)
                if out.get("task_status") != "SUCCEEDED":
                    return _ended_badly(out)
                print(out.get("video_url", ""))
            else:
                page = client.tasks(status=args.status, model=args.model, page=args.page)
                for item in page.get("data") or []:
                    when = datetime.fromtimestamp(item["gmt_create"] / 1000).strftime("%Y-%m-%d %H:%M:%S")
                    print(f"{item['task_id']}  {item['status']:<9} {item['model_name']:<22} {when}")
                print(f"page {page.get('page_no')} of {max(1, page.get('total_page') or 0)} "
                      f"({page.get('total')} tasks)", file=sys.stderr)
    except ClientError as exc:
        print(f"wanserve: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


def _client_parsers(sub: Any) -> None:
    """`generate` and `tasks`: the client commands, for any server speaking the DashScope API."""
    p = sub.add_parser("generate", help="make a video through the API of a running server, and download it")
    p.add_argument("--model", required=True, help="a model of `wanserve models`, e.g. wan2.6-t2v")
    p.add_argument("--prompt")
    p.add_argument("--negative-prompt")
    p.add_argument("--image", help="the first frame: a file (uploaded) or a URL")
    p.add_argument("--last-frame", help="the last frame (kf2v models, wan2.7-i2v): a file or a URL")
    p.add_argument("--audio", help="the soundtrack (models with audio): a file or a URL")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--size", help="text-to-video: width*height, e.g. 1280*720")
    size.add_argument("--resolution", help="image-driven models: 480P, 720P or 1080P")
    p.add_argument("--duration", type=int, help="seconds")
    p.add_argument("--seed", type=int)
    p.add_argument("--watermark", action=argparse.BooleanOptionalAction)
    p.add_argument("--prompt-extend", action=argparse.BooleanOptionalAction)
    p.add_argument("--shot-type", choices=["single", "multi"])
    p.add_argument("--template", help="an effect template (wanx2.1 i2v and kf2v models)")
    p.add_argument("-o", "--output", help="where to write the video (default: <task_id>.mp4)")
    _connection(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("tasks", help="list, show, cancel or watch tasks on a running server")
    actions = p.add_subparsers(dest="action", required=True)
    q = actions.add_parser("list", help="your tasks, newest first")
    q.add_argument("--status", help="PENDING, RUNNING, SUCCEEDED, FAILED or CANCELED")
    q.add_argument("--model")
    q.add_argument("--page", type=int, default=1)
    _connection(q)
    for action, text in (("show", "the task as JSON"), ("cancel", "cancel a pending or running task"),
                         ("watch", "a progress bar until the task ends")):
        q = actions.add_parser(action, help=text)
        q.add_argument("task_id")
        _connection(q)
    p.set_defaults(func=cmd_tasks)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("wanserve")
    except PackageNotFoundError:  # running from a source tree that is not installed
        from . import __version__
        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wanserve",
                                     description="Self-hosted, DashScope-compatible Wan video synthesis.")
    parser.add_argument("--version", action="version", version=f"wanserve {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the HTTP API with in-process workers")
    _common(p)
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--workers", type=int, help="in-process workers (default 1)")
    p.add_argument("--worker-models", help="the models the in-process workers serve, comma-separated "
                                           "(default: every configured model; see `worker --models`)")
    p.add_argument("--lease-seconds", type=float, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="run workers as a separate process on the same database and files")
    _common(p)
    p.add_argument("--workers", type=int, help="worker threads (default 1)")
    p.add_argument("--models", help="the models this process serves and claims, comma-separated names or "
                                    "aliases among the configured ones (default: all of them; every model "
                                    "when [models] is empty)")
    p.add_argument("--lease-seconds", type=float, help="how long a task outlives a dead worker (default 30)")
    p.add_argument("--gpus", help="multi-GPU tasks: run one worker over these GPUs, e.g. 0,1,2,3 (one rank "
                                  "process each; docs/deploy.md \"Multi-GPU tasks\")")
    p.add_argument("--metrics-port", type=int, help="serve this process's Prometheus metrics on this port")
    p.add_argument("--metrics-host", default="127.0.0.1",
                   help="the address --metrics-port listens on (default 127.0.0.1; 0.0.0.0: every interface)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("keys", help="manage API keys")
    p.add_argument("action", choices=["create", "list", "revoke", "callback", "webhook-secret"])
    p.add_argument("key_id", nargs="?", help="for revoke, callback: the key id shown by `keys list`")
    p.add_argument("url", nargs="?", help="for callback: the key's default webhook URL (docs/webhooks.md)")
    p.add_argument("--clear", action="store_true", help="for callback: remove the key's default webhook URL")
    p.add_argument("--account", default="default", help="account the new key belongs to (default: default)")
    _common(p)
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("workers", help="list the worker processes registered in the database")
    _common(p)
    p.set_defaults(func=cmd_workers)

    p = sub.add_parser("models", help="print the model catalog")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser(
        "sweep", help="remove expired tasks, videos and uploads now, and orphaned or partial files",
        description="One sweep, as the API's sweeper runs every sweep_seconds: tasks and their videos 24 h "
                    "after they end, uploads after 48 h, result files no task refers to (no task row, or an "
                    "ended task's unpublished attempts), temp files in THIS data dir's partial/ of tasks "
                    "not RUNNING, with S3 the bucket's unfinished multipart uploads of such tasks, and "
                    "worker rows not heard from for an hour. A worker with its own data dir sweeps that "
                    "folder's temp files itself, at start and every sweep_seconds.")
    _common(p)
    p.set_defaults(func=cmd_sweep)

    _client_parsers(sub)
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
