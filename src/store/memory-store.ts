/** An in-process `Store`, for tests and single-process jobs. */

import { ErrorCode, RendezvousError, RendezvousTimeoutError, StoreError } from "../errors.js";
import { checkKey, toBytes } from "./bytes.js";
import { blockingCall, checkTimeoutMs, keysTimeoutMessage, throwIfAborted } from "./deadline.js";
import { KvEngine, type Waiter } from "./kv-engine.js";
import {
  type CallOptions,
  DEFAULT_STORE_TIMEOUT_MS,
  type QueuePopOptions,
  type QueueStore,
  type StoreValue,
} from "./store.js";

/** Options of `MemoryStore`. */
export interface MemoryStoreOptions {
  /** Default timeout of blocking calls (default 300 000 ms, as PyTorch). */
  timeoutMs?: number;
}

/**
 * A `Store` held in this process's memory. Blocking calls are woken the moment their keys appear.
 * Several handles may share one engine (`new MemoryStore({}, other.engine)`) to model several clients.
 */
export class MemoryStore implements QueueStore {
  #timeoutMs: number;
  #closed = false;
  readonly engine: KvEngine;

  constructor(options: MemoryStoreOptions = {}, engine: KvEngine = new KvEngine()) {
    this.#timeoutMs = checkTimeoutMs(options.timeoutMs ?? DEFAULT_STORE_TIMEOUT_MS, "timeoutMs");
    this.engine = engine;
  }

  get timeoutMs(): number {
    return this.#timeoutMs;
  }

  set timeoutMs(value: number) {
    this.#timeoutMs = checkTimeoutMs(value, "timeoutMs");
  }

  async set(key: string, value: StoreValue, options?: CallOptions): Promise<void> {
    this.enter(options, key);
    this.engine.set(key, toBytes(value));
  }

  async get(key: string, options?: CallOptions): Promise<Uint8Array> {
    await this.#wait("get", [key], options);
    const value = this.engine.get(key);
    if (value === undefined)
      throw new StoreError(`get: key ${JSON.stringify(key)} was deleted while waiting`);
    return value;
  }

  async add(key: string, delta: number, options?: CallOptions): Promise<number> {
    this.enter(options, key);
    return Number(this.engine.add(key, toI64(delta)));
  }

  async compareSet(
    key: string,
    expected: StoreValue,
    desired: StoreValue,
    options?: CallOptions,
  ): Promise<Uint8Array> {
    this.enter(options, key);
    return this.engine.compareSet(key, toBytes(expected), toBytes(desired));
  }

  async wait(keys: readonly string[], options?: CallOptions): Promise<void> {
    await this.#wait("wait", keys, options);
  }

  /** Until every one of `keys` exists, for the call's timeout; a timeout names `op`. */
  async #wait(op: string, keys: readonly string[], options: CallOptions | undefined): Promise<void> {
    this.enter(options, keys);
    const timeoutMs = checkTimeoutMs(options?.timeoutMs ?? this.#timeoutMs);
    await this.#waitFor(op, keys, options?.signal, timeoutMs, timeoutMs);
  }

