/** A `Store` view that puts every key under a prefix, as PyTorch's `PrefixStore`. */

import { InvalidArgumentError } from "../errors.js";
import {
  type CallOptions,
  isQueueStore,
  type QueuePopOptions,
  type QueueStore,
  type Store,
  type StoreValue,
} from "./store.js";

/**
 * Wraps `store` so that key `k` becomes `prefix/k` (PyTorch's `PrefixStore`, which nests the same way).
 * `numKeys` counts the whole underlying store, as PyTorch's does; `listKeys` returns only the keys under
 * the prefix, with the prefix stripped. `close()` does not close the underlying store.
 */
export class PrefixStore implements QueueStore {
  readonly prefix: string;
  readonly underlyingStore: Store;

  constructor(prefix: string, store: Store) {
    if (typeof prefix !== "string")
      throw new InvalidArgumentError(`prefix must be a string, got ${typeof prefix}`);
    if (store === null || store === undefined)
      throw new InvalidArgumentError("PrefixStore needs an underlying store");
    this.prefix = prefix;
    this.underlyingStore = store;
  }

  /** The innermost store that is not a `PrefixStore`. */
  get underlyingNonPrefixStore(): Store {
    let store: Store = this.underlyingStore;
    while (store instanceof PrefixStore) store = store.underlyingStore;
    return store;
  }

  get timeoutMs(): number {
    return this.underlyingStore.timeoutMs;
  }

  set timeoutMs(value: number) {
    this.underlyingStore.timeoutMs = value;
  }

  /** `key` as the underlying store sees it. */
  keyFor(key: string): string {
    return `${this.prefix}/${key}`;
  }

  private keysFor(keys: readonly string[]): string[] {
    return keys.map((key) => this.keyFor(key));
  }

  set(key: string, value: StoreValue, options?: CallOptions): Promise<void> {
    return this.underlyingStore.set(this.keyFor(key), value, options);
  }

  get(key: string, options?: CallOptions): Promise<Uint8Array> {
    return this.underlyingStore.get(this.keyFor(key), options);
  }

  add(key: string, delta: number, options?: CallOptions): Promise<number> {
    return this.underlyingStore.add(this.keyFor(key), delta, options);
  }

  compareSet(
    key: string,
    expected: StoreValue,
    desired: StoreValue,
    options?: CallOptions,
  ): Promise<Uint8Array> {
    return this.underlyingStore.compareSet(this.keyFor(key), expected, desired, options);
  }

  wait(keys: readonly string[], options?: CallOptions): Promise<void> {
    return this.underlyingStore.wait(this.keysFor(keys), options);
  }

  check(keys: readonly string[], options?: CallOptions): Promise<boolean> {
    return this.underlyingStore.check(this.keysFor(keys), options);
  }

  deleteKey(key: string, options?: CallOptions): Promise<boolean> {
    return this.underlyingStore.deleteKey(this.keyFor(key), options);
  }

  numKeys(options?: CallOptions): Promise<number> {
    return this.underlyingStore.numKeys(options);
  }

  multiGet(keys: readonly string[], options?: CallOptions): Promise<Uint8Array[]> {
    return this.underlyingStore.multiGet(this.keysFor(keys), options);
  }

  multiSet(keys: readonly string[], values: readonly StoreValue[], options?: CallOptions): Promise<void> {
    return this.underlyingStore.multiSet(this.keysFor(keys), values, options);
  }

  append(key: string, value: StoreValue, options?: CallOptions): Promise<void> {
    return this.underlyingStore.append(this.keyFor(key), value, options);
  }

  async listKeys(options?: CallOptions): Promise<string[]> {
    const head = `${this.prefix}/`;
    const keys = await this.underlyingStore.listKeys(options);
    return keys.filter((key) => key.startsWith(head)).map((key) => key.slice(head.length));
  }

  queuePush(key: string, value: StoreValue, options?: CallOptions): Promise<void> {
    return this.queueStore().queuePush(this.keyFor(key), value, options);
  }

  queuePop(key: string, options?: QueuePopOptions): Promise<Uint8Array> {
    return this.queueStore().queuePop(this.keyFor(key), options);
  }

  queueLen(key: string, options?: CallOptions): Promise<number> {
    return this.queueStore().queueLen(this.keyFor(key), options);
  }

  /** Does nothing: the underlying store belongs to whoever created it. */
  async close(): Promise<void> {}

  async [Symbol.asyncDispose](): Promise<void> {}

  private queueStore(): QueueStore {
    const store = this.underlyingStore;
    if (!isQueueStore(store)) {
      throw new InvalidArgumentError("the underlying store has no queue operations");
    }
    return store;
  }
}
