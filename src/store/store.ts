/**
 * The Store API: the key-value store that rendezvous state lives in and that every completed round hands
 * to its members. Mirrors `torch.distributed.Store` (set/get/add/compare_set/wait/check/delete_key/
 * num_keys/multi_get/multi_set/append), in TypeScript idiom.
 */

/** A value as callers may pass it: bytes, or a string that is stored UTF-8 encoded. */
export type StoreValue = Uint8Array | string;

/** Options of every blocking store call. */
export interface CallOptions {
  /** Give up after this many milliseconds; defaults to the store's `timeoutMs`. */
  timeoutMs?: number;
  /** Abort the call; it rejects with an `AbortedError`. */
  signal?: AbortSignal;
}

/** Options of a queue pop. */
export interface QueuePopOptions extends CallOptions {
  /** Wait for a value when the queue is empty (default `true`, as PyTorch's `queue_pop`). */
  block?: boolean;
}

/** Default store timeout, as PyTorch's `TCPStore` (300 s). */
export const DEFAULT_STORE_TIMEOUT_MS = 300_000;

/**
 * A key-value store with blocking reads. Keys are strings; values are bytes.
 *
 * Every method may reject with a `RendezvousError`: `RendezvousTimeoutError` when a blocking call runs past
 * its timeout (every store words a wait on keys alike, "get timeout after 100ms, keys: a", from
 * `keysTimeoutMessage`), `AbortedError` when its signal fires, `RendezvousConnectionError` when a remote store is
 * unreachable, `StoreError` when the operation itself fails (e.g. `add` on a non-numeric value).
 */
export interface Store {
  /** Default timeout of blocking calls, in milliseconds. Settable, like PyTorch's `set_timeout`. */
  timeoutMs: number;

  /** Sets `key` to `value`, waking everyone blocked on `key`. */
  set(key: string, value: StoreValue, options?: CallOptions): Promise<void>;

  /** Returns the value of `key`, waiting until it exists or the timeout passes. */
  get(key: string, options?: CallOptions): Promise<Uint8Array>;

  /**
   * Adds `delta` to the decimal integer stored at `key` (a missing key counts as 0) and returns the sum.
   * The value is stored as decimal ASCII, so `get` of a counter returns e.g. `"21"`. Sums wrap at 64 bits,
   * as in PyTorch; results beyond ±2^53 lose precision in the returned `number`.
   */
  add(key: string, delta: number, options?: CallOptions): Promise<number>;

  /**
   * Atomic compare-and-set with PyTorch semantics: when `key` holds `expected` (or is missing and
   * `expected` is empty) it becomes `desired` and `desired` is returned; otherwise nothing changes and the
   * current value is returned, or `expected` itself when the key is missing.
   */
  compareSet(
    key: string,
    expected: StoreValue,
    desired: StoreValue,
    options?: CallOptions,
  ): Promise<Uint8Array>;

  /** Waits until every key in `keys` exists. */
  wait(keys: readonly string[], options?: CallOptions): Promise<void>;

  /** True when every key in `keys` exists (no waiting). */
  check(keys: readonly string[], options?: CallOptions): Promise<boolean>;

  /** Deletes `key`; true when it existed. Does not wake waiters. */
  deleteKey(key: string, options?: CallOptions): Promise<boolean>;

  /** Number of keys in the whole store (for PyTorch's TCPStore this includes its `init/` counter). */
  numKeys(options?: CallOptions): Promise<number>;

  /** Values of `keys`, in order, waiting until all exist. */
  multiGet(keys: readonly string[], options?: CallOptions): Promise<Uint8Array[]>;

  /** Sets `keys[i]` to `values[i]` for every i. */
  multiSet(keys: readonly string[], values: readonly StoreValue[], options?: CallOptions): Promise<void>;

  /** Appends `value` to the value of `key`, creating it when missing. */
  append(key: string, value: StoreValue, options?: CallOptions): Promise<void>;

  /** Every key of the store (for a prefix store: the keys under its prefix, prefix stripped). */
  listKeys(options?: CallOptions): Promise<string[]>;

  /** Releases the store's resources. Idempotent. */
  close(): Promise<void>;

  [Symbol.asyncDispose](): Promise<void>;
}

/** A store that also has PyTorch 2.8+'s FIFO queues (a namespace separate from keys). */
export interface QueueStore extends Store {
  /** Appends `value` to the tail of queue `key`, waking one blocked pop. */
  queuePush(key: string, value: StoreValue, options?: CallOptions): Promise<void>;
  /**
   * Removes and returns the head of queue `key`. With `block` (the default) waits for a value; without,
   * rejects with a `StoreError` of code `RDZV_QUEUE_EMPTY` when the queue is empty.
   */
  queuePop(key: string, options?: QueuePopOptions): Promise<Uint8Array>;
  /** Length of queue `key` (0 when it never existed). */
  queueLen(key: string, options?: CallOptions): Promise<number>;
}

/** True when `store` implements the queue operations. */
export function isQueueStore(store: Store): store is QueueStore {
  const s = store as Partial<QueueStore>;
  return (
    typeof s.queuePush === "function" && typeof s.queuePop === "function" && typeof s.queueLen === "function"
  );
}
