/**
 * The TCP store's per-address connection cap: open connections counted by `addressKey` (an IPv4 address,
 * an IPv6 /64), so that one address reconnecting in a loop cannot take every connection slot. Pure
 * bookkeeping with an injectable clock; the server refuses, logs and counts.
 */

import { LogRateLimit } from "../../log.js";
import { addressKey, isLoopbackKey } from "./address-key.js";

/** What `AddressCap.admit` decided. */
export type Admission =
  | { readonly admitted: true; readonly key: string }
  | {
      readonly admitted: false;
      readonly key: string;
      /** Whether to log this refusal: the first of the address's refusals in `logIntervalMs`. */
      readonly log: boolean;
      /** Refusals of this address not logged since the last one that was. */
      readonly unlogged: number;
    };

interface Entry {
  open: number;
  /** The address's refusals, logged at most once per `logIntervalMs`. */
  readonly refusals: LogRateLimit;
}

/**
 * Open connections per address. Memory: one entry per address with a connection open, so bounded by the
 * server's `maxConnections`.
 */
export class AddressCap {
  readonly #entries = new Map<string, Entry>();

  /**
   * @param max most connections one address may have open.
   * @param capLoopback whether loopback addresses are capped too (else they are not counted at all).
   * @param logIntervalMs least time between two logged refusals of one address.
   * @param now clock, epoch ms.
   */
  constructor(
    readonly max: number,
    readonly capLoopback: boolean,
    readonly logIntervalMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  /** Addresses with a connection counted now. */
  get tracked(): number {
    return this.#entries.size;
  }

  /** Counts a new connection from `address` if its address is under the cap; `release` it when it closes. */
  admit(address: string | undefined): Admission {
    const key = addressKey(address);
    if (!this.capLoopback && isLoopbackKey(key)) return { admitted: true, key };
    let entry = this.#entries.get(key);
    if (entry === undefined) {
      entry = { open: 0, refusals: new LogRateLimit(this.logIntervalMs) };
      this.#entries.set(key, entry);
    }
    if (entry.open < this.max) {
      entry.open++;
      return { admitted: true, key };
    }
    return { admitted: false, key, ...entry.refusals.take(this.now()) };
  }

  /** A connection that `admit` admitted under `key` closed. */
  release(key: string): void {
    const entry = this.#entries.get(key);
    if (entry === undefined) return;
    if (--entry.open <= 0) this.#entries.delete(key);
  }
}
