/**
 * `RedisStore`: the Store API over Redis (ioredis). Every key lives under a key prefix. `compareSet` and
 * `add` are Lua scripts (atomic on the server); blocking calls wait on keyspace notifications
 * (waits.ts), which `connectRedisStore` switches on when the server allows `CONFIG SET`.
 *
 * Restarts: commands that were in flight when the connection dropped fail with `RDZV_CONNECTION` rather
 * than being sent again (a resent `add` could count twice); later commands wait for the reconnect (about
 * 1.5 s, ioredis's 5 attempts, then `RDZV_CONNECTION`), and blocking waits for `reconnectGraceMs`. The
 * store writes an epoch key when it connects and checks it after every reconnect: when the server came
 * back without the store's data (no persistence), every call fails with `RDZV_CONNECTION` from then on
 * instead of serving a state that silently started over.
 */

import type { Redis } from "ioredis";
import { ErrorCode, hasErrorCode, RendezvousConnectionError, StoreError } from "../../errors.js";
import { checkKey, toBytes } from "../bytes.js";
import {
  blockingCall,
  checkTimeoutMs,
  firstReadOptions,
  keysTimeoutMessage,
  throwIfAborted,
} from "../deadline.js";
import { parseCounter, wrapI64 } from "../kv-engine.js";
import { toI64 } from "../memory-store.js";
import { type CallOptions, DEFAULT_STORE_TIMEOUT_MS, type Store, type StoreValue } from "../store.js";
import { mapRedisError } from "./errors.js";
import { ADD_LUA, COMPARE_SET_LUA, READ_LUA, SWAP_LUA } from "./scripts.js";
import { KeyspaceWaits } from "./waits.js";

/** What `RedisStore` is built from (see `connectRedisStore`). */
export interface RedisStoreParts {
  readonly client: Redis;
  readonly subscriber: Redis;
  readonly db: number;
  readonly prefix: string;
  readonly timeoutMs?: number;
  /** `host:port`, for error messages. */
  readonly address: string;
  /** The epoch written at connect time (see the module comment). */
  readonly epoch: string;
  /** Runs after every reconnect of the command connection, before waiters look again. */
  readonly onReconnect?: () => Promise<void>;
  /** How long blocking waits ride out a lost connection (default `DEFAULT_RECONNECT_GRACE_MS`). */
  readonly reconnectGraceMs?: number;
}

/**
 * How long blocking waits ride out a lost connection before they fail with `RDZV_CONNECTION` (quick calls
 * issued meanwhile fail after ioredis's 5 reconnect attempts, about 1.5 s).
 */
export const DEFAULT_RECONNECT_GRACE_MS = 5_000;

/** Name of the epoch key under the prefix; never listed or counted. */
export const EPOCH_KEY = "\0rdzv-epoch";

/** Tries of `add`'s compare-and-swap path before it gives up (other writers changed the key each time). */
const MAX_ADD_ATTEMPTS = 100;

/** A `Store` over Redis. Build one with `connectRedisStore`. */
export class RedisStore implements Store {
  readonly client: Redis;
  readonly prefix: string;
  readonly address: string;
  readonly #subscriber: Redis;
  readonly #waits: KeyspaceWaits;
  readonly #prefix: Buffer;
  #timeoutMs: number;
  #closed = false;
  #lost: RendezvousConnectionError | undefined;
  /** Rejects of blocking waits, and of quick calls (whose commands are lost when the connection drops). */
  readonly #pending = new Set<(err: Error) => void>();
  /** Quick calls, each with the connection (count of 'ready's) its command goes out on. */
  readonly #inFlight = new Map<(err: Error) => void, number>();
  /** 'ready's of the command connection so far, and whether the last one is still up. */
  #connection = 0;
  #up = true;
  readonly #reconnectGraceMs: number;
  /** Connections (commands, subscriber) down now; past the grace the waits fail (`#unreachable`). */
  readonly #down = new Set<Redis>();
  #graceTimer: NodeJS.Timeout | undefined;
  #unreachable: RendezvousConnectionError | undefined;

