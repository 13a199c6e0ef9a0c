"""Multi-GPU tasks: one worker spanning several GPUs (ranks) of one machine, one task at a time.

Rank 0 is an ordinary `Worker` (claim, keeper, progress, succeed/fail, registry) whose pipeline is a
`LeaderPipeline`; every other rank runs `follow()`. They talk over one gloo process group (`RankGroup`,
CPU tensors, every collective bounded by `dist_timeout_seconds`), apart from whatever the engine uses
for the denoising itself (diffusers' context parallelism on the default group: NCCL on GPUs).

A task, as the ranks see it:

1. rank 0 broadcasts ("task", {id, attempt, request}) then runs the generation pipeline. The pipeline
   fetches and plans on rank 0 only, then calls `ctx.share(model, job, clip)`: rank 0 broadcasts the
   planned RenderJob, so every rank renders exactly the same job (a rewritten prompt, fetched frames and
   all) without fetching or rewriting again. A task that ends before rendering broadcasts ("skip",).
2. every rank renders (`GenerationPipeline.follow` on the others; their frames are dropped, rank 0
   encodes and stores). Each progress report after the share is a collective on every rank: an
   all-reduce of a flag (`agree`), STEP while a rank is still rendering. Rank 0's keeper raising there
   (canceled, lease lost, shutting down) makes rank 0 leave; the others see it at the same step and stop.
3. the end: each rank, once out of its render (done, stopped or failed), "leaves": it repeats
   agree(LEFT or FAILED) until every rank has left, so ranks that stopped at different points still pair
   their collectives and the group is in step for the next task.

Failure: a collective that errors or times out (a rank died: gloo reports "connection closed" at once;
a rank hung: the timeout) raises `GroupBroken`. On rank 0 the task fails InternalError with that message
and the process stops claiming and exits non-zero; on the others the process exits non-zero. The
launcher (`launch_ranks`, `worker --gpus`) or torchrun then tears the group down, which frees the GPUs;
a supervisor (systemd, Kubernetes) restarts it. Between tasks rank 0 broadcasts ("tick",) every few
seconds so that an idle follower's wait is bounded too, and ("stop",) as the worker shuts down (after
the running task, if any, was handed back as in a one-GPU worker).

torch is imported only here, lazily: the base install never needs it.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..config import DistributedEnv
from ..errors import Code, ServiceError

log = logging.getLogger("wanserve.worker.distributed")

STEP, LEFT, FAILED = 0, 1, 2  # a rank's flag in `agree`: rendering, out of its render, out of it by an error


class GroupBroken(ServiceError):
    """A collective of the ranks failed or timed out: a rank died or hangs. The task fails with this
    (InternalError); the process must exit, so that the group is torn down and restarted."""

    def __init__(self, detail: str) -> None:
        super().__init__(Code.INTERNAL, "inference internal error: a GPU rank of this multi-GPU worker "
                                        f"stopped responding ({detail}); the worker restarts.")


class Stopped(Exception):
    """A follower's render stops: rank 0 (or another rank) left the render at this step."""


