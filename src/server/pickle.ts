/**
 * A safe reader for Python pickles (protocols 2 to 5): it builds inert values and never runs anything.
 * Globals become `PyGlobal` names, and `REDUCE` / `NEWOBJ` / `BUILD` become `PyObject` records (class,
 * arguments, state) that the caller interprets, so a hostile pickle can at worst be rejected. Used to show
 * the `_RendezvousState` that PyTorch's own dynamic rendezvous keeps in a store (see torch-state.ts).
 *
 * Covers the binary opcodes `pickle.dumps` emits for plain data and objects; text-mode (protocol 0/1)
 * opcodes such as `PUT`, `GET`, `INT` or `STRING` are rejected with a `PickleError` naming them.
 */

import { RendezvousStateError } from "../errors.js";

/** A Python `module.name` reference (never imported). */
export interface PyGlobal {
  readonly kind: "global";
  readonly module: string;
  readonly name: string;
}

/** An object made by `REDUCE`, `NEWOBJ` or `NEWOBJ_EX`, with the state `BUILD` gave it. */
export interface PyObject {
  readonly kind: "object";
  readonly cls: PyValue;
  readonly args: readonly PyValue[];
  state: PyValue | undefined;
}

/** A dict: keys may be any value (PyTorch keys dicts by `_NodeDesc` objects). */
export interface PyDict {
  readonly kind: "dict";
  readonly entries: [PyValue, PyValue][];
}

/** A set or frozenset. */
export interface PySet {
  readonly kind: "set";
  readonly items: PyValue[];
}

/** What the reader yields: `null` is `None`; tuples and lists are arrays; ints beyond 2^53 are bigints. */
export type PyValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | Uint8Array
  | PyValue[]
  | PyDict
  | PySet
  | PyGlobal
  | PyObject;

/** Malformed or unsupported pickle bytes (code `RDZV_STATE`). */
export class PickleError extends RendezvousStateError {}

const MARK = Symbol("mark");
type Item = PyValue | typeof MARK;

/** Largest pickle accepted, bytes (PyTorch's state for 10,000 nodes is ~1 MB). */
export const MAX_PICKLE_BYTES = 64 * 1024 * 1024;

/**
 * Most opcodes run per pickle: PyTorch's state for 10,000 nodes has ~190,000 (580 KB). Each opcode makes
 * at most one value, so this bounds the reader's time and memory (~110 bytes a value at worst: a pickle
 * of 30 million EMPTY_DICTs took 23 s and 3.3 GB before).
 */
export const MAX_PICKLE_OPS = 2_000_000;

/**
 * Longest `LONG1` / `LONG4` integer read, bytes (8192 bits; PyTorch's state holds small ints). A 1 MiB
 * LONG4 ran for minutes before (a quadratic shift loop); now it is refused, and shorter ones are read in
 * linear time.
 */
export const MAX_LONG_BYTES = 1024;

/**
 * Reads one pickle from `bytes`. Throws `PickleError` on anything malformed or unsupported, and on a
 * pickle past `MAX_PICKLE_BYTES`, `MAX_PICKLE_OPS` or `MAX_LONG_BYTES`: in time and memory linear in
 * those bounds whatever the bytes (the reader never recurses, so nesting depth costs no stack).
 */
export function readPickle(bytes: Uint8Array): PyValue {
  if (bytes.length > MAX_PICKLE_BYTES) throw new PickleError(`pickle of ${bytes.length} bytes is too large`);
  return new Reader(bytes).run();
}

class Reader {
  private pos = 0;
  private readonly stack: Item[] = [];
  private readonly marks: number[] = [];
  private readonly memo = new Map<number, PyValue>();
  private readonly view: DataView;

  constructor(private readonly bytes: Uint8Array) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  run(): PyValue {
    for (let ops = 0; ; ops++) {
      const at = this.pos;
      if (ops >= MAX_PICKLE_OPS) {
        this.fail(at, `more than ${MAX_PICKLE_OPS} opcodes (PyTorch's state for 10,000 nodes has ~190,000)`);
      }
      const op = this.u8();
      if (op === 0x2e /* STOP */) {
        if (this.stack.length !== 1 || this.marks.length !== 0) this.fail(at, "STOP with a bad stack");
        return this.pop(at);
      }
      this.step(op, at);
    }
  }

