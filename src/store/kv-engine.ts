/**
 * The in-memory key-value engine shared by `MemoryStore` and the TCP store server: a flat key map, FIFO
 * queues in their own namespace, and waiter bookkeeping that wakes blocked callers the moment their keys
 * appear (no polling). Synchronous and single-threaded, so every operation is atomic.
 *
 * Waking rules follow PyTorch's libuv server where it is sound (see docs/tcpstore-compat.md): set, add,
 * append, multi-set and a compare-set that creates or changes a key wake all waiters of the key; delete
 * wakes nobody; a queue push wakes one waiter.
 */

import { ErrorCode, StoreError } from "../errors.js";
import { bytesEqual, concatBytes } from "./bytes.js";
import { ShardedMap, type ShardedMapOptions } from "./sharded-map.js";

/** Someone blocked until a set of keys exists. */
export interface Waiter {
  /** Called once, synchronously, when every key it waits for exists. */
  wake(): void;
}

/**
 * Observes changes to the key map: `oldValue` is `undefined` when the key was created, `newValue` is
 * `undefined` when it was deleted. Called synchronously after the change and after waiters were woken.
 */
export type KeyChangeListener = (
  key: string,
  oldValue: Uint8Array | undefined,
  newValue: Uint8Array | undefined,
) => void;

/**
 * A change of one key as a journal records it (see src/store/journal.ts): `set` stands for every write
 * of a whole value (set, add with the new counter, a compare-set that wrote, each key of a multi-set);
 * `append` carries only the appended bytes; `push`/`pop` are queue operations.
 */
export type KeyMutation =
  | { readonly op: "set"; readonly key: string; readonly value: Uint8Array }
  | { readonly op: "append"; readonly key: string; readonly value: Uint8Array }
  | { readonly op: "delete"; readonly key: string }
  | { readonly op: "push"; readonly key: string; readonly value: Uint8Array }
  | { readonly op: "pop"; readonly key: string };

/**
 * A change of the engine's data: one key's, or a `batch` of key mutations that one operation makes at
 * once (a multi-set), which a journal must restore all or nothing of.
 */
export type Mutation = KeyMutation | { readonly op: "batch"; readonly mutations: readonly KeyMutation[] };

/**
 * Called with every mutation before it is applied (and after it was validated): when it throws, the
 * mutation is not applied and the error reaches the caller. A hook that throws because its storage
 * failed (not because of the mutation) throws `StorageFailedError`. It must not call the engine: the
 * operation that calls it holds its key's shard of the key table, which any call may split.
 */
export type MutationHook = (mutation: Mutation) => void;

/**
 * A mutation hook's storage failed (a journal's disk is full, an I/O error): the mutation was neither
 * recorded nor applied, through no fault of the caller. `file` is the file that could not be written.
 */
export class StorageFailedError extends StoreError {
  constructor(
    message: string,
    readonly file: string,
    options?: { cause?: unknown },
  ) {
    super(message, undefined, options);
  }
}

/**
 * A write that would take the engine's data past its byte limit (`KvEngine.limitBytes`); it changed
 * nothing. `RDZV_LIMIT_EXCEEDED`.
 */
export class StoreFullError extends StoreError {
  constructor(
    readonly key: string,
    readonly bytes: number,
    readonly maxBytes: number,
  ) {
    super(
      `store full: writing ${JSON.stringify(key.length > 200 ? `${key.slice(0, 200)}...` : key)} would take ` +
        `the data to ${bytes} bytes, past its limit of ${maxBytes}`,
      ErrorCode.LimitExceeded,
    );
  }
}

/**
 * `add` found a value at `key` that is not a 64-bit integer; the add changed nothing. `reason` is the
 * message without the key: rdzv's TCP server sends it to rdzv's client (tag `Failed`), which names the
 * key as its user wrote it.
 */
export class CounterValueError extends StoreError {
  constructor(
    readonly key: string,
    readonly reason: string,
  ) {
    super(counterErrorMessage(key, reason));
  }
}

/** The message of an add that found no integer, in every store: `add "k": the stored value "x" is not an integer`. */
export function counterErrorMessage(key: string, reason: string): string {
  return `add ${JSON.stringify(key)}: ${reason}`;
}

interface Registration {
  readonly waiter: Waiter;
  readonly pending: Set<string>;
}

const I64_MIN = -(2n ** 63n);
const I64_MAX = 2n ** 63n - 1n;

