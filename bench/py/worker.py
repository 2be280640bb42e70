"""Benchmark worker: PyTorch's Python TCPStore client in a loop, driven by bench/store-throughput.ts.

Speaks the agent protocol of test/py/agent.py (MARK lines on stdout, one JSON command per stdin line):
prints {"event": "ready", ...}, then answers

  {"id": 1, "op": "bench", "host": h, "port": p, "kind": "set"|"get"|"add", "n": N,
   "value_size": 64, "prefix": "w0/", "keys": 1000, "start_at": unix_seconds}

with {"id": 1, "ok": true, "value": {"start": t0, "end": t1, "n": N}}. The loop starts at `start_at`, so
several workers start together once their (slow) torch import and connect are done. A set loop ends with a
num_keys round trip, so every set was handled by the server before the clock stops.
"""

import json
import os
import sys
import time
import warnings
from datetime import timedelta

MARK = "@@rdzv "
warnings.filterwarnings("ignore")
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

stores = {}


def emit(obj):
    sys.stdout.write(MARK + json.dumps(obj) + "\n")
    sys.stdout.flush()


def store_for(host, port):
    key = (host, port)
    if key not in stores:
        stores[key] = dist.TCPStore(host, port, is_master=False, timeout=timedelta(seconds=60))
    return stores[key]


def bench(cmd):
    s = store_for(cmd["host"], cmd["port"])
    value = b"v" * cmd["value_size"]
    keys = [f"{cmd['prefix']}{i}" for i in range(cmd["keys"])]
    kind, n, nk = cmd["kind"], cmd["n"], len(keys)
    if kind == "get":
        for k in keys:
            s.set(k, value)
    s.num_keys()
    delay = cmd["start_at"] - time.time()
    if delay > 0:
        time.sleep(delay)
    start = time.time()
    if kind == "set":
        for i in range(n):
            s.set(keys[i % nk], value)
        s.num_keys()
    elif kind == "get":
        for i in range(n):
            s.get(keys[i % nk])
    elif kind == "add":
        for i in range(n):
            s.add(keys[i % nk], 1)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    end = time.time()
    return {"start": start, "end": end, "n": n}


def main():
    emit({"event": "ready", "torch": torch.__version__, "port": None})
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        if cmd.get("op") == "exit":
            break
        started = time.monotonic()
        try:
            emit({"id": cmd["id"], "ok": True, "value": bench(cmd), "ms": (time.monotonic() - started) * 1000})
        except Exception as err:  # noqa: BLE001 - reported to the harness
            error = {"type": type(err).__name__, "mro": [], "message": str(err)}
            emit({"id": cmd["id"], "ok": False, "error": error, "ms": 0})
    sys.stdout.flush()
    os._exit(0)


main()