  private step(op: number, at: number): void {
    const s = this.stack;
    switch (op) {
      case 0x80 /* PROTO */:
        {
          const proto = this.u8();
          if (proto < 2 || proto > 5) this.fail(at, `pickle protocol ${proto} is not supported (2..5)`);
          return;
        }
      case 0x95 /* FRAME */:
        this.take(8);
        return;
      case 0x28 /* MARK */:
        this.marks.push(s.length);
        s.push(MARK);
        return;
      case 0x94 /* MEMOIZE */:
        this.memo.set(this.memo.size, this.top(at));
        return;
      case 0x71 /* BINPUT */:
        this.memo.set(this.u8(), this.top(at));
        return;
      case 0x72 /* LONG_BINPUT */:
        this.memo.set(this.u32(), this.top(at));
        return;
      case 0x68 /* BINGET */:
        this.get(this.u8(), at);
        return;
      case 0x6a /* LONG_BINGET */:
        this.get(this.u32(), at);
        return;
      case 0x4e /* NONE */:
        s.push(null);
        return;
      case 0x88 /* NEWTRUE */:
        s.push(true);
        return;
      case 0x89 /* NEWFALSE */:
        s.push(false);
        return;
      case 0x4b /* BININT1 */:
        s.push(this.u8());
        return;
      case 0x4d /* BININT2 */:
        s.push(this.u8() | (this.u8() << 8));
        return;
      case 0x4a /* BININT */:
        s.push(this.view.getInt32(this.advance(4), true));
        return;
      case 0x8a /* LONG1 */:
        s.push(this.long(this.u8(), at));
        return;
      case 0x8b /* LONG4 */:
        s.push(this.long(this.u32(), at));
        return;
      case 0x47 /* BINFLOAT */:
        s.push(this.view.getFloat64(this.advance(8), false));
        return;
      case 0x8c /* SHORT_BINUNICODE */:
        s.push(this.text(this.u8()));
        return;
      case 0x58 /* BINUNICODE */:
        s.push(this.text(this.u32()));
        return;
      case 0x8d /* BINUNICODE8 */:
        s.push(this.text(this.u64()));
        return;
      case 0x43 /* SHORT_BINBYTES */:
        s.push(this.bytesOf(this.u8()));
        return;
      case 0x42 /* BINBYTES */:
        s.push(this.bytesOf(this.u32()));
        return;
      case 0x8e /* BINBYTES8 */:
        s.push(this.bytesOf(this.u64()));
        return;
      case 0x29 /* EMPTY_TUPLE */:
      case 0x5d /* EMPTY_LIST */:
        s.push([]);
        return;
      case 0x85 /* TUPLE1 */:
      case 0x86 /* TUPLE2 */:
      case 0x87 /* TUPLE3 */:
        {
          const n = op - 0x84;
          if (s.length < n) this.fail(at, "tuple of missing items");
          s.push(this.values(s.splice(s.length - n, n), at));
          return;
        }
      case 0x74 /* TUPLE */:
      case 0x6c /* LIST */:
        s.push(this.popMark(at));
        return;
      case 0x61 /* APPEND */:
        {
          const v = this.pop(at);
          this.list(at).push(v);
          return;
        }
      case 0x65 /* APPENDS */:
        {
          const items = this.popMark(at);
          pushAll(this.list(at), items);
          return;
        }
      case 0x7d /* EMPTY_DICT */:
        s.push({ kind: "dict", entries: [] });
        return;
      case 0x64 /* DICT */:
        s.push({ kind: "dict", entries: pairs(this.popMark(at), at, this) });
        return;
      case 0x73 /* SETITEM */:
        {
          const v = this.pop(at);
          const k = this.pop(at);
          this.dict(at).entries.push([k, v]);
          return;
        }
      case 0x75 /* SETITEMS */:
        {
          const items = this.popMark(at);
          pushAll(this.dict(at).entries, pairs(items, at, this));
          return;
        }
      case 0x8f /* EMPTY_SET */:
        s.push({ kind: "set", items: [] });
        return;
      case 0x90 /* ADDITEMS */:
        {
          const items = this.popMark(at);
          const set = this.top(at);
          if (!isKind(set, "set")) this.fail(at, "ADDITEMS on a non-set");
          pushAll(set.items, items);
          return;
        }
      case 0x91 /* FROZENSET */:
        s.push({ kind: "set", items: this.popMark(at) });
        return;
      case 0x93 /* STACK_GLOBAL */:
        {
          const name = this.pop(at);
          const module = this.pop(at);
          if (typeof module !== "string" || typeof name !== "string")
            this.fail(at, "STACK_GLOBAL of non-strings");
          s.push({ kind: "global", module, name });
          return;
        }
      case 0x63 /* GLOBAL */:
        s.push({ kind: "global", module: this.line(), name: this.line() });
        return;
      case 0x52 /* REDUCE */:
      case 0x81 /* NEWOBJ */:
        {
          const args = this.pop(at);
          if (!Array.isArray(args)) this.fail(at, "REDUCE/NEWOBJ arguments are not a tuple");
          s.push({ kind: "object", cls: this.pop(at), args, state: undefined });
          return;
        }
      case 0x92 /* NEWOBJ_EX */:
        {
          this.pop(at); // keyword arguments: kept out of the record, nothing PyTorch pickles uses them
          const args = this.pop(at);
          if (!Array.isArray(args)) this.fail(at, "NEWOBJ_EX arguments are not a tuple");
          s.push({ kind: "object", cls: this.pop(at), args, state: undefined });
          return;
        }
      case 0x62 /* BUILD */:
        {
          const state = this.pop(at);
          const obj = this.top(at);
          if (!isKind(obj, "object")) this.fail(at, "BUILD on a non-object");
          obj.state = state;
          return;
        }
      case 0x30 /* POP */:
        if (s[s.length - 1] === MARK) this.popMark(at);
        else this.pop(at);
        return;
      case 0x31 /* POP_MARK */:
        this.popMark(at);
        return;
      case 0x32 /* DUP */:
        s.push(this.top(at));
        return;
      default:
        this.fail(at, `unsupported opcode 0x${op.toString(16).padStart(2, "0")}`);
    }
  }