/**
 * Parses a counter as C++ `std::stoll` does: leading whitespace, optional sign, decimal digits; trailing
 * bytes are ignored. Throws a `CounterValueError` (naming `key`) when there are no digits or the value is out of 64-bit range.
 */
export function parseCounter(value: Uint8Array, key: string): bigint {
  const small = parseSmallCounter(value);
  if (small !== undefined) return BigInt(small);
  let i = 0;
  while (i < value.length && isSpace(value[i]!)) i++;
  const start = i;
  if (value[i] === 0x2b || value[i] === 0x2d) i++;
  const digitsStart = i;
  while (i < value.length && value[i]! >= 0x30 && value[i]! <= 0x39) i++;
  if (i === digitsStart) {
    throw new CounterValueError(key, `the stored value ${describe(value)} is not an integer`);
  }
  const n = BigInt(String.fromCharCode(...value.subarray(start, i)));
  if (n < I64_MIN || n > I64_MAX) {
    throw new CounterValueError(key, `the stored value ${describe(value)} is out of 64-bit range`);
  }
  return n;
}

/**
 * The fast path of `parseCounter` for what this store writes itself: an optional '-' and at most 15
 * digits, nothing else, which a double holds exactly. Undefined for anything else (then `parseCounter`
 * reads it as std::stoll does). No strings or BigInts: ADD is the rendezvous's most frequent request.
 */
function parseSmallCounter(value: Uint8Array): number | undefined {
  const length = value.length;
  if (length > 15) return undefined;
  const negative = value[0] === 0x2d;
  let i = negative ? 1 : 0;
  if (i === length) return undefined;
  let n = 0;
  for (; i < length; i++) {
    const digit = value[i]! - 0x30;
    if (digit < 0 || digit > 9) return undefined;
    n = n * 10 + digit;
  }
  return negative ? -n : n;
}

/** The decimal ASCII of safe integer `n`, as `String(n)` in latin1 but without a string or a Buffer. */
function decimalBytes(n: number): Uint8Array {
  const negative = n < 0;
  let v = negative ? -n : n;
  let digits = 1;
  for (let t = v; t >= 10; t = Math.floor(t / 10)) digits++;
  const out = new Uint8Array(digits + (negative ? 1 : 0));
  let i = out.length;
  do {
    out[--i] = 0x30 + (v % 10);
    v = Math.floor(v / 10);
  } while (v > 0);
  if (negative) out[0] = 0x2d;
  return out;
}

/** Deltas up to this magnitude take ADD's number path (the sum of two such is still a safe integer). */
const SMALL_DELTA = 2 ** 52;

function isSpace(b: number): boolean {
  return b === 0x20 || (b >= 0x09 && b <= 0x0d);
}

function describe(value: Uint8Array): string {
  const text = Buffer.from(value.subarray(0, 32)).toString("latin1");
  return JSON.stringify(value.length > 32 ? `${text}...` : text);
}

/** Wraps `n` to a signed 64-bit integer. */
export function wrapI64(n: bigint): bigint {
  return BigInt.asIntN(64, n);
}

/** Options of a `KvEngine`. */
export interface KvEngineOptions {
  /**
   * How the key table, and the table of keys waited for, split as they grow (see sharded-map.ts;
   * defaults: 256 shards from 8192 keys). For benchmarks and tests; `{ shards: 1 }` is one plain `Map`.
   */
  keyTable?: ShardedMapOptions;
}

/**
 * The store's data and its waiters. The key table is split into shards as it grows (see sharded-map.ts),
 * so that its growth never stalls the caller for long; so keys are listed in no particular order.
 */
export class KvEngine {
  private readonly data: ShardedMap<Uint8Array>;
  private readonly queues = new Map<string, Uint8Array[]>();
  /** Waiters by missing key: as big as the key table can be (a WAIT may name 128k keys), so sharded too. */
  private readonly waitersByKey: ShardedMap<Set<Registration>>;
  private readonly registrations = new Map<Waiter, Registration>();
  private readonly listeners = new Set<KeyChangeListener>();
  private mutationHook: MutationHook | undefined;
  /** The byte limit (`limitBytes`), or undefined for none: then `#bytes` is not kept. */
  #maxBytes: number | undefined;
  /** Bytes of keys and values, queue items included, while a limit is on. */
  #bytes = 0;
  /** Writes pass the limit (`unlimited`): the server's own on-disconnect markers. */
  #bypass = 0;

