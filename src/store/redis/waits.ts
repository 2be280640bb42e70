/**
 * Blocking waits on Redis through keyspace notifications: a subscriber connection subscribes to
 * `__keyspace@<db>__:<key>` for every key somebody waits on (reference-counted), and a waiter is woken by
 * any event of its key that makes it exist. The subscription is confirmed before the waiter checks that
 * the key exists, so no write between the check and the wait is missed; after the subscriber reconnects
 * (events may have been lost meanwhile) every waiter checks again, once its key is subscribed again.
 * Nothing polls.
 */

import type { Redis } from "ioredis";

/** Events after which a key exists (string commands, and `rename_to` / `restore`). */
const CREATING = new Set([
  "set",
  "incrby",
  "incrbyfloat",
  "append",
  "setrange",
  "rename_to",
  "restore",
  "copy_to",
]);

interface Waiter {
  readonly keys: Set<string>;
  /** Checks the keys still missing; resolves the wait when all exist. */
  readonly recheck: () => void;
  readonly onEvent: (key: string) => void;
}

/** The subscriber side of `RedisStore`'s blocking calls. */
export class KeyspaceWaits {
  readonly #subscriber: Redis;
  readonly #channelPrefix: string;
  /** Waiters per key (latin1 of the full Redis key). */
  readonly #byKey = new Map<string, Set<Waiter>>();
  /** Subscriptions in flight or held, per key. */
  readonly #subscribed = new Map<string, Promise<unknown>>();

  constructor(subscriber: Redis, db: number) {
    this.#subscriber = subscriber;
    this.#channelPrefix = `__keyspace@${db}__:`;
    subscriber.on("messageBuffer", (channel: Buffer, message: Buffer) => {
      const key = channel.subarray(Buffer.byteLength(this.#channelPrefix)).toString("latin1");
      if (!CREATING.has(message.toString("latin1"))) return;
      for (const w of [...(this.#byKey.get(key) ?? [])]) w.onEvent(key);
    });
    // Reconnected: the events of the gap are lost, so every waiter looks again, once its key is
    // subscribed again. ioredis says 'ready' before it sends the reconnect's SUBSCRIBEs, so a look made
    // at 'ready' would miss a key created before they are confirmed (and so would the events): the
    // waited keys are subscribed here too (the server takes a repeated SUBSCRIBE as a no-op), and the
    // waiters look when that is confirmed.
    subscriber.on("ready", () => {
      void this.#resubscribe().finally(() => this.recheckAll());
    });
  }

  /**
   * Subscribes every waited key again (an error means another reconnect, which does this again). Sent
   * after ioredis's own commands of the reconnect (a SELECT is refused once the connection subscribed).
   */
  async #resubscribe(): Promise<void> {
    await Promise.resolve();
    const keys = [...this.#byKey.keys()];
    if (keys.length === 0) return;
    await this.#subscriber.subscribe(...keys.map((key) => this.#channel(key))).catch(() => undefined);
  }

  /** The keyspace channel of `key` (full Redis key, latin1). */
  #channel(key: string): Buffer {
    return Buffer.concat([Buffer.from(this.#channelPrefix), Buffer.from(key, "latin1")]);
  }

  /** Has every waiter look at its keys again. */
  recheckAll(): void {
    for (const set of this.#byKey.values()) for (const w of set) w.recheck();
  }

  /**
   * Registers a waiter for `keys` (full Redis keys, latin1) and resolves once they are subscribed.
   * `onEvent(key)` runs when one of them is created; `recheck` after a subscriber reconnect. Returns the
   * function that unregisters it.
   */
  async register(
    keys: readonly string[],
    onEvent: (key: string) => void,
    recheck: () => void,
  ): Promise<() => void> {
    const waiter: Waiter = { keys: new Set(keys), onEvent, recheck };
    const subscriptions: Promise<unknown>[] = [];
    for (const key of waiter.keys) {
      let set = this.#byKey.get(key);
      if (set === undefined) {
        set = new Set();
        this.#byKey.set(key, set);
      }
      set.add(waiter);
      let sub = this.#subscribed.get(key);
      if (sub === undefined) {
        sub = this.#subscriber.subscribe(this.#channel(key));
        this.#subscribed.set(key, sub);
      }
      subscriptions.push(sub);
    }
    const unregister = (): void => this.#unregister(waiter);
    try {
      await Promise.all(subscriptions);
    } catch (err) {
      unregister();
      throw err;
    }
    return unregister;
  }

  #unregister(waiter: Waiter): void {
    for (const key of waiter.keys) {
      const set = this.#byKey.get(key);
      if (set === undefined) continue;
      set.delete(waiter);
      if (set.size > 0) continue;
      this.#byKey.delete(key);
      const sub = this.#subscribed.get(key);
      this.#subscribed.delete(key);
      const channel = this.#channel(key);
      // Unsubscribe once the subscription settled, unless someone waits on the key again by then.
      sub
        ?.then(() => {
          if (!this.#byKey.has(key)) return this.#subscriber.unsubscribe(channel);
          return undefined;
        })
        .catch(() => undefined);
    }
  }
}
