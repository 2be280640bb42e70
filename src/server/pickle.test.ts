import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { describe, it } from "node:test";
import { promisify } from "node:util";
import fc from "fast-check";
import { ErrorCode } from "../errors.js";
import { isKind, MAX_LONG_BYTES, MAX_PICKLE_OPS, PickleError, type PyValue, readPickle } from "./pickle.js";

const run = promisify(execFile);

/**
 * Python (stdlib only) pickles values with every protocol 2..5 and prints each pickle beside a tagged
 * JSON rendering of the value, so the reader is checked against CPython's own encoder.
 */
const GENERATOR = String.raw`
import base64, json, pickle
def tag(v):
    if v is None or isinstance(v, bool): return v
    if isinstance(v, int): return {"int": str(v)}
    if isinstance(v, float): return {"float": v}
    if isinstance(v, str): return {"str": v}
    if isinstance(v, bytes): return {"bytes": base64.b64encode(v).decode()}
    if isinstance(v, (list, tuple)): return {"list": [tag(x) for x in v]}
    if isinstance(v, dict): return {"dict": [[tag(k), tag(x)] for k, x in v.items()]}
    if isinstance(v, (set, frozenset)): return {"set": [tag(x) for x in v]}
    raise TypeError(type(v))
shared = [1, "x"]
plain = [0, 1, 255, 256, 65535, 65536, -1, -129, 2**31 - 1, -2**31, 2**31, 2**53 + 1, -2**70, 2**2100,
         1.5, -0.25, 1e300, "", "héllo wörld ✓", "x" * 300, None, True, False,
         (), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4), [], list(range(20)), {}, {"a": 1, (1, 2): [3], 7: None},
         [shared, shared, (shared,)], {"nested": {"deeper": [{"k": (1.0, "v")}]}}]
rich = plain + [b"", b"\x00\xff" * 200, {1, 2, "three"}, frozenset({4, 5}), set(), {"s": {(1, 2)}}]
out = []
for proto in (2, 3, 4, 5):
    values = rich if proto >= 4 else plain + ([b"\x01\x02"] if proto == 3 else [])
    for v in values:
        out.append({"proto": proto, "pickle": base64.b64encode(pickle.dumps(v, protocol=proto)).decode(), "expect": tag(v)})
print(json.dumps(out))
`;

type Tagged =
  | null
  | boolean
  | { int: string }
  | { float: number }
  | { str: string }
  | { bytes: string }
  | { list: Tagged[] }
  | { dict: [Tagged, Tagged][] }
  | { set: Tagged[] };

function tag(v: PyValue): Tagged {
  if (v === null || typeof v === "boolean") return v;
  if (typeof v === "bigint") return { int: v.toString() };
  if (typeof v === "number")
    return Number.isInteger(v) && !Object.is(v, -0) ? { int: String(v) } : { float: v };
  if (typeof v === "string") return { str: v };
  if (v instanceof Uint8Array) return { bytes: Buffer.from(v).toString("base64") };
  if (Array.isArray(v)) return { list: v.map(tag) };
  if (isKind(v, "dict")) return { dict: v.entries.map(([k, x]) => [tag(k), tag(x)]) };
  if (isKind(v, "set")) return { set: v.items.map(tag) };
  throw new Error(`unexpected ${JSON.stringify(v)}`);
}

/** Python's floats that are whole numbers come back tagged "float"; JS numbers cannot tell. */
function normalize(t: Tagged): Tagged {
  if (t === null || typeof t === "boolean") return t;
  if ("float" in t && Number.isInteger(t.float)) return { int: String(t.float) };
  if ("list" in t) return { list: t.list.map(normalize) };
  if ("set" in t) return { set: t.set.map(normalize) };
  if ("dict" in t) return { dict: t.dict.map(([k, v]) => [normalize(k), normalize(v)]) };
  return t;
}