  /** Throws `RangeError` for a `keyTable` option out of range. */
  constructor(options: KvEngineOptions = {}) {
    this.data = new ShardedMap(options.keyTable);
    this.waitersByKey = new ShardedMap(options.keyTable);
  }

  /** Number of keys (queues excluded). */
  get size(): number {
    return this.data.size;
  }

  /** Number of registered waiters. */
  get waiterCount(): number {
    return this.registrations.size;
  }

  /** The value of `key`, or `undefined`. */
  get(key: string): Uint8Array | undefined {
    return this.data.get(key);
  }

  /** True when `key` exists, or a non-empty queue has that name (as PyTorch's libuv server). */
  has(key: string): boolean {
    return this.data.has(key) || (this.queues.get(key)?.length ?? 0) > 0;
  }

  /** Every key at the call, in no particular order (a copy: the engine may change while it is read). */
  keys(): string[] {
    return this.data.keys();
  }

  /** Every non-empty queue with its items, oldest first (for snapshots; do not modify). */
  queueEntries(): IterableIterator<[string, readonly Uint8Array[]]> {
    return this.queues.entries();
  }

  /**
   * Calls `listener` after every change of a key (set, add, append, a compare-set that creates or swaps,
   * a delete of an existing key; not queue operations). Returns a function that removes the listener.
   */
  onChange(listener: KeyChangeListener): () => void {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  }

  /**
   * From now on, refuses with `StoreFullError` any write that would take the data past `maxBytes`: the
   * lengths of the keys (UTF-16 code units; bytes on a TCP store server, whose keys are byte strings) and
   * of the values, queue items included. Writes that shrink the data or keep its size pass, so data already
   * past the limit (a lowered limit, a restart) stays readable, and deletable. `undefined` lifts the limit.
   * Counts the data once (one pass over it). Throws `RangeError` for a `maxBytes` that is not a positive
   * safe integer.
   */
  limitBytes(maxBytes: number | undefined): void {
    if (maxBytes === undefined) {
      this.#maxBytes = undefined;
      this.#bytes = 0;
      return;
    }
    if (!Number.isSafeInteger(maxBytes) || maxBytes < 1) {
      throw new RangeError(`maxBytes must be a positive integer, got ${String(maxBytes)}`);
    }
    let bytes = 0;
    for (const key of this.data.keys()) bytes += key.length + this.data.get(key)!.length;
    for (const [key, queue] of this.queues) {
      bytes += key.length;
      for (const item of queue) bytes += item.length;
    }
    this.#maxBytes = maxBytes;
    this.#bytes = bytes;
  }

  /** The data's bytes as the limit counts them, while one is on (`limitBytes`); else undefined. */
  get bytes(): number | undefined {
    return this.#maxBytes === undefined ? undefined : this.#bytes;
  }

  /** The byte limit (`limitBytes`), or undefined. */
  get maxBytes(): number | undefined {
    return this.#maxBytes;
  }

  /** Runs `fn` with the byte limit lifted for its writes (which are still counted). */
  unlimited<T>(fn: () => T): T {
    this.#bypass++;
    try {
      return fn();
    } finally {
      this.#bypass--;
    }
  }

  /** Throws `StoreFullError` when growing the data by `growth` bytes (for `key`) would pass the limit. */
  #reserve(key: string, growth: number): void {
    if (growth <= 0 || this.#bypass > 0) return;
    const bytes = this.#bytes + growth;
    if (bytes > this.#maxBytes!) throw new StoreFullError(key, bytes, this.#maxBytes!);
  }

  /** The growth of writing `value` at `key` over `old`. */
  static #growth(key: string, old: Uint8Array | undefined, value: Uint8Array): number {
    return old === undefined ? key.length + value.length : value.length - old.length;
  }

  /** Installs (or with `undefined` removes) the one mutation hook, e.g. a journal. */
  setMutationHook(hook: MutationHook | undefined): void {
    this.mutationHook = hook;
  }

  set(key: string, value: Uint8Array): void {
    this.#setIn(this.data.shard(key), key, value);
  }

