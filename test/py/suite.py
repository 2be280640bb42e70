"""Runs PyTorch's own TCPStore behaviour checks against a store server at HOST:PORT, as a client.

Usage: suite.py HOST PORT NAMESPACE [--only a,b] [--skip a,b]

Modelled on PyTorch's test/distributed/test_store.py (1.13 and 2.x) plus the cases of the rdzv protocol
spec (section 7). Every case opens its own TCPStore so that a desynchronised connection cannot leak into
the next case. Keys start with NAMESPACE, so several runs can share one server.
With torch 1.x only the 1.13 API is exercised (flavor v1); with 2.x the whole extended API (flavor v2).
Prints one MARK line per finished case and a final {"result": ...} line.
"""

import sys
import threading
import time
from datetime import timedelta

from harness import Cases, emit, expect, expect_eq, expect_raises, load_torch, torch_major

torch, dist = load_torch()
HOST, PORT, NS = sys.argv[1], int(sys.argv[2]), sys.argv[3]
V2 = torch_major(torch) >= 2
TIMEOUT_S = 5.0
init_adds = 0


def opt(name):
    if name in sys.argv:
        return sys.argv[sys.argv.index(name) + 1].split(",")
    return None


def k(name):
    return f"{NS}{name}"


def connect(timeout_s=TIMEOUT_S, **kwargs):
    return dist.TCPStore(HOST, PORT, is_master=False, timeout=timedelta(seconds=timeout_s), **kwargs)


def later(delay_s, fn, *args):
    """Runs fn(*args) on a thread after delay_s; returns the thread."""

    def body():
        time.sleep(delay_s)
        fn(*args)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread


def timed(fn):
    started = time.monotonic()
    value = fn()
    return value, time.monotonic() - started


# --- 1.13 API ---------------------------------------------------------------------------------------------


def set_get_roundtrip():
    s = connect()
    s.set(k("a"), "1")
    expect_eq(s.get(k("a")), b"1", "get after set")
    s.set(k("a"), b"2")
    expect_eq(s.get(k("a")), b"2", "get after overwrite")


def binary_empty_unicode_large_values():
    s = connect()
    every_byte = bytes(range(256)) * 4
    s.set(k("bin"), every_byte)
    expect_eq(s.get(k("bin")), every_byte, "all 256 byte values")
    s.set(k("empty"), b"")
    expect_eq(s.get(k("empty")), b"", "empty value")
    s.set(k("ключ✓"), "значение✓")
    expect_eq(s.get(k("ключ✓")), "значение✓".encode(), "utf-8 key and value")
    big = bytes((i * 7) & 0xFF for i in range(4 * 1024 * 1024))
    s.set(k("big"), big)
    expect(s.get(k("big")) == big, "4 MiB value did not round-trip")


def get_woken_by_other_connection():
    s, other = connect(), connect()
    later(0.3, other.set, k("wake"), b"woken")
    value, took = timed(lambda: s.get(k("wake")))
    expect_eq(value, b"woken", "value")
    expect(took >= 0.2, f"get returned after {took:.3f}s, before the key was set")


def wait_needs_every_key():
    s, other = connect(), connect()
    other.set(k("w1"), b"1")

    def set_second():
        time.sleep(0.3)
        other.set(k("w2"), b"2")

    threading.Thread(target=set_second, daemon=True).start()
    _, took = timed(lambda: s.wait([k("w1"), k("w2")]))
    expect(took >= 0.2, f"wait on two keys returned after {took:.3f}s, before the second key existed")


def many_waiters_woken_by_one_set():
    waiters = [connect() for _ in range(3)]
    done = []
    threads = [threading.Thread(target=lambda w=w: (w.wait([k("many")]), done.append(1))) for w in waiters]
    for t in threads:
        t.start()
    time.sleep(0.3)
    expect_eq(len(done), 0, "waiters returned before the set")
    connect().set(k("many"), b"x")
    for t in threads:
        t.join(3)
    expect_eq(len(done), 3, "woken waiters")


def add_counter():
    s = connect()
    expect_eq(s.add(k("cnt"), 5), 5, "add to a missing key")
    expect_eq(s.add(k("cnt"), -2), 3, "add -2")
    expect_eq(s.add(k("cnt"), 0), 3, "add 0 reads the counter")
    expect_eq(s.get(k("cnt")), b"3", "counter stored as decimal")
    expect_eq(s.add(k("neg"), -5), -5, "negative delta on a new key")
    expect_eq(s.get(k("neg")), b"-5", "negative counter stored")


