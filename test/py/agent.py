"""A PyTorch process remote-controlled by a TypeScript test, one JSON command per stdin line.

Usage: agent.py [--master [--use-libuv 0|1]]

With --master it first starts PyTorch's own TCPStore server (is_master=True, a free port,
wait_for_workers=False) and registers that store as "master". It then prints
{"event": "ready", "torch": version, "port": port-or-null} and serves commands:

  {"id": 1, "op": "open", "name": "s", "host": h, "port": p, "timeout_s": 5, "kwargs": {...}}
  {"id": 2, "op": "call", "store": "s", "method": "get", "args": ["k"], "kwargs": {}}
  {"id": 3, "op": "clone", "store": "s", "as": "s2"}
  {"id": 4, "op": "prefix", "store": "s", "prefix": "p", "as": "ps"}
  {"id": 5, "op": "exit"}

Every command runs on its own thread, so a blocking call (get, wait, queue_pop, barrier) can stay pending
while the test sends more. Replies: {"id", "ok": true, "value", "ms"} or {"id", "ok": false, "error", "ms"}.
Arguments use harness.from_json ({"b64"} for bytes, {"td"} for timedeltas). The process exits when stdin
closes, so a crashed test never leaves a server behind.
"""

import json
import os
import sys
import threading
import time
from datetime import timedelta

from harness import describe_error, emit, from_json, load_torch, to_json, torch_major

torch, dist = load_torch()
stores = {}
lock = threading.Lock()


def start_master():
    kwargs = {"is_master": True, "wait_for_workers": False, "timeout": timedelta(seconds=30)}
    if "--use-libuv" in sys.argv:
        kwargs["use_libuv"] = sys.argv[sys.argv.index("--use-libuv") + 1] == "1"
    store = dist.TCPStore("127.0.0.1", 0, **kwargs)
    stores["master"] = store
    return store.port


def handle(cmd):
    op = cmd["op"]
    if op == "open":
        kwargs = {k: from_json(v) for k, v in cmd.get("kwargs", {}).items()}
        timeout = timedelta(seconds=cmd.get("timeout_s", 10))
        store = dist.TCPStore(cmd["host"], cmd["port"], is_master=False, timeout=timeout, **kwargs)
        stores[cmd["name"]] = store
        return None
    if op == "call":
        args = [from_json(a) for a in cmd.get("args", [])]
        kwargs = {k: from_json(v) for k, v in cmd.get("kwargs", {}).items()}
        return getattr(stores[cmd["store"]], cmd["method"])(*args, **kwargs)
    if op == "clone":
        stores[cmd["as"]] = stores[cmd["store"]].clone()
        return None
    if op == "prefix":
        stores[cmd["as"]] = dist.PrefixStore(cmd["prefix"], stores[cmd["store"]])
        return None
    raise ValueError(f"unknown op {op!r}")


def serve(cmd):
    started = time.monotonic()
    reply = {"id": cmd.get("id")}
    try:
        reply["value"] = to_json(handle(cmd))
        reply["ok"] = True
    except Exception as err:  # noqa: BLE001 - reported to the test, which decides
        reply["ok"] = False
        reply["error"] = describe_error(err)
    reply["ms"] = round((time.monotonic() - started) * 1000, 2)
    with lock:
        emit(reply)


def main():
    port = start_master() if "--master" in sys.argv else None
    emit({"event": "ready", "torch": torch.__version__, "major": torch_major(torch), "port": port})
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        cmd = json.loads(line)
        if cmd.get("op") == "exit":
            break
        threading.Thread(target=serve, args=(cmd,), daemon=True).start()
    sys.stdout.flush()
    os._exit(0)


main()