  private get(index: number, at: number): void {
    const v = this.memo.get(index);
    if (v === undefined) this.fail(at, `memo ${index} is not set`);
    this.stack.push(v);
  }

  private pop(at: number): PyValue {
    const v = this.stack.pop();
    if (v === undefined || v === MARK) this.fail(at, "stack underflow");
    return v;
  }

  private top(at: number): PyValue {
    const v = this.stack[this.stack.length - 1];
    if (v === undefined || v === MARK) this.fail(at, "stack underflow");
    return v;
  }

  private popMark(at: number): PyValue[] {
    const m = this.marks.pop();
    if (m === undefined) this.fail(at, "no MARK on the stack");
    return this.values(this.stack.splice(m).slice(1), at);
  }

  private values(items: Item[], at: number): PyValue[] {
    if (items.includes(MARK)) this.fail(at, "MARK inside a collection");
    return items as PyValue[];
  }

  private list(at: number): PyValue[] {
    const l = this.top(at);
    if (!Array.isArray(l)) this.fail(at, "APPEND on a non-list");
    return l;
  }

  private dict(at: number): PyDict {
    const d = this.top(at);
    if (!isKind(d, "dict")) this.fail(at, "SETITEM on a non-dict");
    return d;
  }

  private advance(n: number): number {
    if (this.pos + n > this.bytes.length) this.fail(this.pos, "truncated pickle");
    const at = this.pos;
    this.pos += n;
    return at;
  }

  private take(n: number): Uint8Array {
    const at = this.advance(n);
    return this.bytes.subarray(at, at + n);
  }

  /** A copy, as a plain Uint8Array (the input may be a Buffer, whose slices share memory). */
  private bytesOf(n: number): Uint8Array {
    return new Uint8Array(this.take(n));
  }

  private u8(): number {
    return this.bytes[this.advance(1)]!;
  }

  private u32(): number {
    return this.view.getUint32(this.advance(4), true);
  }

  private u64(): number {
    const n = this.view.getBigUint64(this.advance(8), true);
    if (n > BigInt(this.bytes.length)) this.fail(this.pos - 8, "length beyond the end of the pickle");
    return Number(n);
  }

  private text(n: number): string {
    return Buffer.from(this.take(n)).toString("utf8");
  }

  private line(): string {
    const end = this.bytes.indexOf(0x0a, this.pos);
    if (end < 0) this.fail(this.pos, "unterminated GLOBAL");
    return this.text(end - this.pos + 1).slice(0, -1);
  }

  /** A little-endian two's-complement integer of `n` bytes (`MAX_LONG_BYTES` at most). */
  private long(n: number, at: number): number | bigint {
    if (n > MAX_LONG_BYTES) this.fail(at, `an int of ${n} bytes (more than ${MAX_LONG_BYTES})`);
    const b = this.take(n);
    if (n === 0) return 0;
    let v = BigInt(`0x${Buffer.from(b).reverse().toString("hex")}`);
    if ((b[n - 1]! & 0x80) !== 0) v -= 1n << BigInt(8 * n);
    return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
  }

  fail(at: number, what: string): never {
    throw new PickleError(`bad pickle at byte ${at}: ${what}`);
  }
}

/** Appends `items` one by one (a spread of a million items overflows the call stack). */
function pushAll<T>(to: T[], items: readonly T[]): void {
  for (const item of items) to.push(item);
}

function pairs(items: PyValue[], at: number, reader: Reader): [PyValue, PyValue][] {
  if (items.length % 2 !== 0) reader.fail(at, "odd number of dict items");
  const out: [PyValue, PyValue][] = [];
  for (let i = 0; i < items.length; i += 2) out.push([items[i]!, items[i + 1]!]);
  return out;
}

/** Narrows `v` to the record of `kind`. */
export function isKind<K extends "dict" | "set" | "global" | "object">(
  v: PyValue | undefined,
  kind: K,
): v is Extract<PyValue, { kind: K }> {
  return typeof v === "object" && v !== null && !Array.isArray(v) && "kind" in v && v.kind === kind;
}