  constructor(parts: RedisStoreParts) {
    this.client = parts.client;
    this.#subscriber = parts.subscriber;
    this.prefix = parts.prefix;
    this.address = parts.address;
    this.#prefix = Buffer.from(parts.prefix, "utf8");
    this.#timeoutMs = checkTimeoutMs(parts.timeoutMs ?? DEFAULT_STORE_TIMEOUT_MS, "timeoutMs");
    this.#waits = new KeyspaceWaits(parts.subscriber, parts.db);
    this.client.defineCommand("rdzvCompareSet", { numberOfKeys: 1, lua: COMPARE_SET_LUA });
    this.client.defineCommand("rdzvAdd", { numberOfKeys: 1, lua: ADD_LUA });
    this.client.defineCommand("rdzvSwap", { numberOfKeys: 1, lua: SWAP_LUA });
    this.client.defineCommand("rdzvRead", { lua: READ_LUA });
    this.#reconnectGraceMs = checkTimeoutMs(
      parts.reconnectGraceMs ?? DEFAULT_RECONNECT_GRACE_MS,
      "reconnectGraceMs",
    );
    this.client.on("ready", () => {
      this.#connection++;
      this.#up = true;
      void this.#reconnected(parts);
    });
    // ioredis drops the replies of commands in flight when the connection closes (nothing is resent):
    // their calls fail here, as applied or not. Commands issued while it is down wait in ioredis's
    // offline queue for the reconnect (failing after its 5 attempts): 'close' comes again at every
    // failed attempt, and must not fail them as sent.
    this.client.on("close", () => {
      if (!this.#up) return;
      this.#up = false;
      const lost = new RendezvousConnectionError(
        `the connection to Redis at ${this.address} dropped with the command in flight (applied or not)`,
      );
      for (const [reject, connection] of [...this.#inFlight]) {
        if (connection <= this.#connection) reject(lost);
      }
    });
    for (const connection of [this.client, this.#subscriber]) {
      connection.on("close", () => this.#connectionDown(connection));
      connection.on("ready", () => this.#connectionUp(connection));
    }
  }

  /**
   * A connection dropped: the waits ride it out (they look again after the reconnect), unless it stays
   * down for the grace; then they fail with `RDZV_CONNECTION`, as do waits started until it is back,
   * rather than wait blind until their timeouts.
   */
  #connectionDown(connection: Redis): void {
    if (this.#closed) return;
    this.#down.add(connection);
    if (this.#graceTimer !== undefined || this.#unreachable !== undefined) return;
    this.#graceTimer = setTimeout(() => {
      this.#graceTimer = undefined;
      const err = new RendezvousConnectionError(
        `lost the connection to Redis at ${this.address} and could not connect again within ` +
          `${this.#reconnectGraceMs} ms`,
      );
      this.#unreachable = err;
      for (const reject of [...this.#pending]) reject(err);
    }, this.#reconnectGraceMs);
    this.#graceTimer.unref();
  }

  #connectionUp(connection: Redis): void {
    this.#down.delete(connection);
    if (this.#down.size > 0) return;
    clearTimeout(this.#graceTimer);
    this.#graceTimer = undefined;
    this.#unreachable = undefined;
  }

  /** After a reconnect: notifications back on, the epoch checked, every waiter looks again. */
  async #reconnected(parts: RedisStoreParts): Promise<void> {
    await parts.onReconnect?.().catch(() => undefined);
    const held = await this.client.getBuffer(this.key(EPOCH_KEY)).catch(() => undefined);
    if (held === undefined) return;
    if (held?.toString("utf8") !== parts.epoch) {
      this.#fail(
        new RendezvousConnectionError(
          `the Redis server at ${this.address} restarted without the store's data (no persistence): ` +
            "its state is gone, so this store stops rather than start over",
        ),
      );
      return;
    }
    this.#waits.recheckAll();
  }

  get timeoutMs(): number {
    return this.#timeoutMs;
  }

  set timeoutMs(value: number) {
    this.#timeoutMs = checkTimeoutMs(value, "timeoutMs");
  }

  /** The Redis key of store key `key`. */
  key(key: string): Buffer {
    checkKey(key);
    return Buffer.concat([this.#prefix, Buffer.from(key, "utf8")]);
  }

  #fail(err: RendezvousConnectionError): void {
    this.#lost = err;
    for (const reject of [...this.#pending, ...this.#inFlight.keys()]) reject(err);
  }

  async set(key: string, value: StoreValue, options?: CallOptions): Promise<void> {
    await this.call("set", options, () => this.client.set(this.key(key), buf(value)));
  }

  async get(key: string, options?: CallOptions): Promise<Uint8Array> {
    const [value] = await this.#await([key], options, "get");
    return value!;
  }

  /**
   * INCRBY in a script. A stored value INCRBY refuses (not Redis's canonical integer, or a sum past 64
   * bits) is read, parsed as PyTorch does (std::stoll; the sum wraps at 64 bits) and written back with a
   * compare-and-swap, again until no other write came between.
   */
  async add(key: string, delta: number, options?: CallOptions): Promise<number> {
    const d = toI64(delta);
    const k = this.key(key);
    const commands = this.client as unknown as RdzvCommands;
    const sum = await this.call(
      "add",
      options,
      async () => {
        for (let attempt = 1; ; attempt++) {
          if (attempt > MAX_ADD_ATTEMPTS) {
            throw new StoreError(`add: ${key} changed under every one of ${MAX_ADD_ATTEMPTS} tries`);
          }
          try {
            return BigInt(await commands.rdzvAdd(k, d.toString()));
          } catch (err) {
            if (!(err instanceof Error && /RDZV_SLOW/.test(err.message))) throw err;
          }
          const held = await this.client.getBuffer(k);
          if (held === null) continue; // deleted meanwhile: INCRBY creates it
          const next = wrapI64(parseCounter(held, key) + d);
          if ((await commands.rdzvSwap(k, held, next.toString())) === 1) return next;
        }
      },
      [key],
    );
    return Number(sum);
  }

  async compareSet(
    key: string,
    expected: StoreValue,
    desired: StoreValue,
    options?: CallOptions,
  ): Promise<Uint8Array> {
    const held = await this.call(
      "compareSet",
      options,
      () =>
        (this.client as unknown as RdzvCommands).rdzvCompareSetBuffer(
          this.key(key),
          buf(expected),
          buf(desired),
        ),
      [key],
    );
    return new Uint8Array(held);
  }

  async wait(keys: readonly string[], options?: CallOptions): Promise<void> {
    await this.#await(keys, options, "wait");
  }

  async check(keys: readonly string[], options?: CallOptions): Promise<boolean> {
    if (keys.length === 0) return true;
    const n = await this.call("check", options, () => this.client.exists(...keys.map((k) => this.key(k))));
    return n === keys.length;
  }

  async deleteKey(key: string, options?: CallOptions): Promise<boolean> {
    return (await this.call("deleteKey", options, () => this.client.del(this.key(key)))) > 0;
  }

  async numKeys(options?: CallOptions): Promise<number> {
    return (await this.listKeys(options)).length;
  }

  async multiGet(keys: readonly string[], options?: CallOptions): Promise<Uint8Array[]> {
    return this.#await(keys, options, "multiGet");
  }

  async multiSet(
    keys: readonly string[],
    values: readonly StoreValue[],
    options?: CallOptions,
  ): Promise<void> {
    if (keys.length !== values.length) {
      throw new StoreError(
        `multiSet: ${keys.length} keys but ${values.length} values`,
        ErrorCode.InvalidArgument,
      );
    }
    if (keys.length === 0) return;
    const args = keys.flatMap((k, i) => [this.key(k), buf(values[i]!)]);
    await this.call("multiSet", options, () => this.client.mset(...args));
  }

  async append(key: string, value: StoreValue, options?: CallOptions): Promise<void> {
    await this.call("append", options, () => this.client.append(this.key(key), buf(value)), [key]);
  }

  /** Keys under the prefix (a SCAN: O(keys in the database)). */
  async listKeys(options?: CallOptions): Promise<string[]> {
    const pattern = `${globEscape(this.prefix)}*`;
    const found = await this.call("listKeys", options, async () => {
      const keys: Buffer[] = [];
      let cursor = "0";
      do {
        const [next, batch] = await this.client.scanBuffer(cursor, "MATCH", pattern, "COUNT", 1000);
        cursor = next.toString();
        keys.push(...batch);
      } while (cursor !== "0");
      return keys;
    });
    const names = new Set(found.map((k) => k.subarray(this.#prefix.length).toString("utf8")));
    names.delete(EPOCH_KEY);
    return [...names];
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const closed = new StoreError("the store was closed", ErrorCode.ResourceClosed);
    clearTimeout(this.#graceTimer);
    for (const reject of [...this.#pending, ...this.#inFlight.keys()]) reject(closed);
    this.client.disconnect();
    this.#subscriber.disconnect();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  /**
   * Runs a quick command within `options.timeoutMs` (or the store's), mapping errors (`keys`, the store
   * keys it works on, are named when one holds another Redis type).
   */
  async call<T>(
    what: string,
    options: CallOptions | undefined,
    op: () => Promise<T>,
    keys: readonly string[] = [],
  ): Promise<T> {
    this.#usable(what, options);
    const timeoutMs = checkTimeoutMs(options?.timeoutMs ?? this.#timeoutMs);
    let fail: ((err: Error) => void) | undefined;
    try {
      return await blockingCall<T>(
        options?.signal === undefined ? { timeoutMs } : { timeoutMs, signal: options.signal },
        timeoutMs,
        (ms) => `${what}: Redis at ${this.address} did not answer within ${ms}ms`,
        (resolve, reject) => {
          fail = reject;
          // Sent now on the connection that is up, or on the next one from the offline queue.
          this.#inFlight.set(
            reject,
            this.client.status === "ready" ? this.#connection : this.#connection + 1,
          );
          op().then(resolve, (err: unknown) => reject(mapRedisError(err, what, this.address, keys)));
        },
        () => undefined,
      );
    } finally {
      if (fail !== undefined) this.#inFlight.delete(fail);
    }
  }

  #usable(what: string, options: CallOptions | undefined): void {
    if (this.#closed) throw new StoreError(`${what}: the store is closed`, ErrorCode.ResourceClosed);
    if (this.#lost !== undefined) throw this.#lost;
    throwIfAborted(options?.signal);
  }

  /** Values of `keys` once all exist: subscribe, then read; read again on each creating event. */
  async #await(
    keys: readonly string[],
    options: CallOptions | undefined,
    what: string,
  ): Promise<Uint8Array[]> {
    this.#usable(what, options);
    if (keys.length === 0) return [];
    const redisKeys = keys.map((k) => this.key(k));
    // Not MGET: it answers nil for a key of another type, which would then be waited on until the timeout.
    const read = (): Promise<(Buffer | null)[]> =>
      (this.client as unknown as RdzvCommands).rdzvReadBuffer(redisKeys.length, ...redisKeys);
    // A read is idempotent: one lost to a dropped connection is simply made again once subscribed. It is
    // quick: it gets the store's timeout, not what may be a short wait's (and the wait's when longer).
    const first = await this.call(what, firstReadOptions(options, this.#timeoutMs), read, keys).catch(
      (err: unknown) => {
        if (this.#lost === undefined && hasErrorCode(err, ErrorCode.Connection)) return undefined;
        throw err;
      },
    );
    if (first?.every((v) => v !== null)) return first.map((v) => new Uint8Array(v!));
    if (this.#unreachable !== undefined) throw this.#unreachable;
    let unregister: (() => void) | undefined;
    let fail: ((err: Error) => void) | undefined;
    let stopped = false;
    const stop = (): void => {
      stopped = true;
      if (fail !== undefined) this.#pending.delete(fail);
      unregister?.();
    };
    return blockingCall<Uint8Array[]>(
      options,
      this.#timeoutMs,
      keysTimeoutMessage(what, keys),
      (resolve, reject) => {
        fail = reject;
        this.#pending.add(reject);
        const look = (): void => {
          read().then(
            (values) => {
              if (stopped || values.some((v) => v === null)) return;
              resolve(values.map((v) => new Uint8Array(v!)));
            },
            (err: unknown) => reject(mapRedisError(err, what, this.address, keys)),
          );
        };
        const ids = redisKeys.map((k) => k.toString("latin1"));
        this.#waits.register(ids, look, look).then(
          (un) => {
            unregister = un;
            if (stopped) un();
            else look();
          },
          (err: unknown) => reject(mapRedisError(err, what, this.address)),
        );
      },
      stop,
    ).finally(stop);
  }
}

interface RdzvCommands {
  rdzvAdd(key: Buffer, delta: string): Promise<string>;
  rdzvSwap(key: Buffer, expected: Buffer, desired: string): Promise<number>;
  rdzvCompareSetBuffer(key: Buffer, expected: Buffer, desired: Buffer): Promise<Buffer>;
  rdzvReadBuffer(numKeys: number, ...keys: Buffer[]): Promise<(Buffer | null)[]>;
}

function buf(value: StoreValue): Buffer {
  const bytes = toBytes(value);
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** `text` with Redis glob characters escaped, for SCAN MATCH. */
function globEscape(text: string): string {
  return text.replace(/[*?[\]\\]/g, (c) => `\\${c}`);
}
