/**
 * `TCPStore`: a client of PyTorch's c10d TCPStore protocol (v2 by default, v1 for PyTorch <= 2.0
 * servers) that talks to PyTorch's servers and to rdzv's own.
 *
 * Connections. Non-blocking requests are pipelined on one main connection: written at once (a tick's
 * requests gathered into one write), their replies decoded in order. Blocking requests (WAIT, BARRIER)
 * each run on a wait connection of their own (see `client-wait-pool.ts`): PyTorch's servers answer
 * requests pipelined behind a parked WAIT out of order, so nothing may follow it on its connection. Normal
 * calls therefore never queue behind blocking ones, and any number of blocking calls can be pending on one
 * handle; each one that actually blocks holds one extra connection while it does. `get`, `wait` and
 * `multiGet` first CHECK their keys on the main connection and only WAIT when one is missing, so reads of
 * existing keys cost the same two round trips as PyTorch's WAIT+GET and never touch a wait connection.
 * Against an rdzv server (extension probe answered) WAITs instead run on the main connection itself as
 * `WAIT_ASYNC`s over tagged replies (docs/tcpstore-compat.md), and `get` is a single `GET_ASYNC` (one
 * request, answered with the value once the key exists), so a store holds one connection however many
 * reads wait; option `asyncWaits: false` turns that off. BARRIER always uses a wait connection.
 *
 * Keys get PyTorch's leading "/" (spec §2.4), so `store.set("k")` here is `store.get("k")` in Python.
 *
 * An open store keeps the process alive like any socket (idle wait connections do not).
 */

import { EventEmitter } from "node:events";
import {
  ErrorCode,
  InvalidArgumentError,
  RendezvousError,
  type RendezvousStoreGoneError,
  StoreError,
} from "../../errors.js";
import { checkKey } from "../bytes.js";
import { sleep } from "../deadline.js";
import { checkSameLength, toI64 } from "../memory-store.js";
import type { CallOptions, QueuePopOptions, QueueStore, StoreValue } from "../store.js";
import { type ClientConnection, printable, Shape } from "./client-connection.js";
import type { GiveUpRule } from "./client-give-up.js";
import { type ResolvedOptions, resolveOptions, type TCPStoreOptions } from "./client-options.js";
import { ClientSession, waitTimeoutMessage } from "./client-session.js";
import { CheckResponse, type Dialect, EXTENSION_ACK, type Request } from "./protocol.js";

export type { GiveUpRule, Refusal } from "./client-give-up.js";
export type { TCPStoreOptions } from "./client-options.js";

/** Events of a `TCPStore`. */
export interface TCPStoreEvents {
  /**
   * The main connection dropped (not through `close()`): its pending calls were rejected and the server
   * ran its on-disconnect registrations. The next call reconnects.
   */
  disconnect: [err: RendezvousError];
}

const NON_ASCII = /[\u0080-\uffff]/;

/** A user key as sent: "/" + key, UTF-8 encoded, as a byte string. */
function wireKey(key: string): string {
  if (typeof key !== "string")
    throw new InvalidArgumentError(`a store key must be a string, got ${typeof key}`);
  if (!NON_ASCII.test(key)) return `/${key}`;
  checkKey(key);
  return Buffer.from(`/${key}`, "utf8").toString("latin1");
}

/**
 * `value` as bytes. Strings go through `Buffer.from`, which allocates from Node's pool: `TextEncoder`
 * allocates an ArrayBuffer per call, which made GC the client's main cost under pipelining.
 */
function toBytes(value: StoreValue): Uint8Array {
  return typeof value === "string" ? Buffer.from(value, "utf8") : value;
}

const isOne = (n: bigint): boolean => n === 1n;
const isReady = (v: number): boolean => v === 0;

/**
 * A `QueueStore` over a TCPStore server. Create it with `connectTCPStore`; `new TCPStore(options)` makes
 * an unconnected handle that connects on its first call.
 *
 * Errors: `RendezvousTimeoutError` when a blocking call runs past its timeout (message in every store's
 * form, "get timeout after {ms}ms, keys: a": PyTorch's says "wait" and "/a"); `AbortedError` on abort; `RendezvousConnectionError` when
 * the server cannot be reached within the connect budget (`connectTimeoutMs`, and at most the call's
 * timeout) or the connection breaks (every pending call rejects at once; later calls reconnect);
 * `InvalidArgumentError` for a command the dialect lacks; `RendezvousAuthError` (`RDZV_AUTH`, never retried)
 * when the server requires an auth token this client lacks, rejects its token, or its TLS certificate does
 * not verify; `StoreError` with `RDZV_LIMIT_EXCEEDED` for a request over `limits` (not sent);
 * `RendezvousStoreGoneError` (`RDZV_CONNECTION`), for every call, once option `giveUp` found the server
 * gone for good (connections refused for its whole budget). Non-blocking
 * calls given a `timeoutMs` or
 * `signal` are bounded by them; without, a main connection that stops answering for `timeoutMs` is
 * dropped.
 */
