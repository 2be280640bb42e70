/**
 * `EtcdStore`: the Store API over etcd v3 (the `etcd3` client). Every key lives under a key prefix. Blocking
 * calls (`get`, `wait`, `multiGet`) read once and, for what is missing, watch from the revision right after
 * that read, so no write between the read and the watch is missed and nothing polls. `add` and
 * `compareSet` are transactions (compare on the key's mod revision or value), `multiGet` / `multiSet` are
 * single transactions up to 128 keys (etcd's default `--max-txn-ops`), one per 128 keys beyond.
 *
 * Reads (and `set`, whose repetition changes nothing) ride out a leader election or a member going down:
 * they run again, with short pauses, until their deadline (see `read`). etcd has no request ids: a
 * mutating call whose reply is lost in a fail-over and that etcd3 retries (its 3 immediate tries) may
 * apply twice, so rdzv repeats a write only when it was never sent, and `add` writes through a client
 * that does not retry (see `#once`).
 */

import type { Etcd3, IKeyValue, ITxnResponse, Namespace, Watcher } from "etcd3";
import { AbortedError, ErrorCode, RendezvousConnectionError, StoreError } from "../../errors.js";
import { checkKey, concatBytes, toBytes } from "../bytes.js";
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
import { isMemberFailure, isOwnCancel, isUnsent, mapEtcdError } from "./errors.js";

/** Options of `EtcdStore`. */
export interface EtcdStoreOptions {
  /** Prefix of every key of this store (default "", the whole keyspace). */
  prefix?: string;
  /** Default timeout of every call, blocking or not (default 300 000 ms, as PyTorch). */
  timeoutMs?: number;
  /** Close the etcd client when the store closes (default true). */
  ownsClient?: boolean;
  /** Member URLs, for error messages. */
  hosts?: readonly string[];
  /**
   * Makes the client that `add`'s compare-and-set goes through: one that never runs a call again on its
   * own (connect.ts: a view of `client`'s own connections), made at the first `add`. Without it, `add`
   * uses `client`, whose own repetition of a write that etcd applied but could not confirm adds twice.
   * The store does not close it (closing `client` closes its connections).
   */
  onceClient?: () => Namespace;
}

const utf8 = new TextEncoder();

/** `EtcdStore.read`'s pause before its n-th repetition: n x 25 ms, at most 500 ms. */
const RETRY_STEP_MS = 25;
const RETRY_MAX_PAUSE_MS = 500;

/** A `Store` over an etcd v3 cluster. Build one with `connectEtcdStore` (etcd/connect.ts). */
export class EtcdStore implements Store {
  readonly client: Etcd3;
  readonly prefix: string;
  readonly hosts: readonly string[];
  #prefixBytes: Buffer;
  #timeoutMs: number;
  #closed = false;
  readonly #ownsClient: boolean;
  /** Cancels the blocking calls in flight (on close). */
  readonly #pending = new Set<() => void>();
  readonly #makeOnceClient: (() => Namespace) | undefined;
  #onceClient: Namespace | undefined;

  constructor(client: Etcd3, options: EtcdStoreOptions = {}) {
    this.client = client;
    this.prefix = options.prefix ?? "";
    this.#prefixBytes = Buffer.from(this.prefix, "utf8");
    this.#timeoutMs = checkTimeoutMs(options.timeoutMs ?? DEFAULT_STORE_TIMEOUT_MS, "timeoutMs");
    this.#ownsClient = options.ownsClient ?? true;
    this.hosts = options.hosts ?? [];
    this.#makeOnceClient = options.onceClient;
    ignoreOwnCancels(client);
  }

  get timeoutMs(): number {
    return this.#timeoutMs;
  }

  set timeoutMs(value: number) {
    this.#timeoutMs = checkTimeoutMs(value, "timeoutMs");
  }

