"""What a multi-GPU worker adds per task on top of the denoising itself (docs/deploy.md "Multi-GPU tasks").

Runs `TASKS` tasks through a real task store (SQLite file) with a fake pipeline of `STEPS` empty steps,
once as a one-process worker and once as two gloo ranks (worker/distributed.py: rank 0 claims, broadcasts
the task and the planned job, one stop-flag all-reduce per step, the leave agreement, rank 0 records).
Prints the mean wall time per task (create -> SUCCEEDED seen) and the difference.

    python benchmarks/multi_gpu_overhead.py [--tasks 20] [--steps 50]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_multi_gpu import T2V, FakePipeline, _settings  # noqa: E402

from wanserve.config import DistributedEnv  # noqa: E402
from wanserve.services import Services  # noqa: E402
from wanserve.worker.distributed import free_port  # noqa: E402


class _NoEvents:
    def put(self, item: Any) -> None:
        return None


def _request() -> dict[str, Any]:
    return {"model": T2V, "requested_model": T2V, "kind": "t2v", "prompt": "a cat", "negative_prompt": "",
            "template": None, "resolution": "480P", "size": "832*480", "duration": 5, "prompt_extend": False,
            "shot_type": "single", "sound": "none", "watermark": False, "seed": 1, "media": [],
            "resolve_uploads": False}


def _rank(rank: int, world: int, port: int, data: str, steps: int, stop: Any, ready: Any) -> None:
    from wanserve.engines import EngineSet
    from wanserve.worker.distributed import RankGroup, follow, run_leader, tick_seconds
    from wanserve.worker.runner import run_workers

    settings = _settings(Path(data))
    services = Services.open(settings)
    pipeline = FakePipeline(services.storage, rank, _NoEvents(), steps, 0.0, None)
    if world == 1:  # the plain worker: FakePipeline with a context that has no share()
        pipeline_call = pipeline.__call__

        def plain(task_id: str, account_id: str, req: Any, ctx: Any, *, attempt: int) -> dict[str, Any]:
            class Ctx:
                check, progress = ctx.check, ctx.progress

                @staticmethod
                def share(*a: Any) -> None:
                    return None
            return pipeline_call(task_id, account_id, req, Ctx, attempt=attempt)

        local_stop = threading.Event()
        _watch(stop, local_stop)

        class Plain:
            __call__ = staticmethod(plain)
            discard = pipeline.discard

        pool = run_workers(services, EngineSet({}), 1, local_stop, pipeline=Plain())
        ready.put(rank)
        local_stop.wait()
        pool.shutdown(0)
        os._exit(0)
    group = RankGroup.init(DistributedEnv(rank=rank, world_size=world, local_rank=rank, master_port=port), 60)
    ready.put(rank)
    if rank:
        os._exit(follow(group, pipeline))
    local_stop = threading.Event()
    _watch(stop, local_stop)
    code = run_leader(lambda leader: run_workers(services, EngineSet({}), 1, local_stop, pipeline=leader),
                      pipeline, group, local_stop, grace_seconds=0, tick_s=tick_seconds(60))
    os._exit(code)



def _watch(stop: Any, local: threading.Event) -> None:
    """Set `local` once the parent sets `stop`, polling: a process waiting in an mp.Event that then exits
    at once would leave the parent's set() waiting for it for ever."""

    def poll() -> None:
        while not stop.is_set():
            time.sleep(0.05)
        local.set()

    threading.Thread(target=poll, daemon=True).start()


def measure(world: int, tasks: int, steps: int) -> float:
    with tempfile.TemporaryDirectory() as data:
        services = Services.open(_settings(Path(data)))
        ctx = mp.get_context("spawn")
        stop, ready = ctx.Event(), ctx.Queue()
        port = free_port()
        procs = [ctx.Process(target=_rank, args=(r, world, port, data, steps, stop, ready))
                 for r in range(world)]
        for p in procs:
            p.start()
        for _ in range(world):
            ready.get(timeout=300)
        times = []
        for _ in range(tasks):
            started = time.perf_counter()
            tid = services.store.create(account_id="a", api_key_id="k", request_id="r", model=T2V,
                                        endpoint="video-generation", request=_request())["id"]
            while (services.store.get(tid) or {}).get("status") != "SUCCEEDED":
                time.sleep(0.002)
            times.append(time.perf_counter() - started)
        stop.set()
        for p in procs:
            p.join(60)
        services.close()
        times.sort()
        return times[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    one = measure(1, args.tasks, args.steps)
    two = measure(2, args.tasks, args.steps)
    print(f"{os.cpu_count()} CPUs; {args.tasks} tasks of {args.steps} empty steps; median per task "
          f"(create -> SUCCEEDED seen, poll 0.05 s):")
    print(f"  one process:            {one * 1000:8.1f} ms")
    print(f"  two gloo ranks:         {two * 1000:8.1f} ms")
    print(f"  multi-GPU orchestration adds {1000 * (two - one):.1f} ms per task "
          f"({1000 * (two - one) / args.steps:.2f} ms per step if all of it were the per-step collective)")


if __name__ == "__main__":
    main()
