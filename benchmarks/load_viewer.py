"""Viewer load test (loopback only, bounded): concurrent page loads and distinct re-prunes against `tracer view`.

1. serve: start `tracer view GRAPH --host 127.0.0.1 --port P` as a subprocess; wait until it answers.
2. warm: one page load (the graph opens); the server's RSS then is `idle`.
3. pages: N_PAGES concurrent page loads (GET /, GET /_dash-layout, POST the URL -> view callback).
4. reprunes: N_REPRUNES concurrent view callbacks, each at a distinct pruningThreshold.
5. settle: wait, then read the RSS again (`after`). RSS is sampled every 20 ms throughout (`peak`).
Goals (issue #12): all answered, peak <= idle + 1.5 GB, p95 latency <= 5 s, after <= idle + 200 MB. A re-prune the
gate turns away is answered at once with a "busy" card: it counts as answered and is reported separately.

    python -m benchmarks.load_viewer GRAPH.json [--pages 200] [--reprunes 50] [--out results.json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Sampler(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(0.02)


def request(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=120)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def view_callback(port: int) -> dict:
    """The dependency whose input is the URL's search and whose outputs include the main figure."""
    _, raw = request(port, "GET", "/_dash-dependencies")
    deps = json.loads(raw)
    return max((d for d in deps if [i["property"] for i in d["inputs"]] == ["search"] and "figure" in d["output"]),
               key=lambda d: d["output"].count("..."))  # fmt: skip


def callback_body(dep: dict, search: str) -> dict:
    outs = [o.rsplit(".", 1) for o in dep["output"].strip(".").split("...")]
    return {
        "output": dep["output"], "outputs": [{"id": i, "property": p} for i, p in outs],
        "inputs": [{**dep["inputs"][0], "value": search}],
        "state": [{**s, "value": None} for s in dep["state"]], "changedPropIds": [f"{dep['inputs'][0]['id']}.search"],
    }  # fmt: skip


def page_load(port: int, dep: dict, graph_id: str) -> tuple[float, bool, bool]:
    """(seconds, ok, busy) of GET /, GET /_dash-layout and the view callback of `?graph=ID`."""
    t0 = time.perf_counter()
    ok = request(port, "GET", "/")[0] == 200 and request(port, "GET", "/_dash-layout")[0] == 200
    status, raw = request(port, "POST", "/_dash-update-component", callback_body(dep, f"?graph={graph_id}"))
    return time.perf_counter() - t0, ok and status == 200, b"busy" in raw


def reprune(port: int, dep: dict, graph_id: str, threshold: float) -> tuple[float, bool, bool]:
    t0 = time.perf_counter()
    search = f"?graph={graph_id}&pruningThreshold={threshold:.4f}"
    status, raw = request(port, "POST", "/_dash-update-component", callback_body(dep, search))
    return time.perf_counter() - t0, status == 200, b"busy" in raw


def summary(results: list[tuple[float, bool, bool]]) -> dict:
    lat = sorted(r[0] for r in results)
    return {"n": len(results), "answered": sum(r[1] for r in results), "busy": sum(r[2] for r in results),
            "p50_s": round(statistics.median(lat), 3), "p95_s": round(lat[int(0.95 * (len(lat) - 1))], 3),
            "max_s": round(lat[-1], 3)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("graph", type=Path, help="graph file (with its sidecar) to serve")
    ap.add_argument("--pages", type=int, default=200, help="concurrent page loads")
    ap.add_argument("--reprunes", type=int, default=50, help="concurrent re-prunes at distinct thresholds")
    ap.add_argument("--workers", type=int, default=64, help="client threads")
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tracer", "view", str(args.graph), "--host", HOST, "--port",
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        for _ in range(600):  # 1. up to 60 s to start
            try:
                if request(port, "GET", "/")[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        dep = view_callback(port)
        gid = args.graph.name
        page_load(port, dep, gid)  # 2.
        time.sleep(1.0)
        idle = rss_mb(server.pid)
        sampler = Sampler(server.pid)
        sampler.start()
        with ThreadPoolExecutor(args.workers) as pool:  # 3.
            pages = list(pool.map(lambda _: page_load(port, dep, gid), range(args.pages)))
        thresholds = [0.5 + 0.49 * i / max(1, args.reprunes - 1) for i in range(args.reprunes)]
        with ThreadPoolExecutor(args.workers) as pool:  # 4.
            prunes = list(pool.map(lambda t: reprune(port, dep, gid, t), thresholds))
        time.sleep(5.0)  # 5.
        sampler.stop.set()
        sampler.join()
        after = rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    res = {"graph": str(args.graph), "pages": summary(pages), "reprunes": summary(prunes),
           "rss_idle_mb": round(idle, 1), "rss_peak_above_idle_mb": round(sampler.peak - idle, 1),
           "rss_after_above_idle_mb": round(after - idle, 1), "cpus": os.cpu_count()}  # fmt: skip
    print(json.dumps(res, indent=1))
    if args.out:
        args.out.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
