"""Shared plumbing of rdzv's PyTorch driver scripts.

Drivers talk to the TypeScript tests over stdout: every machine-readable line starts with MARK and holds
one JSON object, so torch's own noise (warnings, logs) on stdout or stderr never confuses the parser.
Bytes travel as {"b64": ...}; timedeltas as {"td": seconds}.
"""

import base64
import datetime
import json
import sys
import time
import traceback
import warnings

MARK = "@@rdzv "


def emit(obj):
    sys.stdout.write(MARK + json.dumps(obj) + "\n")
    sys.stdout.flush()


def load_torch():
    """Imports torch.distributed quietly; returns (torch, dist)."""
    warnings.filterwarnings("ignore")
    import torch
    import torch.distributed as dist

    return torch, dist


def torch_major(torch):
    return int(torch.__version__.split(".")[0])


def to_json(value):
    if isinstance(value, (bytes, bytearray)):
        return {"b64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, datetime.timedelta):
        return {"td": value.total_seconds()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def from_json(value):
    if isinstance(value, dict):
        if "b64" in value:
            return base64.b64decode(value["b64"])
        if "td" in value:
            return datetime.timedelta(seconds=value["td"])
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def describe_error(err):
    return {
        "type": type(err).__name__,
        "mro": [c.__name__ for c in type(err).__mro__],
        "message": str(err),
    }


class Cases:
    """Runs named checks one after another and collects pass/fail with the failure's detail."""

    def __init__(self):
        self.results = []

    def run(self, name, fn, *args):
        started = time.monotonic()
        entry = {"name": name}
        try:
            fn(*args)
            entry["ok"] = True
        except Exception as err:  # noqa: BLE001 - every failure is reported, none is fatal
            entry["ok"] = False
            entry["error"] = describe_error(err)
            entry["traceback"] = traceback.format_exc(limit=6)
        entry["ms"] = round((time.monotonic() - started) * 1000, 1)
        self.results.append(entry)
        emit({"event": "case", "name": name, "ok": entry["ok"]})


def expect(cond, message):
    if not cond:
        raise AssertionError(message)


def expect_eq(actual, expected, what):
    if actual != expected:
        raise AssertionError(f"{what}: expected {expected!r}, got {actual!r}")


def expect_raises(fn, pattern=None, types=None):
    """Calls fn, which must raise; returns (error, seconds taken)."""
    import re

    started = time.monotonic()
    try:
        fn()
    except Exception as err:  # noqa: BLE001
        took = time.monotonic() - started
        if types is not None and not isinstance(err, types):
            raise AssertionError(f"expected {types}, got {type(err).__name__}: {err}") from err
        if pattern is not None and not re.search(pattern, str(err)):
            raise AssertionError(f"error {str(err)!r} does not match {pattern!r}") from err
        return err, took
    raise AssertionError("expected an exception, none was raised")