export class TCPStore extends EventEmitter<TCPStoreEvents> implements QueueStore {
  readonly host: string;
  readonly port: number;
  readonly dialect: Dialect;
  /** Whether it connects with TLS (the `tls` option, or by default `RDZV_TLS_CA`). */
  readonly tls: boolean;
  readonly #options: ResolvedOptions;
  readonly #session: ClientSession;
  #initSent = false;

  constructor(options: TCPStoreOptions) {
    super();
    this.#options = resolveOptions(options);
    this.host = this.#options.host;
    this.port = this.#options.port;
    this.dialect = this.#options.dialect;
    this.tls = this.#options.tls !== undefined;
    this.#session = new ClientSession(this.#options, (err) => this.emit("disconnect", err));
  }

  get timeoutMs(): number {
    return this.#session.timeoutMs;
  }

  set timeoutMs(value: number) {
    this.#session.timeoutMs = value;
  }

  /** The give-up rule (option `giveUp`, client-give-up.ts); setting it applies from the next connect attempt. */
  get giveUp(): GiveUpRule | undefined {
    return this.#session.giveUp;
  }

  set giveUp(rule: GiveUpRule | undefined) {
    this.#session.giveUp = rule;
  }

  /**
   * The `RendezvousStoreGoneError` every call fails with once the give-up rule found the server gone (the
   * store is then as good as closed), else `undefined`.
   */
  get gone(): RendezvousStoreGoneError | undefined {
    return this.#session.gone;
  }

  /** True when the server is an rdzv server (it answered the extension probe at the last connect; v2 only). */
  get hasExtensions(): boolean {
    return this.#session.hasExtensions;
  }

  /** True after `close()`. */
  get closed(): boolean {
    return this.#session.closed;
  }

  /** `host:port`. */
  get peer(): string {
    return this.#session.peer;
  }

  /** Connections open for blocking calls right now (busy or idle); for tests and metrics. */
  get waitConnections(): number {
    return this.#session.waitConnections;
  }

  /**
   * Connects now (otherwise the first call does), retrying until `connectTimeoutMs`; then sends the
   * `init/` increment once when `worldSize` was given. Rejects with `RendezvousConnectionError`.
   */
  async connect(): Promise<void> {
    const conn = await this.#session.connect(this.#options.connectTimeoutMs);
    const { worldSize, waitForWorkers } = this.#options;
    if (worldSize !== undefined && waitForWorkers && !this.#initSent) {
      this.#initSent = true;
      await conn.request({ type: "add", key: "init/", delta: 1n }, Shape.i64);
    }
  }