class RankGroup:
    """This process's rank in the group, and the two collectives the orchestration needs."""

    def __init__(self, rank: int, world_size: int, group: Any) -> None:
        self.rank, self.world_size, self.group = rank, world_size, group

    @classmethod
    def init(cls, env: DistributedEnv, timeout_s: float) -> RankGroup:
        """Join the process group (its default backend also serves the engine: NCCL where there are GPUs)
        and open the orchestration's own gloo group. With GPUs, this rank's GPU is LOCAL_RANK among those
        visible (`worker --gpus` makes exactly one visible per rank)."""
        import torch
        import torch.distributed as dist

        timeout = datetime.timedelta(seconds=timeout_s)
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
        dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo",
                                init_method=f"tcp://{env.master_addr}:{env.master_port}",
                                rank=env.rank, world_size=env.world_size, timeout=timeout)
        group = dist.new_group(backend="gloo", timeout=timeout)
        log.info("rank %d of %d joined (%s)", env.rank, env.world_size,
                 f"cuda:{torch.cuda.current_device()}" if cuda else "cpu")
        return cls(env.rank, env.world_size, group)

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj: Any = None) -> Any:
        """Rank 0's `obj`, on every rank (the others pass nothing)."""
        import torch.distributed as dist

        box = [obj]
        try:
            dist.broadcast_object_list(box, src=0, group=self.group)
        except Exception as exc:  # noqa: BLE001 - DistBackendError, RuntimeError: the group is gone
            raise GroupBroken(_detail(exc)) from exc
        return box[0]

    def agree(self, flag: int) -> tuple[int, int]:
        """(max, min) of every rank's flag: one all-reduce of a two-element tensor."""
        import torch
        import torch.distributed as dist

        t = torch.tensor([flag, -flag], dtype=torch.int64)
        try:
            dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        except Exception as exc:  # noqa: BLE001
            raise GroupBroken(_detail(exc)) from exc
        return int(t[0]), -int(t[1])

    def leave(self, flag: int) -> int:
        """Agree `flag` (LEFT or FAILED) until every rank has left its render; the highest flag seen."""
        worst = flag
        while True:
            high, low = self.agree(flag)
            worst = max(worst, high)
            if low >= LEFT:
                return worst

    def close(self) -> None:
        import torch.distributed as dist

        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def _detail(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


# -- rank 0 ------------------------------------------------------------------------------------------


class LeaderContext:
    """Rank 0's TaskContext: the keeper's, plus the share of the planned job and a collective at every
    progress report after it."""

    def __init__(self, inner: Any, group: RankGroup) -> None:
        self.inner, self.group = inner, group
        self.shared = False

    def check(self) -> None:
        self.inner.check()

    def share(self, model: str, job: Any, clip: Any) -> None:
        self.group.broadcast(("render", model, job, clip))
        self.shared = True

    def progress(self, done: int, total: int) -> None:
        self.inner.progress(done, total)  # raising: rank 0 leaves; the others see it at this step
        if self.shared:
            high, _ = self.group.agree(STEP)
            if high != STEP:
                raise ServiceError(Code.INTERNAL_ALGO, "inference internal error: another GPU rank of this "
                                   "multi-GPU worker failed while rendering (see its log).")


class LeaderPipeline:
    """Rank 0's pipeline: the generation pipeline run in step with the other ranks (see the module)."""

    def __init__(self, pipeline: Any, group: RankGroup, tick_s: float) -> None:
        self.pipeline, self.group, self.tick_s = pipeline, group, tick_s
        self.channel = threading.Lock()  # one message at a time: a task's, a tick, the stop
        self.broken = threading.Event()  # set: the group is gone; stop claiming and exit non-zero
        self.on_broken: Callable[[], None] = lambda: None
        self._closed = threading.Event()
        self._ticker = threading.Thread(target=self._tick, daemon=True, name="rank-ticker")

    def start(self) -> None:
        self._ticker.start()

    def __call__(self, task_id: str, account_id: str, req: Any, ctx: Any, *, attempt: int) -> dict[str, Any]:
        with self.channel:
            if self.broken.is_set():
                raise GroupBroken("the group broke before this task")
            lctx = LeaderContext(ctx, self.group)
            try:
                self.group.broadcast(("task", {"id": task_id, "attempt": attempt,
                                               "request": req.model_dump(mode="json")}))
                failed = True
                try:
                    facts = self.pipeline(task_id, account_id, req, lctx, attempt=attempt)
                    failed = False
                    return facts
                except GroupBroken:  # the group is gone: no closing collective (it would wait its timeout)
                    self._broke()
                    raise
                finally:
                    if not self.broken.is_set():
                        self._end(lctx, failed)
            except GroupBroken:
                self._broke()
                raise

    def _end(self, lctx: LeaderContext, failed: bool) -> None:
        if not lctx.shared:
            self.group.broadcast(("skip",))
        elif self.group.leave(FAILED if failed else LEFT) == FAILED and not failed:
            log.warning("a rank failed at the end of a task whose result rank 0 completed")

    def discard(self, task_id: str, attempt: int) -> None:
        self.pipeline.discard(task_id, attempt)

    def _broke(self) -> None:
        if not self.broken.is_set():
            log.error("the rank group is broken; this worker stops claiming and exits")
            self.broken.set()
            self.on_broken()

    def _tick(self) -> None:
        while not self._closed.wait(self.tick_s):
            if not self.channel.acquire(timeout=self.tick_s):
                continue  # a task holds the channel; its own collectives keep the others waiting bounded
            try:
                if self._closed.is_set() or self.broken.is_set():
                    return
                self.group.broadcast(("tick",))
            except GroupBroken:
                self._broke()
                return
            finally:
                self.channel.release()

    def close(self) -> None:
        """Tell the other ranks to exit (after the pool has stopped)."""
        self._closed.set()
        with self.channel:
            if not self.broken.is_set():
                try:
                    self.group.broadcast(("stop",))
                except GroupBroken:
                    self.broken.set()


# -- the other ranks ---------------------------------------------------------------------------------


class FollowerContext:
    """A follower's TaskContext: every progress report is the step's collective."""

    def __init__(self, group: RankGroup) -> None:
        self.group = group

    def check(self) -> None:
        return None

    def progress(self, done: int, total: int) -> None:
        high, _ = self.group.agree(STEP)
        if high != STEP:
            raise Stopped


def follow(group: RankGroup, pipeline: Any) -> int:
    """A follower rank's loop: render each task's job in step with rank 0 until it says stop (0) or the
    group breaks (1). Signals are left to rank 0, which hands the running task back and then says stop."""
    while True:
        try:
            message = group.broadcast()
            kind = message[0]
            if kind == "stop":
                log.info("rank %d: stop", group.rank)
                return 0
            if kind != "task":
                continue  # a tick
            task = message[1]
            render = group.broadcast()
            if render[0] != "render":
                continue  # the task ended on rank 0 before rendering
            log.info("rank %d: task %s attempt %d", group.rank, task["id"], task["attempt"])
            flag = LEFT
            try:
                _, model, job, clip = render
                pipeline.follow(model, job, clip, FollowerContext(group))
            except Stopped:
                pass
            except GroupBroken:
                raise
            except Exception:  # noqa: BLE001 - rank 0 fails the task; this rank stays in the group
                log.exception("rank %d: task %s failed here", group.rank, task["id"])
                flag = FAILED
            group.leave(flag)
        except GroupBroken as exc:
            log.error("rank %d: %s", group.rank, exc.message)
            return 1


# -- a worker process that is one rank ----------------------------------------------------------------


def run_leader(pool_factory: Callable[[LeaderPipeline], Any], pipeline: Any, group: RankGroup,
               stop: threading.Event, *, grace_seconds: float, tick_s: float) -> int:
    """Rank 0: start the (one-worker) pool on a LeaderPipeline, run until `stop` or the group breaks, hand
    back what is still running, tell the others to stop. 0, or 1 when the group broke."""
    leader = LeaderPipeline(pipeline, group, tick_s)
    leader.on_broken = stop.set
    leader.start()
    pool = pool_factory(leader)
    while not stop.wait(0.5):
        pass
    pool.shutdown(grace_seconds)
    leader.close()
    return 1 if leader.broken.is_set() else 0


def tick_seconds(timeout_s: float) -> float:
    """How often idle rank 0 reassures the others: well inside their collective timeout."""
    return max(0.05, min(5.0, timeout_s / 4))


# -- `worker --gpus 0,1,...`: one process per GPU -------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_gpus(text: str) -> list[str]:
    """"0,1,2,3" -> ["0", "1", "2", "3"]: at least two distinct device indices."""
    gpus = [g.strip() for g in text.split(",") if g.strip()]
    if len(gpus) < 2 or len(set(gpus)) != len(gpus) or not all(g.isdigit() for g in gpus):
        raise ValueError(f"--gpus {text!r}: give two or more distinct GPU indices, e.g. 0,1")
    return gpus


def launch_ranks(gpus: Sequence[str | None], argv: Sequence[str], base_env: dict[str, str], *,
                 stop_seconds: float, poll_s: float = 0.2) -> int:
    """Start one `wanserve worker` process per GPU (rank i sees only gpus[i]; a None entry: no GPU
    change, for CPU tests) on a free port of 127.0.0.1, and supervise them: SIGINT/SIGTERM go to every
    rank (rank 0 hands back its task and tells the others to stop); when one rank exits, the rest are
    given `stop_seconds` to follow, then killed. Exit 0 only if every rank exited 0; otherwise 1, for the
    supervisor (systemd Restart=on-failure, a Kubernetes pod) to restart the whole group, which is the
    only way to rebuild a broken process group."""
    port, world = free_port(), len(gpus)
    procs: list[subprocess.Popen] = []
    for rank, gpu in enumerate(gpus):
        env = {**base_env, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        procs.append(subprocess.Popen([sys.executable, "-m", "wanserve.cli", "worker", *argv], env=env))

    def forward(signum: int, frame: Any) -> None:
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(poll_s)
        first = next(i for i, p in enumerate(procs) if p.poll() is not None)
        log.info("rank %d exited with %s; stopping the group", first, procs[first].returncode)
        deadline = time.monotonic() + (stop_seconds if procs[first].returncode == 0 else min(stop_seconds, 5))
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            time.sleep(poll_s)
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    codes = [p.returncode for p in procs]
    if any(codes):
        print(f"wanserve: rank exit codes {codes}; the group stopped (restart it)", file=sys.stderr,
              flush=True)
        return 1
    return 0