  /**
   * Sets every `keys[i]` to `values[i]` as one mutation (a mutation hook sees one `batch`, so a journal
   * restores all of them or none); waiters are woken key by key, as by `set`. Throws `StoreError` when
   * the lengths differ.
   */
  multiSet(keys: readonly string[], values: readonly Uint8Array[]): void {
    if (keys.length !== values.length) {
      throw new StoreError(
        `multiSet: ${keys.length} keys but ${values.length} values`,
        ErrorCode.InvalidArgument,
      );
    }
    const growth = this.#maxBytes === undefined ? 0 : this.#multiSetGrowth(keys, values);
    if (keys.length === 1) this.mutationHook?.({ op: "set", key: keys[0]!, value: values[0]! });
    else if (keys.length > 1 && this.mutationHook !== undefined) {
      const mutations = keys.map((key, i): KeyMutation => ({ op: "set", key, value: values[i]! }));
      this.mutationHook({ op: "batch", mutations });
    }
    for (let i = 0; i < keys.length; i++) this.write(keys[i]!, values[i]!);
    this.#bytes += growth;
  }

  /** The growth of a multi-set (a key named twice counts as written twice, in order); reserved. */
  #multiSetGrowth(keys: readonly string[], values: readonly Uint8Array[]): number {
    const sizes = new Map<string, Uint8Array | undefined>();
    let growth = 0;
    for (let i = 0; i < keys.length; i++) {
      const key = keys[i]!;
      const old = sizes.has(key) ? sizes.get(key) : this.data.get(key);
      growth += KvEngine.#growth(key, old, values[i]!);
      sizes.set(key, values[i]!);
    }
    this.#reserve(keys[0] ?? "", growth);
    return growth;
  }

  /** Adds `delta` to the counter at `key` (missing = 0), wrapping at 64 bits; returns the new value. */
  add(key: string, delta: bigint): bigint {
    const shard = this.data.shard(key);
    const old = shard.get(key);
    // In doubles while everything stays a safe integer (every counter the rendezvous keeps), which is
    // several times cheaper than BigInt arithmetic and its decimal string; the same bytes either way.
    const base = old === undefined ? 0 : parseSmallCounter(old);
    const step = Number(delta);
    if (base !== undefined && step >= -SMALL_DELTA && step <= SMALL_DELTA) {
      const sum = base + step;
      if (Number.isSafeInteger(sum)) {
        this.#setIn(shard, key, decimalBytes(sum));
        return BigInt(sum);
      }
    }
    const sum = wrapI64((old === undefined ? 0n : parseCounter(old, key)) + delta);
    this.#setIn(shard, key, Buffer.from(sum.toString(), "latin1"));
    return sum;
  }

  /** `set` (and an add's new counter), with the key table's shard of `key` at hand. */
  #setIn(shard: Map<string, Uint8Array>, key: string, value: Uint8Array): void {
    if (this.#maxBytes !== undefined) {
      const growth = KvEngine.#growth(key, shard.get(key), value);
      this.#reserve(key, growth);
      this.mutationHook?.({ op: "set", key, value });
      this.writeTo(shard, key, value);
      this.#bytes += growth;
      return;
    }
    this.mutationHook?.({ op: "set", key, value });
    this.writeTo(shard, key, value);
  }

  /** PyTorch compare-set semantics (see `Store.compareSet`). */
  compareSet(key: string, expected: Uint8Array, desired: Uint8Array): Uint8Array {
    const shard = this.data.shard(key);
    const current = shard.get(key);
    if (current === undefined) {
      if (expected.length !== 0) return expected;
    } else if (!bytesEqual(current, expected)) {
      return current;
    }
    const growth = this.#maxBytes === undefined ? 0 : KvEngine.#growth(key, current, desired);
    if (growth > 0) this.#reserve(key, growth);
    this.mutationHook?.({ op: "set", key, value: desired });
    this.writeTo(shard, key, desired);
    this.#bytes += growth;
    return desired;
  }

  append(key: string, value: Uint8Array): void {
    const shard = this.data.shard(key);
    const old = shard.get(key);
    const growth = this.#maxBytes === undefined ? 0 : (old === undefined ? key.length : 0) + value.length;
    if (growth > 0) this.#reserve(key, growth);
    this.mutationHook?.({ op: "append", key, value });
    this.writeTo(shard, key, old === undefined ? value : concatBytes(old, value));
    this.#bytes += growth;
  }

  /** Deletes `key`; true when it existed. Wakes nobody. */
  delete(key: string): boolean {
    const shard = this.data.shard(key);
    const old = shard.get(key);
    if (old === undefined) return false;
    this.mutationHook?.({ op: "delete", key });
    if (this.#maxBytes !== undefined) this.#bytes -= key.length + old.length;
    if (this.listeners.size === 0) return shard.delete(key);
    shard.delete(key);
    this.notify(key, old, undefined);
    return true;
  }

  queuePush(key: string, value: Uint8Array): void {
    const growth = this.#maxBytes === undefined ? 0 : (this.queues.has(key) ? 0 : key.length) + value.length;
    if (growth > 0) this.#reserve(key, growth);
    this.mutationHook?.({ op: "push", key, value });
    this.#bytes += growth;
    let queue = this.queues.get(key);
    if (queue === undefined) {
      queue = [];
      this.queues.set(key, queue);
    }
    queue.push(value);
    this.wakeOne(key);
  }

  /** Removes and returns the head of queue `key`, or `undefined` when empty. */
  queuePop(key: string): Uint8Array | undefined {
    const queue = this.queues.get(key);
    if (queue !== undefined && queue.length > 0) this.mutationHook?.({ op: "pop", key });
    const value = queue?.shift();
    if (this.#maxBytes !== undefined && value !== undefined) this.#bytes -= value.length;
    if (queue !== undefined && queue.length === 0) {
      this.queues.delete(key);
      if (this.#maxBytes !== undefined) this.#bytes -= key.length;
    }
    return value;
  }

  queueLen(key: string): number {
    return this.queues.get(key)?.length ?? 0;
  }

  /**
   * Registers `waiter` until every key in `keys` exists. Returns true (and registers nothing) when they all
   * exist already. A waiter may hold one registration at a time; registering again replaces the old one.
   */
  addWaiter(keys: Iterable<string>, waiter: Waiter): boolean {
    this.removeWaiter(waiter);
    // Made only for a missing key: most waits find their keys there already.
    let pending: Set<string> | undefined;
    for (const key of keys) {
      if (this.has(key)) continue;
      pending ??= new Set();
      pending.add(key);
    }
    if (pending === undefined) return true;
    const reg: Registration = { waiter, pending };
    this.registrations.set(waiter, reg);
    for (const key of pending) {
      let set = this.waitersByKey.get(key);
      if (set === undefined) {
        set = new Set();
        this.waitersByKey.set(key, set);
      }
      set.add(reg);
    }
    return false;
  }

  /** Drops `waiter`'s registration, if any; true when there was one. */
  removeWaiter(waiter: Waiter): boolean {
    const reg = this.registrations.get(waiter);
    if (reg === undefined) return false;
    this.registrations.delete(waiter);
    for (const key of reg.pending) this.unlink(key, reg);
    return true;
  }

  /** Stores `value` at `key`, wakes the key's waiters, then tells the listeners. */
  private write(key: string, value: Uint8Array): void {
    this.writeTo(this.data.shard(key), key, value);
  }

  /** `write`, with the key table's shard of `key` at hand. */
  private writeTo(shard: Map<string, Uint8Array>, key: string, value: Uint8Array): void {
    const old = this.listeners.size === 0 ? undefined : shard.get(key);
    shard.set(key, value);
    this.wakeAll(key);
    if (this.listeners.size !== 0) this.notify(key, old, value);
  }

  private notify(key: string, oldValue: Uint8Array | undefined, newValue: Uint8Array | undefined): void {
    for (const listener of this.listeners) listener(key, oldValue, newValue);
  }

  private unlink(key: string, reg: Registration): void {
    const set = this.waitersByKey.get(key);
    if (set === undefined) return;
    set.delete(reg);
    if (set.size === 0) this.waitersByKey.delete(key);
  }

  private wakeAll(key: string): void {
    const set = this.waitersByKey.get(key);
    if (set === undefined) return;
    this.waitersByKey.delete(key);
    for (const reg of set) this.satisfy(reg, key);
  }

  private wakeOne(key: string): void {
    const set = this.waitersByKey.get(key);
    if (set === undefined) return;
    for (const reg of set) {
      this.unlink(key, reg);
      this.satisfy(reg, key);
      return;
    }
  }

  private satisfy(reg: Registration, key: string): void {
    reg.pending.delete(key);
    if (reg.pending.size > 0) return;
    this.registrations.delete(reg.waiter);
    reg.waiter.wake();
  }
}
