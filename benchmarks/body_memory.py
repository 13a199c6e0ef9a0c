"""Benchmark: the API's memory for one large create body (issue 18, item 4).

    python benchmarks/body_memory.py [--src DIR] [--mb 150] [--cases over,under,invalid]

Runs the API in a child process from --src (default: this checkout's src/; a worktree of another commit
measures that commit) with `build_server` on a loopback port, the preview engine and no workers, and
posts one create body of about --mb MiB per case over HTTP, streamed from a generator (so the client's
side holds 64 KiB), then reports, for the server's process, the peak of Python's allocations during the
request over what it held before (`tracemalloc`), the peak RSS over the RSS before (VmHWM after
resetting it through /proc/self/clear_refs), and what stays held after the answer (tracemalloc and RSS):

- over: a wan2.7-i2v first_clip data: URL of --mb MiB (over the 100 MiB clip limit: the task is created
  and fails when it runs, as a too-large inline file always has);
- under: a first_clip data: URL of 90 MiB decoded (under the limit: stored as an upload);
- invalid: a body of --mb MiB cut short inside the data: URL (400 InvalidParameter/IllegalInput).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

BLOCK = b"QUJD" * 16384  # 64 KiB of base64


def body(payload_bytes: int, *, cut: bool = False):  # type: ignore[no-untyped-def]
    head = json.dumps({"model": "wan2.7-i2v", "input": {"prompt": "continue", "media": [
        {"type": "first_clip", "url": "@"}]}}).encode().split(b"@")
    yield head[0] + b"data:video/mp4;base64,"
    left = payload_bytes // 4 * 4
    while left > 0:
        piece = BLOCK[:min(left, len(BLOCK))]
        left -= len(piece)
        yield piece
    if not cut:
        yield head[1]


def rss_kb(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def child(cases: list[str], mb: float) -> None:
    import gc
    import threading
    import time
    import tracemalloc

    import httpx

    from wanserve.accounts.keys import create_key
    from wanserve.api.app import create_app
    from wanserve.api.server import build_server
    from wanserve.config import Settings
    from wanserve.services import Services

    with tempfile.TemporaryDirectory() as tmp:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        settings = Settings(data_dir=Path(tmp), workers=0, host="127.0.0.1", port=port, api_key="")
        services = Services.open(settings)
        _, key = create_key(services.db, "default")
        server = build_server(create_app(services), settings, log_level="critical")
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.01)
        url = f"http://127.0.0.1:{port}/api/v1/services/aigc/video-generation/video-synthesis"
        headers = {"Authorization": f"Bearer {key}", "X-DashScope-Async": "enable",
                   "Content-Type": "application/json"}
        with httpx.Client(timeout=300) as client:
            client.post(url, content=b"{}", headers=headers)  # warm every import and route
            tracemalloc.start()
            for case in cases:
                size = int((90 if case == "under" else mb) * 2**20)
                size = size * 4 // 3 if case == "under" else size
                content = list(body(size, cut=case == "invalid"))  # pieces shared, not copies
                length = sum(len(p) for p in content)
                gc.collect()
                time.sleep(0.3)
                before_py = tracemalloc.get_traced_memory()[0]
                before_rss = rss_kb()
                Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
                tracemalloc.reset_peak()
                r = client.post(url, content=iter(content),
                                headers={**headers, "Content-Length": str(length)})
                peak_py = tracemalloc.get_traced_memory()[1]
                peak_rss = rss_kb("VmHWM")
                del content
                gc.collect()
                time.sleep(0.5)
                after_py = tracemalloc.get_traced_memory()[0]
                print(json.dumps({
                    "case": case, "body_mb": round(length / 2**20, 1), "status": r.status_code,
                    "code": r.json().get("code", r.json().get("output", {}).get("task_status")),
                    "py_peak_mb": round((peak_py - before_py) / 2**20, 1),
                    "py_peak_x": round((peak_py - before_py) / length, 2),
                    "py_held_after_mb": round((after_py - before_py) / 2**20, 1),
                    "rss_peak_mb": round((peak_rss - before_rss) / 1024, 1),
                    "rss_held_after_mb": round((rss_kb() - before_rss) / 1024, 1)}), flush=True)
        server.should_exit = True
        services.close()


def main() -> int:
    here = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", default=str(here / "src"))
    ap.add_argument("--mb", type=float, default=150)
    ap.add_argument("--cases", default="over,under,invalid")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.cases.split(","), args.mb)
        return 0
    src = Path(args.src).resolve()
    print(f"src={src}", flush=True)
    for case in args.cases.split(","):  # one process per case: a case's leftovers do not blur the next
        subprocess.run([sys.executable, __file__, "--child", "--cases", case, "--mb", str(args.mb)],
                       env={**os.environ, "PYTHONPATH": str(src), "WANSERVE_LOG_LEVEL": "WARNING"},
                       check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