  /** The etcd key of store key `key`. */
  etcdKey(key: string): Buffer {
    checkKey(key);
    return Buffer.concat([this.#prefixBytes, utf8.encode(key)]);
  }

  async set(key: string, value: StoreValue, options?: CallOptions): Promise<void> {
    await this.read("set", options, (o) =>
      this.client.put(this.etcdKey(key)).value(buf(value)).options(o).exec(),
    );
  }

  async get(key: string, options?: CallOptions): Promise<Uint8Array> {
    const [value] = await this.#await([key], options, "get");
    return value!;
  }

  /**
   * A compare-and-set loop on the key's mod revision. Concurrent adds to one key through this store are
   * coalesced into one transaction (each caller still gets its own intermediate sum), so that a burst of
   * adds costs a few round trips instead of one conflict per add.
   */
  add(key: string, delta: number, options?: CallOptions): Promise<number> {
    const d = toI64(delta);
    return new Promise((resolve, reject) => {
      const entry: QueuedAdd = { delta: d, options, resolve, reject };
      const queue = this.#adds.get(key);
      if (queue !== undefined) {
        queue.push(entry);
        return;
      }
      const fresh = [entry];
      this.#adds.set(key, fresh);
      void this.#runAdds(key, fresh);
    });
  }

  /** Adds queued per key while a transaction for that key is in flight. */
  readonly #adds = new Map<string, QueuedAdd[]>();

  async #runAdds(key: string, queue: QueuedAdd[]): Promise<void> {
    while (queue.length > 0) {
      const batch = queue.splice(0);
      const total = batch.reduce((sum, e) => sum + e.delta, 0n);
      try {
        let sum = wrapI64((await this.#casAdd(key, total, batch[0]!.options)) - total);
        for (const e of batch) {
          sum = wrapI64(sum + e.delta);
          e.resolve(Number(sum));
        }
      } catch (err) {
        for (const e of batch) e.reject(err);
      }
    }
    this.#adds.delete(key);
  }

  /**
   * The client for `add`'s writes (see `EtcdStoreOptions.onceClient`). etcd3 runs a call again when a
   * member fails under it, also when the member had applied it and only the reply was lost; for the
   * compare-and-set that fails the compare, and the loop read the sum it wrote and added again (a
   * counter one above the adds that succeeded, on a 3-member cluster whose leader was killed).
   */
  #once(): Namespace {
    if (this.#makeOnceClient === undefined) return this.client;
    if (this.#onceClient === undefined) {
      this.#onceClient = this.#makeOnceClient();
    }
    return this.#onceClient;
  }

  /**
   * Adds `delta` in a compare-and-set loop; returns the new sum. A write that failed before it left this
   * process runs again (through `#run`); one that failed after is not repeated, since etcd cannot tell a
   * repeat from a new add: the caller gets an error saying the counter may or may not include it.
   */
  #casAdd(key: string, delta: bigint, options: CallOptions | undefined): Promise<bigint> {
    const k = this.etcdKey(key);
    // Run again as a whole after a member failure, which only the first read lets through: the
    // compare-and-set's failures are settled in its catch (unsent: thrown as they are, and run again;
    // sent: an error that is not a member failure, so not run again).
    return this.#run(
      "add",
      options,
      async (o) => {
        let current = (await this.client.get(k).options(o).exec()).kvs[0];
        // Adding 0 to a present counter only reads it, unless it is stored in another form than the
        // sum's decimal ("007", " 7"), which add rewrites as PyTorch does.
        if (current !== undefined && delta === 0n) {
          const n = parseCounter(current.value, key);
          if (current.value.toString("latin1") === n.toString()) return n;
        }
        const once = this.#once();
        for (;;) {
          const sum = wrapI64((current === undefined ? 0n : parseCounter(current.value, key)) + delta);
          const res = await (current === undefined
            ? once.if(k, "Create", "==", 0)
            : once.if(k, "Mod", "==", current.mod_revision)
          )
            .then(once.put(k).value(sum.toString()))
            .else(once.get(k))
            .options(o)
            .commit()
            .catch((err: unknown) => {
              if (isUnsent(err) || !isMemberFailure(err)) throw err;
              throw new RendezvousConnectionError(
                `add: etcd at ${this.hosts.join(",")} failed after the request was sent, so the counter may or may not include this add (it is not sent again: etcd cannot tell a repeat from a new add): ${err instanceof Error ? err.message : String(err)}`,
                { cause: err },
              );
            });
          if (res.succeeded) return sum;
          current = rangeKvs(res, 0)[0];
        }
      },
      true,
    );
  }

  async compareSet(
    key: string,
    expected: StoreValue,
    desired: StoreValue,
    options?: CallOptions,
  ): Promise<Uint8Array> {
    const k = this.etcdKey(key);
    const want = buf(expected);
    const next = buf(desired);
    return this.call("compareSet", options, async (o) => {
      // A missing key matches an empty `expected`; a present one matches by value.
      const swap = (column: "Create" | "Value") =>
        this.client
          .if(k, column, "==", column === "Create" ? 0 : want)
          .then(this.client.put(k).value(next))
          .else(this.client.get(k))
          .options(o)
          .commit();
      let res = await swap(want.length === 0 ? "Create" : "Value");
      if (res.succeeded) return new Uint8Array(next);
      const current = rangeKvs(res, 0)[0];
      if (current === undefined) return new Uint8Array(want);
      if (want.length !== 0 || current.value.length !== 0) return new Uint8Array(current.value);
      // The key exists and holds "", which an empty `expected` also matches.
      res = await swap("Value");
      return new Uint8Array(res.succeeded ? next : (rangeKvs(res, 0)[0]?.value ?? want));
    });
  }

  async wait(keys: readonly string[], options?: CallOptions): Promise<void> {
    await this.#await(keys, options, "wait");
  }

  async check(keys: readonly string[], options?: CallOptions): Promise<boolean> {
    if (keys.length === 0) return true;
    const { kvs } = await this.read("check", options, (o) => this.#readAll(keys, o));
    return kvs.every((kv) => kv !== undefined);
  }

  async deleteKey(key: string, options?: CallOptions): Promise<boolean> {
    const res = await this.call("deleteKey", options, (o) =>
      this.client.delete().key(this.etcdKey(key)).options(o).exec(),
    );
    return Number(res.deleted) > 0;
  }

  /** Number of keys under the prefix. */
  async numKeys(options?: CallOptions): Promise<number> {
    return this.read("numKeys", options, (o) => this.#all().options(o).count());
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
    // etcd refuses a transaction that puts one key twice; the last value of a repeated key wins, as in
    // PyTorch's stores (a Map keeps a key's first position and its last value).
    const last = new Map<string, StoreValue>();
    for (const [i, key] of keys.entries()) last.set(key, values[i]!);
    const puts = [...last].map(([key, value]) => this.client.put(this.etcdKey(key)).value(buf(value)));
    // Atomic up to MAX_TXN_OPS keys (one transaction); beyond that, one transaction per chunk.
    await this.call("multiSet", options, (o) =>
      Promise.all(
        chunks(puts).map((part) =>
          this.#always()
            .then(...part)
            .options(o)
            .commit(),
        ),
      ),
    );
  }

  async append(key: string, value: StoreValue, options?: CallOptions): Promise<void> {
    const k = this.etcdKey(key);
    const tail = toBytes(value);
    await this.call("append", options, async (o) => {
      let current = (await this.client.get(k).options(o).exec()).kvs[0];
      for (;;) {
        const joined = current === undefined ? tail : concatBytes(current.value, tail);
        const res = await (current === undefined
          ? this.client.if(k, "Create", "==", 0)
          : this.client.if(k, "Mod", "==", current.mod_revision)
        )
          .then(this.client.put(k).value(Buffer.from(joined)))
          .else(this.client.get(k))
          .options(o)
          .commit();
        if (res.succeeded) return;
        current = rangeKvs(res, 0)[0];
      }
    });
  }

  async listKeys(options?: CallOptions): Promise<string[]> {
    const keys = await this.read("listKeys", options, (o) => this.#all().options(o).keyBuffers());
    return keys.map((k) => k.subarray(this.#prefixBytes.length).toString("utf8"));
  }

  /** Runs `hook` when the store closes (before the client does): leases and watches of users of the client. */
  onClose(hook: () => void): void {
    this.#closeHooks.push(hook);
  }

  readonly #closeHooks: (() => void)[] = [];

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const cancel of [...this.#pending]) cancel();
    for (const hook of this.#closeHooks.splice(0)) hook();
    if (this.#ownsClient) {
      this.client.close();
      stopWatchRetries(this.client);
    }
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  /**
   * Runs `op` with a gRPC deadline from `options.timeoutMs` (or the store's), mapping errors. The signal
   * is checked before the call; a quick call is not cut short by it.
   */
  call<T>(
    what: string,
    options: CallOptions | undefined,
    op: (o: { deadline: Date }) => Promise<T>,
  ): Promise<T> {
    return this.#run(what, options, op, false);
  }

  /**
   * `call` for an `op` that writes nothing, or whose repetition leaves the same result (a read, a put of
   * one value): while etcd cannot answer it (a member down, a leader election: "leader changed", "no
   * leader"), it runs again after a pause that grows by 25 ms up to 500 ms, until the call's deadline.
   * etcd's own Go client retries its reads likewise; a write that may have been applied is not repeated.
   */
  read<T>(
    what: string,
    options: CallOptions | undefined,
    op: (o: { deadline: Date }) => Promise<T>,
  ): Promise<T> {
    return this.#run(what, options, op, true);
  }

  async #run<T>(
    what: string,
    options: CallOptions | undefined,
    op: (o: { deadline: Date }) => Promise<T>,
    repeatable: boolean,
  ): Promise<T> {
    if (this.#closed) throw new StoreError(`${what}: the store is closed`, ErrorCode.ResourceClosed);
    throwIfAborted(options?.signal);
    const timeoutMs = checkTimeoutMs(options?.timeoutMs ?? this.#timeoutMs);
    const deadline = Date.now() + Math.max(timeoutMs, 1);
    for (let attempt = 1; ; attempt++) {
      try {
        return await op({ deadline: new Date(deadline) });
      } catch (err) {
        const pauseMs = Math.min(RETRY_STEP_MS * attempt, RETRY_MAX_PAUSE_MS);
        const again =
          !this.#closed &&
          (isUnsent(err) || (repeatable && isMemberFailure(err))) &&
          Date.now() + pauseMs < deadline;
        if (!again) throw mapEtcdError(err, what, this.hosts);
        await this.#pause(pauseMs, options?.signal);
        if (this.#closed) throw new StoreError(`${what}: the store was closed`, ErrorCode.ResourceClosed);
      }
    }
  }

  /** Resolves after `ms`, or at once when the store closes; rejects with `AbortedError` when `signal` fires. */
  #pause(ms: number, signal: AbortSignal | undefined): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const end = (): void => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        this.#pending.delete(wake);
      };
      const wake = (): void => {
        end();
        resolve();
      };
      const onAbort = (): void => {
        end();
        reject(new AbortedError(undefined, { cause: signal?.reason }));
      };
      const timer = setTimeout(wake, ms);
      this.#pending.add(wake);
      signal?.addEventListener("abort", onAbort, { once: true });
      if (signal?.aborted) onAbort();
    });
  }

  /**
   * Reads every key: one transaction per `MAX_TXN_OPS` keys (etcd's default limit), in parallel. Returns
   * each key's key-value (undefined when missing) and the lowest revision the reads saw.
   */
  async #readAll(
    keys: readonly string[],
    o: { deadline: Date },
  ): Promise<{ kvs: (IKeyValue | undefined)[]; revision: number }> {
    const results = await Promise.all(
      chunks(keys).map((part) =>
        this.#always()
          .then(...part.map((key) => this.client.get(this.etcdKey(key))))
          .options(o)
          .commit(),
      ),
    );
    return {
      kvs: results.flatMap((res, c) => chunks(keys)[c]!.map((_, i) => rangeKvs(res, i)[0])),
      revision: Math.min(...results.map((res) => Number(res.header.revision))),
    };
  }

  /** A transaction builder whose compare always holds (etcd txns need one compare to start from). */
  #always() {
    return this.client.if(this.#prefixBytes.length > 0 ? this.#prefixBytes : "\0", "Version", ">", -1);
  }

  #all() {
    return this.#prefixBytes.length > 0
      ? this.client.getAll().prefix(this.#prefixBytes)
      : this.client.getAll().all();
  }

  /**
   * Values of `keys`, waiting until all exist: one read, then one watch over the key range of the missing
   * keys, starting at the revision after the read.
   */
  async #await(
    keys: readonly string[],
    options: CallOptions | undefined,
    what: string,
  ): Promise<Uint8Array[]> {
    if (keys.length === 0) {
      if (this.#closed) throw new StoreError(`${what}: the store is closed`, ErrorCode.ResourceClosed);
      throwIfAborted(options?.signal);
      return [];
    }
    const timeoutMs = checkTimeoutMs(options?.timeoutMs ?? this.#timeoutMs);
    const started = Date.now();
    const read = firstReadOptions(options, this.#timeoutMs);
    const res = await this.read(what, read, (o) => this.#readAll(keys, o));
    const values = new Map<string, Uint8Array>();
    keys.forEach((key, i) => {
      const kv = res.kvs[i];
      if (kv !== undefined) values.set(key, new Uint8Array(kv.value));
    });
    const missing = new Map<string, string>();
    for (const key of keys) if (!values.has(key)) missing.set(this.etcdKey(key).toString("latin1"), key);
    if (missing.size > 0) {
      const left = Math.max(0, timeoutMs - (Date.now() - started));
      const timedOut = (): string => keysTimeoutMessage(what, keys)(timeoutMs);
      await this.#watchFor(
        missing,
        values,
        res.revision + 1,
        { ...options, timeoutMs: left },
        what,
        timedOut,
      );
    }
    return keys.map((key) => values.get(key)!);
  }

  /**
   * Watches from `revision` until every key of `missing` (etcd key as latin1 -> store key) was put;
   * `timedOut()` is the message when `options.timeoutMs` passes first.
   */
  #watchFor(
    missing: Map<string, string>,
    values: Map<string, Uint8Array>,
    revision: number,
    options: CallOptions,
    what: string,
    timedOut: () => string,
  ): Promise<void> {
    const etcdKeys = [...missing.keys()].sort();
    let watcher: Watcher | undefined;
    let stopped = false;
    let onClose = (): void => undefined;
    const stop = (): void => {
      if (stopped) return;
      stopped = true;
      this.#pending.delete(onClose);
      watcher?.cancel().catch(() => undefined);
    };
    return blockingCall<void>(
      options,
      this.#timeoutMs,
      timedOut,
      (resolve, reject) => {
        onClose = () => {
          stop();
          reject(new StoreError(`${what}: the store was closed`, ErrorCode.ResourceClosed));
        };
        this.#pending.add(onClose);
        const first = Buffer.from(etcdKeys[0]!, "latin1");
        const builder = this.client.watch().startRevision(String(revision)).only("put");
        const watch =
          etcdKeys.length === 1
            ? builder.key(first)
            : builder.inRange({ start: first, end: Buffer.from(`${etcdKeys.at(-1)!}\0`, "latin1") });
        watch
          .create()
          .then((w) => {
            watcher = w;
            if (stopped) {
              w.cancel().catch(() => undefined);
              return;
            }
            w.on("put", (kv: IKeyValue) => {
              const id = kv.key.toString("latin1");
              const key = missing.get(id);
              if (key === undefined) return;
              missing.delete(id);
              values.set(key, new Uint8Array(kv.value));
              if (missing.size > 0) return;
              stop();
              resolve();
            });
            w.on("error", (err: unknown) => {
              stop();
              reject(mapEtcdError(err, what, this.hosts));
            });
          })
          .catch((err: unknown) => {
            stop();
            reject(mapEtcdError(err, what, this.hosts));
          });
      },
      stop,
    );
  }
}

/** etcd's default `--max-txn-ops`: the most operations one transaction may hold. */
const MAX_TXN_OPS = 128;

function chunks<T>(items: readonly T[]): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += MAX_TXN_OPS) out.push(items.slice(i, i + MAX_TXN_OPS));
  return out;
}

interface QueuedAdd {
  readonly delta: bigint;
  readonly options: CallOptions | undefined;
  readonly resolve: (sum: number) => void;
  readonly reject: (err: unknown) => void;
}

function buf(value: StoreValue): Buffer {
  const bytes = toBytes(value);
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** The key-values of the `i`-th range response of a transaction. */
export function rangeKvs(res: ITxnResponse, i: number): IKeyValue[] {
  return res.responses[i]?.response_range?.kvs ?? [];
}

/**
 * When its last watcher is cancelled, etcd3 cancels the watch stream, and the stream's "Cancelled on
 * client" error then reaches the connection pool as a failure of the member: the member's circuit breaker
 * counts it, and every gRPC client of that member (KV, Lease, Watch) is closed and made anew, with new
 * channels. Each `get`/`wait` that had to watch, and each step of a rendezvous member waiting for its
 * round's end, did that (200 waiting members in one process: 2,300 such resets in 20 s, most of a CPU).
 * A cancellation this process asked for says nothing about the member, so the pool no longer hears of it.
 */
function ignoreOwnCancels(client: unknown): void {
  const pool = (client as { pool?: { markFailed?: (resource: unknown, err: unknown) => void } }).pool;
  const markFailed = pool?.markFailed;
  if (pool === undefined || markFailed === undefined || OWN_CANCELS_IGNORED in markFailed) return;
  const filtered = (resource: unknown, err: unknown): void => {
    if (!isOwnCancel(err)) markFailed.call(pool, resource, err);
  };
  pool.markFailed = Object.assign(filtered, { [OWN_CANCELS_IGNORED]: true });
}

const OWN_CANCELS_IGNORED = Symbol("rdzv.ownCancelsIgnored");

/**
 * etcd3's watch manager re-opens a failed watch stream on a timer, forever, even after its client closed:
 * every attempt fails on the closed client and schedules the next, so the process never exits. Ends the
 * loop once the client is closed (at most one retry timer stays pending, bounded by the watch backoff).
 */
function stopWatchRetries(client: unknown): void {
  const manager = (client as { watchManager?: { establishStream?: () => void; handleError?: () => void } })
    .watchManager;
  if (manager === undefined) return;
  manager.establishStream = () => undefined;
  manager.handleError = () => undefined;
}