def pytorch_test_set_get_check():
    s = connect()
    for i in (1, 2, 3):
        s.add(k("key"), i)
    for i in range(1, 7):
        s.add(k("key3"), i)
    expect_eq(s.get(k("key")), b"6", "key")
    expect_eq(s.get(k("key3")), b"21", "key3")
    before = s.num_keys()
    s.set(k("-key3"), "7")
    expect_eq(s.num_keys(), before + 1, "num_keys after a set")
    expect(s.delete_key(k("-key3")), "delete_key returned False")
    expect_eq(s.num_keys(), before, "num_keys after delete")


def add_parses_like_stoll_and_wraps():
    s = connect()
    s.set(k("stoll"), "5abc")
    expect_eq(s.add(k("stoll"), 1), 6, "trailing garbage ignored")
    s.set(k("ws"), " 7")
    expect_eq(s.add(k("ws"), 1), 8, "leading whitespace skipped")
    s.set(k("max"), str(2**63 - 1))
    expect_eq(s.add(k("max"), 1), -(2**63), "i64 wrap")
    expect_eq(s.add(k("bigdelta"), 2**62), 2**62, "large delta")


def add_non_numeric_breaks_only_that_client():
    victim = connect(timeout_s=2)
    victim.set(k("nan"), "abc")
    expect_raises(lambda: victim.add(k("nan"), 1))
    s = connect()
    s.set(k("after_nan"), "ok")
    expect_eq(s.get(k("after_nan")), b"ok", "other clients keep working")


def compare_set_semantics():
    s = connect()
    expect_eq(s.compare_set(k("cs"), "wrong_old", "new"), b"wrong_old", "missing key, expected non-empty")
    expect_eq(s.compare_set(k("cs"), "", "first"), b"first", "missing key, expected empty: creates")
    expect_eq(s.compare_set(k("cs"), "wrong", "x"), b"first", "present, mismatch: returns current")
    expect_eq(s.get(k("cs")), b"first", "mismatch left the value")
    expect_eq(s.compare_set(k("cs"), "first", "second"), b"second", "present, match: swaps")
    expect_eq(s.get(k("cs")), b"second", "swapped value")
    # PyTorch's test_compare_set, verbatim.
    s.set(k("cs_key0"), "value0")
    expect_eq(s.get(k("cs_key0")), b"value0", "cs_key0")
    expect_eq(s.compare_set(k("cs_key0"), "wrong_old_value", "new_value0"), b"value0", "wrong old value")
    expect_eq(s.compare_set(k("cs_key0"), "value0", "new_value0"), b"new_value0", "right old value")
    expect_eq(s.compare_set(k("cs_key1"), "", "new_value1"), b"new_value1", "empty old value")


def compare_set_wakes_get():
    s, other = connect(timeout_s=2), connect()
    later(0.3, other.compare_set, k("cs_wake"), "", "made")
    expect_eq(s.get(k("cs_wake")), b"made", "get woken by compare_set")


def delete_key_and_num_keys():
    s = connect()
    before = s.num_keys()
    for i in range(4):
        s.set(k(f"nk{i}"), str(i))
    expect_eq(s.num_keys(), before + 4, "num_keys after 4 sets")
    expect_eq(s.delete_key(k("nk0")), True, "delete existing")
    expect_eq(s.delete_key(k("nk0")), False, "delete again")
    expect_eq(s.num_keys(), before + 3, "num_keys after delete")
    s.set_timeout(timedelta(seconds=0.5))
    expect_raises(lambda: s.get(k("nk0")))
    s.set_timeout(timedelta(seconds=TIMEOUT_S))
    s.set(k("nk0"), "back")
    expect_eq(s.get(k("nk0")), b"back", "set after delete")


def delete_does_not_wake():
    s, other = connect(timeout_s=1), connect()
    other.set(k("delw"), "v")
    other.delete_key(k("delw"))
    later(0.2, other.delete_key, k("delw"))
    expect_raises(lambda: s.get(k("delw")))


def wait_timeout_then_more_ops():
    s = connect()
    _, took = expect_raises(lambda: s.wait([k("bad_key")], timedelta(seconds=0.25)), r"[Tt]imeout")
    expect(0.2 <= took < 2.0, f"wait timeout took {took:.3f}s")
    s.add(k("good_key"), 1)
    s.wait([k("good_key")])
    s.wait([k("good_key")], timedelta(seconds=0.25))
    # The timed-out key appears through this very connection: no stale reply may surface.
    s.set(k("bad_key"), "x")
    expect_eq(s.get(k("bad_key")), b"x", "get after timed-out wait")
    expect_eq(s.add(k("after_wait"), 2), 2, "add after timed-out wait")
    expect_eq(s.compare_set(k("after_wait"), "2", "3"), b"3", "compare_set after timed-out wait")
    expect_eq(s.num_keys() > 0, True, "num_keys after timed-out wait")