  /** Until every one of `keys` exists, for `leftMs`; a timeout says `op` and the call's whole `timeoutMs`. */
  async #waitFor(
    op: string,
    keys: readonly string[],
    signal: AbortSignal | undefined,
    leftMs: number,
    timeoutMs: number,
  ): Promise<void> {
    let waiter: Waiter | undefined;
    await blockingCall<void>(
      signal === undefined ? { timeoutMs: leftMs } : { timeoutMs: leftMs, signal },
      leftMs,
      () => keysTimeoutMessage(op, keys)(timeoutMs),
      (resolve) => {
        waiter = { wake: () => resolve() };
        if (this.engine.addWaiter(keys, waiter)) resolve();
      },
      () => {
        if (waiter !== undefined) this.engine.removeWaiter(waiter);
      },
    );
  }

  async check(keys: readonly string[], options?: CallOptions): Promise<boolean> {
    this.enter(options, keys);
    return keys.every((key) => this.engine.has(key));
  }

  async deleteKey(key: string, options?: CallOptions): Promise<boolean> {
    this.enter(options, key);
    return this.engine.delete(key);
  }

  async numKeys(options?: CallOptions): Promise<number> {
    this.enter(options);
    return this.engine.size;
  }

  async multiGet(keys: readonly string[], options?: CallOptions): Promise<Uint8Array[]> {
    await this.#wait("multiGet", keys, options);
    return keys.map((key) => {
      const value = this.engine.get(key);
      if (value === undefined)
        throw new StoreError(`multiGet: key ${JSON.stringify(key)} was deleted while waiting`);
      return value;
    });
  }

  async multiSet(
    keys: readonly string[],
    values: readonly StoreValue[],
    options?: CallOptions,
  ): Promise<void> {
    this.enter(options, keys);
    checkSameLength(keys, values);
    this.engine.multiSet(keys, values.map(toBytes));
  }

  async append(key: string, value: StoreValue, options?: CallOptions): Promise<void> {
    this.enter(options, key);
    this.engine.append(key, toBytes(value));
  }

  async listKeys(options?: CallOptions): Promise<string[]> {
    this.enter(options);
    return this.engine.keys();
  }

  async queuePush(key: string, value: StoreValue, options?: CallOptions): Promise<void> {
    this.enter(options, key);
    this.engine.queuePush(key, toBytes(value));
  }

  /**
   * Blocking pops wait for a value as the TCP store's do: a wait that ends while the queue is still empty
   * (another handle popped first, or a plain key of the same name exists) waits again, backing off a
   * little from the second round on.
   */
  async queuePop(key: string, options?: QueuePopOptions): Promise<Uint8Array> {
    this.enter(options, key);
    const timeoutMs = checkTimeoutMs(options?.timeoutMs ?? this.#timeoutMs);
    const deadline = Date.now() + timeoutMs;
    for (let round = 0; ; round++) {
      const value = this.engine.queuePop(key);
      if (value !== undefined) return value;
      if (!(options?.block ?? true)) {
        throw new StoreError(`queue ${JSON.stringify(key)} is empty`, ErrorCode.QueueEmpty);
      }
      if (round > 0) {
        const left = deadline - Date.now();
        if (left <= 0) {
          throw new RendezvousTimeoutError(keysTimeoutMessage("queuePop", [key])(timeoutMs));
        }
        await new Promise((resolve) => setTimeout(resolve, Math.min(5 * 2 ** round, 100, left)));
      }
      await this.#waitFor("queuePop", [key], options?.signal, Math.max(0, deadline - Date.now()), timeoutMs);
    }
  }

  async queueLen(key: string, options?: CallOptions): Promise<number> {
    this.enter(options, key);
    return this.engine.queueLen(key);
  }

  async close(): Promise<void> {
    this.#closed = true;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /** Throws when the store is closed, the call aborted, or a key is not well-formed Unicode. */
  private enter(options: CallOptions | undefined, keys?: string | readonly string[]): void {
    if (this.#closed) throw new RendezvousError("the store is closed", ErrorCode.ResourceClosed);
    throwIfAborted(options?.signal);
    if (typeof keys === "string") checkKey(keys);
    else if (keys !== undefined) for (const key of keys) checkKey(key);
  }
}

/** `delta` as a 64-bit integer; throws for non-integers. */
export function toI64(delta: number): bigint {
  if (!Number.isSafeInteger(delta)) {
    throw new StoreError(
      `add: delta must be a safe integer, got ${String(delta)}`,
      ErrorCode.InvalidArgument,
    );
  }
  return BigInt(delta);
}

/** Throws unless `keys` and `values` have the same length. */
export function checkSameLength(keys: readonly unknown[], values: readonly unknown[]): void {
  if (keys.length !== values.length) {
    throw new StoreError(
      `multiSet: ${keys.length} keys but ${values.length} values`,
      ErrorCode.InvalidArgument,
    );
  }
}