describe("readPickle", () => {
  it("reads what CPython's pickle writes, protocols 2 to 5", async () => {
    const { stdout } = await run("/usr/bin/python3", ["-c", GENERATOR], { maxBuffer: 64 * 1024 * 1024 });
    const cases = JSON.parse(stdout) as { proto: number; pickle: string; expect: Tagged }[];
    assert.ok(cases.length > 100, `only ${cases.length} cases`);
    for (const c of cases) {
      const got = readPickle(Buffer.from(c.pickle, "base64"));
      assert.deepEqual(
        normalize(tag(got)),
        normalize(c.expect),
        `protocol ${c.proto}: ${JSON.stringify(c.expect)}`,
      );
    }
  });

  it("keeps objects inert: globals are names, REDUCE/NEWOBJ/BUILD are records", async () => {
    const script = [
      "import base64, pickle, datetime",
      "class Point:",
      "    def __init__(self): self.x, self.y = 1, 'two'",
      "print(base64.b64encode(pickle.dumps([Point(), datetime.date(2024, 2, 29), __import__('os').system], protocol=4)).decode())",
    ].join("\n");
    const { stdout } = await run("/usr/bin/python3", ["-c", script]);
    const [point, date, system] = readPickle(Buffer.from(stdout.trim(), "base64")) as PyValue[];
    assert.ok(isKind(point, "object"));
    assert.deepEqual(point.cls, { kind: "global", module: "__main__", name: "Point" });
    assert.ok(isKind(point.state, "dict"));
    assert.deepEqual(point.state.entries, [
      ["x", 1],
      ["y", "two"],
    ]);
    assert.ok(isKind(date, "object"));
    assert.deepEqual(date.cls, { kind: "global", module: "datetime", name: "date" });
    assert.deepEqual(date.args, [Uint8Array.from([0x07, 0xe8, 2, 29])]);
    // A function reference is a name and nothing more: nothing is looked up, let alone called.
    assert.deepEqual(system, { kind: "global", module: "posix", name: "system" });
  });

  it("rejects protocol 0/1 text pickles and unknown opcodes with RDZV_STATE, naming them", () => {
    assert.throws(
      () => readPickle(Buffer.from("(lp0\nI1\na.", "latin1")),
      (err: unknown) => {
        assert.ok(err instanceof PickleError);
        assert.equal(err.code, ErrorCode.State);
        assert.match(err.message, /opcode 0x28|opcode 0x6c|unsupported/);
        return true;
      },
    );
    assert.throws(() => readPickle(Uint8Array.from([0x80, 0x01, 0x4e, 0x2e])), /protocol 1 is not supported/);
    assert.throws(() => readPickle(Uint8Array.from([0x80, 0x04, 0xff, 0x2e])), /unsupported opcode 0xff/);
    assert.throws(() => readPickle(Uint8Array.from([0x80, 0x04, 0x68, 0x05, 0x2e])), /memo 5 is not set/);
    assert.throws(() => readPickle(Uint8Array.from([0x80, 0x04, 0x4e, 0x4e, 0x2e])), /STOP with a bad stack/);
  });

  it("reads or rejects hostile pickles in bounded time and memory, with a PickleError naming the problem", () => {
    const pickle = (...parts: (number[] | Buffer)[]): Buffer =>
      Buffer.concat([Buffer.from([0x80, 2]), ...parts.map((p) => Buffer.from(p)), Buffer.from([0x2e])]);
    // A LONG4 of 1 MiB: before, a shift loop quadratic in its length ran for minutes.
    const long4 = Buffer.alloc(5 + 1024 * 1024);
    long4[0] = 0x8b;
    long4.writeUInt32LE(1024 * 1024, 1);
    assert.throws(() => readPickle(pickle(long4)), {
      code: ErrorCode.State,
      message: /bad pickle at byte 2: an int of 1048576 bytes \(more than 1024\)/,
    });
    const longest = Buffer.alloc(5 + MAX_LONG_BYTES, 0xff);
    longest[0] = 0x8b;
    longest.writeUInt32LE(MAX_LONG_BYTES, 1);
    assert.equal(readPickle(pickle(longest)), -1);
    // More opcodes than any real state (before: 30 million EMPTY_DICTs took 23 s and 3.3 GB).
    const dicts = pickle([0x28], Buffer.alloc(MAX_PICKLE_OPS, 0x7d), [0x6c]);
    assert.throws(() => readPickle(dicts), {
      code: ErrorCode.State,
      message: new RegExp(`more than ${MAX_PICKLE_OPS} opcodes`),
    });
    // One APPENDS of 300,000 items (before: RangeError, the call stack overflowed by a spread).
    const items = readPickle(pickle([0x5d, 0x28], Buffer.alloc(300_000, 0x4e), [0x65]));
    assert.ok(Array.isArray(items) && items.length === 300_000);
    // Nesting 200,000 deep: the reader keeps its own stack, nothing recurses.
    const depth = 200_000;
    let deep = readPickle(pickle(Buffer.alloc(depth, 0x5d), Buffer.alloc(depth - 1, 0x61)));
    for (let d = 1; d < depth; d++) deep = (deep as PyValue[])[0]!;
    assert.deepEqual(deep, []);
    // A list holding itself (DUP, APPEND) is read as such; nothing walks it.
    const self = readPickle(pickle([0x5d, 0x32, 0x61])) as PyValue[];
    assert.equal(self[0], self);
  });

  it("fails every truncation of a real pickle with a PickleError", async () => {
    const { stdout } = await run("/usr/bin/python3", [
      "-c",
      "import base64,pickle;print(base64.b64encode(pickle.dumps({'a':[1,2.5,'x'*300,b'y'*300,{3},(None,True)]},protocol=4)).decode())",
    ]);
    const bytes = Buffer.from(stdout.trim(), "base64");
    readPickle(bytes);
    for (let n = 0; n < bytes.length; n++) {
      assert.throws(() => readPickle(bytes.subarray(0, n)), PickleError, `prefix of ${n} bytes`);
    }
  });

  it("throws only PickleErrors on arbitrary bytes (fuzz)", () => {
    const opcodes = [
      0x80, 0x95, 0x28, 0x94, 0x71, 0x68, 0x4e, 0x4b, 0x8a, 0x8c, 0x43, 0x29, 0x85, 0x74, 0x5d,
    ];
    const more = [
      0x61, 0x65, 0x7d, 0x73, 0x75, 0x8f, 0x90, 0x91, 0x93, 0x52, 0x81, 0x92, 0x62, 0x30, 0x31, 0x2e,
    ];
    const byte = fc.oneof(fc.integer({ min: 0, max: 255 }), fc.constantFrom(...opcodes, ...more));
    fc.assert(
      fc.property(fc.array(byte, { maxLength: 64 }), (arr) => {
        try {
          readPickle(Uint8Array.from([0x80, 0x04, ...arr]));
        } catch (err) {
          if (!(err instanceof PickleError)) throw err;
        }
      }),
      { numRuns: 20_000 },
    );
  });
});
