"""PyTorch's own dynamic rendezvous, driven by bench/rendezvous.ts for comparison with rdzv's.

    python rendezvous_torch.py master
        PyTorch's TCPStore server on a free loopback port; prints {"port": P}, exits when stdin closes.

    python rendezvous_torch.py nodes HOST PORT RUN_ID N COUNT TIMEOUT_S
        COUNT handlers (one thread and one TCPStore client each) of PyTorch's DynamicRendezvousHandler
        over C10dRendezvousBackend, min_nodes = max_nodes = N, other settings PyTorch's defaults. Prints
        {"event": "ready"} once every store is connected and every handler created; on a "go" line on
        stdin every thread calls next_rendezvous() at once; prints {"event": "done", "signalled",
        "first", "last" (epoch ms), "ranks", "errors", "unfinished"} when all returned or TIMEOUT_S passed.

Machine-readable lines start with MARK; anything else on stdout is PyTorch's own noise. Works with
PyTorch 1.13 (next_rendezvous returns a tuple) and 2.x (a RendezvousInfo).
"""

import json
import os
import sys
import threading
import time
import warnings
from datetime import timedelta

MARK = "@@rdzv "
warnings.filterwarnings("ignore")
import torch.distributed as dist  # noqa: E402
from torch.distributed.elastic.rendezvous import RendezvousParameters  # noqa: E402
from torch.distributed.elastic.rendezvous.c10d_rendezvous_backend import C10dRendezvousBackend  # noqa: E402
from torch.distributed.elastic.rendezvous.dynamic_rendezvous import create_handler  # noqa: E402


def emit(obj):
    sys.stdout.write(MARK + json.dumps(obj) + "\n")
    sys.stdout.flush()


def now_ms():
    return time.time() * 1000.0


def master():
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=600))
    emit({"event": "ready", "port": store.port, "pid": os.getpid()})
    sys.stdin.read()
    os._exit(0)


def nodes(host, port, run_id, n, count, timeout_s):
    handlers = []
    for _ in range(count):
        store = dist.TCPStore(host, port, is_master=False, timeout=timedelta(seconds=timeout_s + 60))
        backend = C10dRendezvousBackend(store, run_id)
        params = RendezvousParameters(
            backend="c10d", endpoint=f"{host}:{port}", run_id=run_id, min_nodes=n, max_nodes=n
        )
        handlers.append(create_handler(store, backend, params))

    go = threading.Event()
    lock = threading.Lock()
    done_at, ranks, errors = [], [], []

    def run(handler):
        go.wait()
        try:
            result = handler.next_rendezvous()
            rank = result[1] if isinstance(result, tuple) else result.rank
            with lock:
                done_at.append(now_ms())
                ranks.append(rank)
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=run, args=(h,), daemon=True) for h in handlers]
    for t in threads:
        t.start()
    emit({"event": "ready"})
    sys.stdin.readline()
    signalled = now_ms()
    go.set()
    deadline = time.monotonic() + timeout_s
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    with lock:
        emit(
            {
                "event": "done",
                "signalled": signalled,
                "first": min(done_at) if done_at else None,
                "last": max(done_at) if done_at else None,
                "ranks": list(ranks),
                "errors": list(errors)[:5],
                "unfinished": count - len(done_at) - len(errors),
            }
        )
    sys.stdin.read()
    os._exit(0)


if __name__ == "__main__":
    if sys.argv[1] == "master":
        master()
    else:
        host, port, run_id, n, count, timeout_s = sys.argv[2:8]
        nodes(host, int(port), run_id, int(n), int(count), float(timeout_s))