def wait_timeout_then_key_set_elsewhere():
    """The timed-out key is set by another client before this one's next request (v1 has no cancel)."""
    s, other = connect(timeout_s=1.5), connect()
    expect_raises(lambda: s.wait([k("race")], timedelta(seconds=0.25)), r"[Tt]imeout")
    other.set(k("race"), "r")
    time.sleep(0.2)
    s.set(k("race2"), "y")
    expect_eq(s.get(k("race2")), b"y", "get after a timed-out wait whose key appeared later")
    expect_eq(s.add(k("race3"), 4), 4, "add after a timed-out wait whose key appeared later")


def set_timeout_then_get():
    s = connect()
    expect_eq(s.timeout, timedelta(seconds=TIMEOUT_S), "timeout property")
    s.set_timeout(timedelta(seconds=0.3))
    expect_eq(s.timeout, timedelta(seconds=0.3), "timeout after set_timeout")
    pattern = r"wait timeout after 300ms, keys: /" if V2 else r"[Tt]imeout"
    _, took = expect_raises(lambda: s.get(k("late")), pattern)
    expect(0.25 <= took < 2.0, f"get timeout took {took:.3f}s")
    s.set_timeout(timedelta(seconds=TIMEOUT_S))
    s.set(k("late"), "x")
    expect_eq(s.get(k("late")), b"x", "timeout_doesnt_break_client")


def world_size_clients():
    global init_adds
    stores = [connect(world_size=5) for _ in range(3)]
    init_adds += 3
    stores[0].set(k("ws_key"), "shared")
    for i, st in enumerate(stores):
        expect_eq(st.get(k("ws_key")), b"shared", f"client {i} get")
        st.set(k(f"ws_{i}"), str(i))
        expect_eq(st.compare_set(k(f"ws_{i}"), str(i), "done"), b"done", f"client {i} compare_set")


def many_keys():
    s = connect()
    before = s.num_keys()
    for i in range(1000):
        s.set(k(f"many/{i}"), str(i))
    expect_eq(s.num_keys(), before + 1000, "num_keys after 1000 sets")
    expect_eq(s.get(k("many/999")), b"999", "last key")


def threaded_clients_share_keys():
    """TestMultiThreadedWait: one thread waits, another sets, on separate connections."""
    s = connect()
    other = connect()
    errors = []

    def waiter():
        try:
            s.wait([k("mt_key1")], timedelta(seconds=2))
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.2)
    other.set(k("mt_key1"), "v")
    t.join(3)
    expect_eq(errors, [], "waiter errors")


# --- 2.x extended API -------------------------------------------------------------------------------------


def check_keys():
    s = connect()
    s.set(k("chk"), "1")
    expect_eq(s.check([k("chk")]), True, "present")
    expect_eq(s.check([k("chk_missing")]), False, "missing")
    expect_eq(s.check([k("chk"), k("chk_missing")]), False, "present + missing")
    expect_eq(s.check([]), True, "no keys")


def append_values():
    s = connect()
    s.set(k("app"), "po")
    s.append(k("app"), "tato")
    expect_eq(s.get(k("app")), b"potato", "append")
    s.append(k("app_new"), "tato")
    expect_eq(s.get(k("app_new")), b"tato", "append creates")


def multi_set_get():
    s = connect()
    s.multi_set([k("m1"), k("m2")], ["po", "tato"])
    expect_eq(s.multi_get([k("m2"), k("m1")]), [b"tato", b"po"], "multi_get order")
    expect_eq(s.get(k("m1")), b"po", "multi_set key readable by get")
    other = connect()
    later(0.3, other.multi_set, [k("m3"), k("m4")], ["3", "4"])
    values, took = timed(lambda: s.multi_get([k("m3"), k("m4"), k("m1")]))
    expect_eq(values, [b"3", b"4", b"po"], "multi_get waits for missing keys")
    expect(took >= 0.2, f"multi_get returned after {took:.3f}s")


