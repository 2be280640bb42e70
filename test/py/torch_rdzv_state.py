"""PyTorch's own dynamic rendezvous state in a TCPStore, for rdzv's dashboard tests.

Usage:
  torch_rdzv_state.py HOST PORT run RUN_ID NODES
      Runs NODES of PyTorch's DynamicRendezvousHandler (c10d backend, one TCPStore client each, in threads)
      against the store at HOST:PORT until the round completes, then prints the state as PyTorch reads it.
  torch_rdzv_state.py HOST PORT samples PREFIX
      Writes hand-built _RendezvousState objects (joining with a deadline, complete with a wait list,
      closed) through PyTorch's C10dRendezvousBackend under run ids PREFIX-joining, PREFIX-complete,
      PREFIX-closed, and prints each as PyTorch sees it.

Every state is printed as `{"result": {...}}` (see harness.py) with datetimes as epoch milliseconds, so the
TypeScript decoder's output can be compared with Python's own reading of the same bytes.
"""

import pickle
import sys
import threading
from datetime import datetime, timedelta, timezone

from harness import emit
from torch.distributed import TCPStore
from torch.distributed.elastic.rendezvous import dynamic_rendezvous as dr
from torch.distributed.elastic.rendezvous.c10d_rendezvous_backend import C10dRendezvousBackend


def _method_name(depth=2):
    """`dr.get_method_name` without `inspect.stack()`, which reads source files and, with Debian's Python
    3.11, segfaults now and then when several threads call it at once (seen here with this script's three
    handler threads on a loaded machine). The name it returns is the same: the caller `depth` frames up."""
    try:
        return sys._getframe(depth).f_code.co_name
    except ValueError:
        return "no_method_name"


if hasattr(dr, "get_method_name"):
    dr.get_method_name = _method_name


def epoch_ms(dt):
    if dt is None:
        return None
    if dt.tzinfo is None:  # PyTorch 1.x stores naive UTC (datetime.utcnow())
        dt = dt.replace(tzinfo=timezone.utc)
    return round(dt.timestamp() * 1000, 3)


def describe(state):
    node = lambda n: {"addr": n.addr if hasattr(n, "addr") else n.fqdn, "pid": n.pid, "localId": n.local_id}
    return {
        "round": state.round,
        "complete": state.complete,
        "deadline": epoch_ms(state.deadline),
        "closed": state.closed,
        "participants": sorted(([node(n), r] for n, r in state.participants.items()), key=lambda p: p[1]),
        "waitList": sorted((node(n) for n in state.wait_list), key=lambda n: n["localId"]),
        "redundancyList": sorted((node(n) for n in getattr(state, "redundancy_list", set())), key=lambda n: n["localId"]),
        "lastHeartbeats": sorted(([node(n), epoch_ms(t)] for n, t in state.last_heartbeats.items()), key=lambda p: p[0]["localId"]),
        "hasRedundancyList": hasattr(state, "redundancy_list"),
    }


def read_state(store, run_id):
    backend = C10dRendezvousBackend(store, run_id)
    got = backend.get_state()
    return None if got is None else describe(pickle.loads(got[0]))


def client(host, port):
    return TCPStore(host, port, is_master=False, timeout=timedelta(seconds=30))


def now():
    return datetime.now(timezone.utc) if hasattr(dr, "timezone") else datetime.utcnow()


def run(host, port, run_id, nodes):
    ranks = [None] * nodes
    errors = []

    def one(i):
        try:
            store = client(host, port)
            backend = C10dRendezvousBackend(store, run_id)
            handler = dr.DynamicRendezvousHandler.from_backend(run_id, store, backend, nodes, nodes)
            result = handler.next_rendezvous()
            ranks[i] = result[1] if isinstance(result, tuple) else result.rank
        except Exception as exc:  # reported to the test
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(nodes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    emit({"result": {"ranks": ranks, "errors": errors, "state": read_state(client(host, port), run_id)}})


def node_desc(addr, pid, local_id):
    return dr._NodeDesc(addr, pid, local_id)


def samples(host, port, prefix):
    store = client(host, port)
    t0 = now()
    a, b, c = node_desc("node-a.example", 101, 0), node_desc("node-b.example", 202, 1), node_desc("10.0.0.3", 303, 2)
    joining = dr._RendezvousState()
    joining.round = 3
    joining.deadline = t0 + timedelta(seconds=30)
    joining.participants = {a: 0, b: 0}
    joining.last_heartbeats = {a: t0, b: t0 - timedelta(seconds=4, microseconds=250000)}
    complete = dr._RendezvousState()
    complete.round = 1
    complete.complete = True
    complete.participants = {a: 1, b: 0}
    complete.wait_list = {c}
    if hasattr(complete, "redundancy_list"):
        complete.redundancy_list = {node_desc("spare", 404, 7)}
    complete.last_heartbeats = {a: t0, b: t0, c: t0 - timedelta(seconds=1)}
    closed = dr._RendezvousState()
    closed.round = 5
    closed.closed = True
    out = {}
    for name, state in (("joining", joining), ("complete", complete), ("closed", closed)):
        run_id = f"{prefix}-{name}"
        C10dRendezvousBackend(store, run_id).set_state(pickle.dumps(state))
        out[name] = {"runId": run_id, "state": read_state(store, run_id)}
    emit({"result": out})


def main():
    host, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if mode == "run":
        run(host, port, sys.argv[4], int(sys.argv[5]))
    elif mode == "samples":
        samples(host, port, sys.argv[4])
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