  set(key: string, value: StoreValue, options?: CallOptions): Promise<void> {
    return this.#session.run(options, "set", (c) =>
      c.send({ type: "set", key: wireKey(key), value: toBytes(value) }),
    );
  }

  /**
   * The value of `key`, waiting until it exists: one GET_ASYNC against an rdzv server (tagged connection),
   * else CHECK, WAIT if missing, then GET.
   */
  async get(key: string, options?: CallOptions): Promise<Uint8Array> {
    const k = wireKey(key);
    const start = Date.now();
    const value = await this.#session.getAsync(k, options, start);
    if (value !== undefined) return value;
    return this.#read([k], options, "get", (c) => c.request({ type: "get", key: k }, Shape.value), start);
  }

  add(key: string, delta: number, options?: CallOptions): Promise<number> {
    return this.#session
      .run(options, "add", (c) =>
        c.request({ type: "add", key: wireKey(key), delta: toI64(delta) }, Shape.i64),
      )
      .then(Number);
  }

  compareSet(
    key: string,
    expected: StoreValue,
    desired: StoreValue,
    options?: CallOptions,
  ): Promise<Uint8Array> {
    return this.#session.run(options, "compareSet", (c) => {
      const req: Request = {
        type: "compareSet",
        key: wireKey(key),
        expected: toBytes(expected),
        desired: toBytes(desired),
      };
      return c.request(req, Shape.value);
    });
  }

  async wait(keys: readonly string[], options?: CallOptions): Promise<void> {
    await this.#session.waitKeys("wait", keys.map(wireKey), options, Date.now());
  }

  check(keys: readonly string[], options?: CallOptions): Promise<boolean> {
    return this.#session
      .run(options, "check", (c) => c.request({ type: "check", keys: keys.map(wireKey) }, Shape.u8))
      .then(isReady);
  }

  deleteKey(key: string, options?: CallOptions): Promise<boolean> {
    return this.#session
      .run(options, "deleteKey", (c) => c.request({ type: "deleteKey", key: wireKey(key) }, Shape.i64))
      .then(isOne);
  }

  numKeys(options?: CallOptions): Promise<number> {
    return this.#session
      .run(options, "numKeys", (c) => c.request({ type: "getNumKeys" }, Shape.i64))
      .then(Number);
  }

  /** Values of `keys` in order, waiting until all exist (CHECK/WAIT, then MULTI_GET; v1: per-key GETs). */
  async multiGet(keys: readonly string[], options?: CallOptions): Promise<Uint8Array[]> {
    const ks = keys.map(wireKey);
    if (ks.length === 0) return [];
    return this.#read(ks, options, "multiGet", (c) =>
      this.dialect === "v1"
        ? Promise.all(ks.map((key) => c.request({ type: "get", key }, Shape.value)))
        : c.request({ type: "multiGet", keys: ks }, { kind: "values", count: ks.length }),
    );
  }

  /** Sets every `keys[i]` to `values[i]` (MULTI_SET; v1: per-key SETs). */
  async multiSet(
    keys: readonly string[],
    values: readonly StoreValue[],
    options?: CallOptions,
  ): Promise<void> {
    checkSameLength(keys, values);
    const ks = keys.map(wireKey);
    const vs = values.map(toBytes);
    if (ks.length === 0) return;
    await this.#session.run(options, "multiSet", (c) =>
      this.dialect === "v1"
        ? Promise.all(ks.map((key, i) => c.send({ type: "set", key, value: vs[i]! }))).then(() => {})
        : c.send({ type: "multiSet", keys: ks, values: vs }),
    );
  }

  /** Appends to `key`, creating it when missing (v2 only). */
  async append(key: string, value: StoreValue, options?: CallOptions): Promise<void> {
    this.#requireV2("append");
    await this.#session.run(options, "append", (c) =>
      c.send({ type: "append", key: wireKey(key), value: toBytes(value) }),
    );
  }

  /** The keys PyTorch clients see ("/"-keys, "/" stripped; not `init/`). v2 only (PyTorch 2.10+ servers). */
  async listKeys(options?: CallOptions): Promise<string[]> {
    this.#requireV2("listKeys");
    const raw = await this.#session.run(options, "listKeys", (c) =>
      c.request({ type: "listKeys" }, Shape.keyList),
    );
    return raw.filter((k) => k.startsWith("/")).map((k) => printable(k.slice(1)));
  }

  async queuePush(key: string, value: StoreValue, options?: CallOptions): Promise<void> {
    this.#requireV2("queuePush");
    await this.#session.run(options, "queuePush", (c) =>
      c.send({ type: "queuePush", key: wireKey(key), value: toBytes(value) }),
    );
  }

  /**
   * Pops the head of queue `key`. Blocking (the default): pops, and while the queue is empty WAITs for it
   * on a wait connection and pops again. Non-blocking: rejects with code `RDZV_QUEUE_EMPTY`.
   */
  async queuePop(key: string, options?: QueuePopOptions): Promise<Uint8Array> {
    this.#requireV2("queuePop");
    const k = wireKey(key);
    const start = Date.now();
    for (let round = 0; ; round++) {
      const value = await this.#session.run(options, "queuePop", (c) =>
        c.request({ type: "queuePop", key: k }, Shape.queuePop),
      );
      if (value !== undefined) return value;
      if (!(options?.block ?? true)) {
        throw new StoreError(`queue ${JSON.stringify(key)} is empty`, ErrorCode.QueueEmpty);
      }
      // A WAIT that returns while the queue is still empty (another client popped first, or a plain key
      // of the same name exists) would spin: back off a little from the second round on.
      if (round > 0) await sleep(Math.min(5 * 2 ** round, 100), options?.signal);
      await this.#session.blocking(
        { type: "wait", keys: [k] },
        options,
        start,
        waitTimeoutMessage("queuePop", [k]),
      );
    }
  }

  async queueLen(key: string, options?: CallOptions): Promise<number> {
    this.#requireV2("queueLen");
    const len = await this.#session.run(options, "queueLen", (c) =>
      c.request({ type: "queueLen", key: wireKey(key) }, Shape.i64),
    );
    return Number(len);
  }

  /**
   * PyTorch 2.11+'s BARRIER: increments the counter at `key` and waits until it reaches `worldSize`. Use a
   * fresh key per barrier. v2 only; times out as "barrier timeout after {ms}ms, key: {key}".
   */
  async barrier(key: string, worldSize: number, options?: CallOptions): Promise<void> {
    this.#requireV2("barrier");
    if (!Number.isSafeInteger(worldSize) || worldSize < 1) {
      throw new InvalidArgumentError(
        `barrier worldSize must be a positive integer, got ${String(worldSize)}`,
      );
    }
    const req: Request = { type: "barrier", key: wireKey(key), worldSize: BigInt(worldSize) };
    await this.#session.blocking(
      req,
      options,
      Date.now(),
      (ms) => `barrier timeout after ${ms}ms, key: ${key}`,
    );
  }

  /** A round trip on the main connection (v2 PING). */
  async ping(options?: CallOptions): Promise<void> {
    this.#requireV2("ping");
    const nonce = process.pid >>> 0;
    const echoed = await this.#session.run(options, "ping", (c) =>
      c.request({ type: "ping", nonce }, Shape.u32),
    );
    if (echoed !== nonce)
      throw new RendezvousError(`PING ${nonce} answered with ${echoed}`, ErrorCode.Protocol);
  }

  /**
   * rdzv extension: the server sets `key` to `value` when this store's main connection closes (crash,
   * network loss or `close()`). Bound to the current connection: after a "disconnect" event it has fired
   * and is gone. Throws `InvalidArgumentError` when the server has no extensions (or in v1).
   */
  async setOnDisconnect(key: string, value: StoreValue, options?: CallOptions): Promise<void> {
    await this.#extension({ type: "onDisconnectSet", key: wireKey(key), value: toBytes(value) }, options);
  }

  /** rdzv extension: drops the on-disconnect registration of `key` made on this connection. */
  async clearOnDisconnect(key: string, options?: CallOptions): Promise<void> {
    await this.#extension({ type: "onDisconnectClear", key: wireKey(key) }, options);
  }

  /** A new handle with its own connections and the same options, without the `init/` increment (as PyTorch's). */
  async clone(): Promise<TCPStore> {
    if (this.closed) throw new RendezvousError("the TCPStore was closed", ErrorCode.ResourceClosed);
    const { worldSize: _, ...rest } = this.#options;
    return connectTCPStore({ ...rest, timeoutMs: this.timeoutMs });
  }

  /** Closes every connection (queued writes are flushed first); pending calls reject. Idempotent. */
  async close(): Promise<void> {
    await this.#session.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /**
   * A read that waits for `keys` first: CHECK, WAIT on a wait connection if one is missing, then `read`.
   * rdzv's server answers reads of missing keys with empty values, so there the read is pipelined with the
   * CHECK and used when the keys exist: one round trip instead of two. (PyTorch's legacy server would
   * close the connection instead, so only servers with extensions get this.)
   */
  async #read<T>(
    keys: readonly string[],
    options: CallOptions | undefined,
    what: string,
    read: (conn: ClientConnection) => Promise<T>,
    start = Date.now(),
  ): Promise<T> {
    if (!this.hasExtensions) {
      await this.#session.waitKeys(what, keys, options, start);
    } else {
      const check: Request = { type: "check", keys };
      const [ready, value] = await this.#session.run(options, what, (c) =>
        Promise.all([c.request(check, Shape.u8), read(c)]),
      );
      if (ready === CheckResponse.Ready) return value;
      await this.#session.blocking({ type: "wait", keys }, options, start, waitTimeoutMessage(what, keys));
    }
    return this.#session.run(options, what, read);
  }

  async #extension(req: Request, options: CallOptions | undefined): Promise<void> {
    this.#requireV2(req.type);
    const ack = await this.#session.run(options, req.type, (c) => {
      if (!this.hasExtensions) {
        throw new InvalidArgumentError(
          `${req.type} needs an rdzv server; the TCPStore server at ${this.peer} has no extensions`,
        );
      }
      return c.request(req, Shape.u8);
    });
    if (ack !== EXTENSION_ACK) throw new RendezvousError(`${req.type} answered ${ack}`, ErrorCode.Protocol);
  }

  #requireV2(command: string): void {
    if (this.dialect === "v1") {
      throw new InvalidArgumentError(
        `${command} is not available in the v1 TCPStore protocol (PyTorch <= 2.0)`,
      );
    }
  }
}

/** Connects a `TCPStore` (retrying until `connectTimeoutMs`) and sends the `init/` increment if asked. */
export async function connectTCPStore(options: TCPStoreOptions): Promise<TCPStore> {
  const store = new TCPStore(options);
  try {
    await store.connect();
  } catch (err) {
    await store.close();
    throw err;
  }
  return store;
}