def queues_fifo():
    s = connect()
    q = k("q")
    expect_eq(s.check([q]), False, "check on empty queue")
    expect_eq(s.queue_len(q), 0, "len of new queue")
    s.queue_push(q, "1")
    s.queue_push(q, b"2")
    expect_eq(s.check([q]), True, "check on non-empty queue")
    expect_eq(s.queue_len(q), 2, "len")
    s.wait([q])
    expect_eq(s.queue_pop(q), b"1", "first pop")
    expect_eq(s.queue_pop(q), b"2", "second pop")
    expect_eq(s.queue_len(q), 0, "len after pops")


def queues_nonblocking():
    s = connect()
    q = k("q_nb")
    expect_raises(lambda: s.queue_pop(q, block=False), r"empty", dist.QueueEmptyError)
    s.queue_push(q, "a")
    expect_eq(s.queue_pop(q, block=False), b"a", "non-blocking pop")


def queues_bidirectional():
    s = connect()
    a, b = s.clone(), s.clone()
    out = []

    def worker():
        for _ in range(3):
            v = b.queue_pop(k("q_ping"))
            b.queue_push(k("q_pong"), v + b"!")

    t = threading.Thread(target=worker, daemon=True)
    t.start()
    for i in range(3):
        a.queue_push(k("q_ping"), str(i))
        out.append(a.queue_pop(k("q_pong")))
    t.join(3)
    expect_eq(out, [b"0!", b"1!", b"2!"], "ping-pong through two queues")


def queues_timeout():
    s = connect()
    s.set_timeout(timedelta(milliseconds=10))
    expect_raises(lambda: s.queue_pop(k("q_to")), r"timeout", dist.DistStoreError)
    s.set_timeout(timedelta(seconds=TIMEOUT_S))
    s.queue_push(k("q_to"), "v")
    expect_eq(s.queue_pop(k("q_to")), b"v", "pop after a timed-out pop")


def queue_push_wakes_one():
    s = connect()
    popped = []
    poppers = [s.clone(), s.clone()]
    threads = [threading.Thread(target=lambda p=p: popped.append(p.queue_pop(k("q_one")))) for p in poppers]
    for t in threads:
        t.daemon = True
        t.start()
    time.sleep(0.3)
    s.queue_push(k("q_one"), "x")
    time.sleep(0.3)
    expect_eq(popped, [b"x"], "one push, one pop")
    s.queue_push(k("q_one"), "y")
    for t in threads:
        t.join(3)
    expect_eq(sorted(popped), [b"x", b"y"], "second push wakes the other")


def list_keys():
    s = connect()
    s.set(k("lk/a"), "1")
    s.add(k("lk/b"), 1)
    keys = s.list_keys()
    expect(k("lk/a") in keys and k("lk/b") in keys, f"keys missing from {keys[:20]}")
    expect("init/" not in keys and all(not x.startswith("/") for x in keys), "raw keys leaked")
    p = dist.PrefixStore(k("lkp"), s)
    p.set("x", "1")
    p.set("y", "2")
    expect_eq(sorted(p.list_keys()), ["x", "y"], "prefix store strips its prefix")


def barrier():
    s = connect()
    s.barrier(k("b1"), 1)
    other = s.clone()
    t = threading.Thread(target=lambda: other.barrier(k("b2"), 2), daemon=True)
    t.start()
    time.sleep(0.2)
    s.barrier(k("b2"), 2, timedelta(seconds=3))
    t.join(3)
    expect(not t.is_alive(), "second party still blocked")
    expect_eq(s.get(k("b2")), b"2", "barrier counter")
    pattern = rf"barrier timeout after 300ms, key: /?{k('b3')}"
    expect_raises(lambda: s.barrier(k("b3"), 2, timedelta(seconds=0.3)), pattern, dist.DistStoreError)
    s.set(k("after_barrier"), "ok")
    expect_eq(s.get(k("after_barrier")), b"ok", "store usable after a barrier timeout")


def clone_store():
    s = connect()
    s.set(k("cl"), "orig")
    c = s.clone()
    expect_eq(c.get(k("cl")), b"orig", "clone sees the original's value")
    later(0.3, s.set, k("cl_wake"), "w")
    expect_eq(c.get(k("cl_wake")), b"w", "clone blocked get woken by the original")


def cancel_wait_then_reuse():
    s = connect()
    s.set_timeout(timedelta(milliseconds=100))
    expect_raises(
        lambda: s.get(f"{NS}nonexistent key"),
        rf"wait timeout after 100ms, keys: /{NS}nonexistent key",
        dist.DistStoreError,
    )
    s.set_timeout(timedelta(seconds=TIMEOUT_S))
    for i in range(3):
        expect_raises(lambda: s.wait([k("cw")], timedelta(milliseconds=50)), r"timeout", dist.DistStoreError)
        s.set(k(f"cw_other{i}"), str(i))
        expect_eq(s.get(k(f"cw_other{i}")), str(i).encode(), "get after cancel")
    s.set(k("cw"), "x")
    expect_eq(s.get(k("cw")), b"x", "get of the key that timed out")


def prefix_store():
    s = connect()
    p = dist.PrefixStore(k("test_prefix"), s)
    p.set("foo", "bar")
    expect_eq(s.get(k("test_prefix") + "/foo"), b"bar", "prefixed key on the underlying store")
    p.multi_set(["a", "b"], ["1", "2"])
    expect_eq(p.multi_get(["b", "a"]), [b"2", b"1"], "prefix multi_get")
    p.append("a", "x")
    expect_eq(p.get("a"), b"1x", "prefix append")
    expect_eq(p.has_extended_api(), True, "has_extended_api through PrefixStore")
    expect_eq(p.num_keys(), s.num_keys(), "prefix num_keys counts the whole store")
    other = dist.PrefixStore(k("test_prefix"), connect())
    later(0.2, other.set, "pw", "v")
    p.wait(["pw"], timedelta(seconds=2))


def attributes():
    s = connect()
    expect_eq(s.host, HOST, "host")
    expect_eq(s.port, PORT, "port")
    expect_eq(s.timeout, timedelta(seconds=TIMEOUT_S), "timeout")
    for name in API["properties"]:
        getattr(s, name)  # every read-only property PyTorch adds must at least be readable


def error_types():
    s = connect()
    err, _ = expect_raises(lambda: s.wait([k("et")], timedelta(milliseconds=50)), r"timeout")
    expect(isinstance(err, dist.DistStoreError), f"wait timeout raised {type(err).__name__}")
    expect_eq(s.has_extended_api(), True, "has_extended_api")


def public_api():
    """TCPStore's public methods and properties in this PyTorch version (inherited from Store included)."""
    methods, properties, funcs = [], [], {}
    for name in sorted(dir(dist.TCPStore)):
        if name.startswith("_"):
            continue
        raw = next((c.__dict__[name] for c in dist.TCPStore.__mro__ if name in c.__dict__), None)
        if isinstance(raw, property):
            properties.append(name)
            continue
        methods.append(name)
        func = getattr(raw, "__func__", None)
        if func is not None:
            funcs[id(func)] = name
    return {"methods": methods, "properties": properties}, funcs


API, API_FUNCS = public_api()
called = set()


def track_calls(frame, event, arg):
    """Profiler hook: records every TCPStore method the cases call (pybind methods raise c_call events)."""
    if event == "c_call":
        name = API_FUNCS.get(id(arg))
        if name is not None:
            called.add(name)


COMMON = [
    attributes,
    set_get_roundtrip,
    binary_empty_unicode_large_values,
    get_woken_by_other_connection,
    wait_needs_every_key,
    many_waiters_woken_by_one_set,
    add_counter,
    pytorch_test_set_get_check,
    add_parses_like_stoll_and_wraps,
    add_non_numeric_breaks_only_that_client,
    compare_set_semantics,
    compare_set_wakes_get,
    delete_key_and_num_keys,
    delete_does_not_wake,
    wait_timeout_then_more_ops,
    wait_timeout_then_key_set_elsewhere,
    set_timeout_then_get,
    world_size_clients,
    many_keys,
    threaded_clients_share_keys,
]
EXTENDED = [
    check_keys,
    append_values,
    multi_set_get,
    queues_fifo,
    queues_nonblocking,
    queues_bidirectional,
    queues_timeout,
    queue_push_wakes_one,
    list_keys,
    barrier,
    clone_store,
    cancel_wait_then_reuse,
    prefix_store,
    error_types,
]


def main():
    only, skip = opt("--only"), opt("--skip") or []
    cases = Cases()
    sys.setprofile(track_calls)
    threading.setprofile(track_calls)
    for fn in COMMON + (EXTENDED if V2 else []):
        if (only is None or fn.__name__ in only) and fn.__name__ not in skip:
            cases.run(fn.__name__, fn)
    sys.setprofile(None)
    threading.setprofile(None)
    emit(
        {
            "result": {
                "torch": torch.__version__,
                "flavor": "v2" if V2 else "v1",
                "init_adds": init_adds,
                "api": {**API, "called": sorted(called)},
                "cases": cases.results,
            }
        }
    )
    sys.stdout.flush()
    # Blocked helper threads (after a failure) must not keep the process alive.
    import os

    os._exit(0)


main()
