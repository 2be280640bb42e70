/**
 * Wrong-token throttling per client address, shared by the TCP store's AUTH and the dashboard's
 * Authorization header (one budget for both: they take the same token). Pure bookkeeping with an
 * injectable clock; the callers refuse, log and count.
 *
 * Each address (`addressKey`: an IPv4 address, an IPv6 /64) has a budget of `maxFailures` wrong tokens
 * that refills at `maxFailures` per `windowMs`. A wrong token that empties it locks the address out for
 * `windowMs`: every attempt from it is refused then, without looking at the token, so a right guess
 * cannot be told from a wrong one. A brute force gets about `maxFailures` guesses per `windowMs` at best.
 *
 * Only distinct wrong tokens count: one that the address already presented within `windowMs` (told by its
 * digest) is not counted again. A guess has to be new to be worth anything, so this gives a brute force
 * nothing, while a job that retries with one stale token (many processes behind one NAT or on one host)
 * spends one wrong token, not one per process, and does not lock out its neighbours at that address.
 */

import { InvalidArgumentError } from "../../errors.js";
import { addressKey } from "./address-key.js";

/** Options of `createAuthThrottle`. */
export interface AuthThrottleOptions {
  /**
   * Wrong tokens an address may present in a burst, refilled at this many per `windowMs` (default 10);
   * the one that empties the budget locks the address out for `windowMs`. 0 turns throttling off.
   */
  maxFailures?: number;
  /** Refill period and lockout length, ms (default 60 000). */
  windowMs?: number;
  /**
   * Most addresses tracked at once (default 10 000): an address is tracked from its first wrong token
   * until its budget is full again and no lockout is running. Past the bound the address whose last wrong
   * token is oldest is forgotten, so a flood from many addresses cannot grow the table without bound.
   */
  maxAddresses?: number;
  /** Clock, epoch ms (default `Date.now`). */
  now?: () => number;
}

/** Defaults of `AuthThrottleOptions`: 10 wrong tokens a minute, 10 000 addresses. */
export const DEFAULT_AUTH_THROTTLE = { maxFailures: 10, windowMs: 60_000, maxAddresses: 10_000 } as const;

/** What `AuthThrottle.failed` did. */
export interface FailureOutcome {
  /** The address's key (`addressKey`), for the log. */
  readonly key: string;
  /** When this failure locked the address out: the lockout's length in ms; else 0. */
  readonly lockedMs: number;
  /** The address had presented this wrong token within `windowMs`: not counted again. */
  readonly repeated: boolean;
}

/**
 * Most wrong-token digests remembered per address. Within a window an address presents at most about
 * 2 x `maxFailures` distinct wrong tokens before its lockout; past this bound the oldest is forgotten, and
 * a forgotten one counts again if it comes back (stricter, never looser).
 */
const MAX_DIGESTS_PER_ADDRESS = 32;

interface Entry {
  /** Wrong tokens not yet refilled, as of `at`. */
  used: number;
  /** The last wrong token (epoch ms): the table is in this order, oldest first. */
  at: number;
  /** The end of the lockout (epoch ms); 0 for none. */
  until: number;
  /** Wrong tokens counted within `windowMs` (by digest, base64) and when each was counted, oldest first. */
  readonly digests: Map<string, number>;
}

/** Per-address wrong-token budgets. Create with `createAuthThrottle`. */
export class AuthThrottle {
  readonly maxFailures: number;
  readonly windowMs: number;
  readonly maxAddresses: number;
  readonly #now: () => number;
  readonly #entries = new Map<string, Entry>();

  /** @internal Use `createAuthThrottle`. */
  constructor(maxFailures: number, windowMs: number, maxAddresses: number, now: () => number) {
    this.maxFailures = maxFailures;
    this.windowMs = windowMs;
    this.maxAddresses = maxAddresses;
    this.#now = now;
  }

  /** Addresses tracked now (bounded by `maxAddresses`). */
  get tracked(): number {
    return this.#entries.size;
  }

  /**
   * Ms until `address` (a peer's IP literal) may present a token again: 0 when it may now. A caller that
   * gets more than 0 refuses the attempt without checking the token.
   */
  retryAfterMs(address: string | undefined): number {
    const entry = this.#entries.get(addressKey(address));
    if (entry === undefined) return 0;
    return Math.max(entry.until - this.#now(), 0);
  }

  /**
   * Counts a wrong token from `address`, unless the address presented the same one (`digest`, the
   * token's SHA-256) within `windowMs`; says whether it locked the address out. Without `digest` every
   * call counts.
   */
  failed(address: string | undefined, digest?: Uint8Array): FailureOutcome {
    const key = addressKey(address);
    if (this.maxFailures === 0) return { key, lockedMs: 0, repeated: false };
    const now = this.#now();
    this.prune(now);
    let entry = this.#entries.get(key);
    const seen = digest === undefined ? undefined : Buffer.from(digest).toString("base64");
    if (entry !== undefined && seen !== undefined) {
      forgetOlder(entry.digests, now - this.windowMs);
      if (entry.digests.has(seen)) return { key, lockedMs: 0, repeated: true };
    }
    if (entry === undefined) {
      entry = { used: 0, at: now, until: 0, digests: new Map() };
    } else {
      // Refilled since the last wrong token, at maxFailures per windowMs.
      const refilled = ((now - entry.at) * this.maxFailures) / this.windowMs;
      entry.used = Math.max(entry.used - refilled, 0);
      entry.at = now;
      this.#entries.delete(key); // re-inserted last: the table stays in order of `at`
    }
    entry.used++;
    if (seen !== undefined) {
      entry.digests.set(seen, now);
      if (entry.digests.size > MAX_DIGESTS_PER_ADDRESS)
        entry.digests.delete(entry.digests.keys().next().value!);
    }
    let lockedMs = 0;
    // Less than one wrong token left (the refill is continuous: a burst a few ms long leaves a fraction).
    if (this.maxFailures - entry.used < 1 && entry.until <= now) {
      entry.until = now + this.windowMs;
      entry.used = 0;
      lockedMs = this.windowMs;
    }
    this.#entries.set(key, entry);
    while (this.#entries.size > this.maxAddresses) {
      this.#entries.delete(this.#entries.keys().next().value!);
    }
    return { key, lockedMs, repeated: false };
  }

  /**
   * Forgets addresses whose budget is full again and whose lockout is over: both are at most `windowMs`
   * after their last wrong token, and the table is in that order, so they are a prefix of it.
   */
  private prune(now: number): void {
    for (const [key, entry] of this.#entries) {
      if (now - entry.at < this.windowMs || entry.until > now) return;
      this.#entries.delete(key);
    }
  }
}

/** Drops the digests counted before `since` (the map is in order of counting). */
function forgetOlder(digests: Map<string, number>, since: number): void {
  for (const [digest, at] of digests) {
    if (at > since) return;
    digests.delete(digest);
  }
}

/**
 * A throttle with `options` over `DEFAULT_AUTH_THROTTLE`. Throws `InvalidArgumentError` for a
 * `maxFailures` that is not a non-negative integer, or a `windowMs` or `maxAddresses` that is not a
 * positive one.
 */
export function createAuthThrottle(options: AuthThrottleOptions = {}): AuthThrottle {
  const { maxFailures, windowMs, maxAddresses } = { ...DEFAULT_AUTH_THROTTLE, ...definedOnly(options) };
  const checks = [
    ["maxFailures", maxFailures, 0],
    ["windowMs", windowMs, 1],
    ["maxAddresses", maxAddresses, 1],
  ] as const;
  for (const [name, value, least] of checks) {
    if (!Number.isSafeInteger(value) || value < least) {
      const what = least === 0 ? "a non-negative" : "a positive";
      throw new InvalidArgumentError(`authThrottle.${name} must be ${what} integer, got ${String(value)}`);
    }
  }
  return new AuthThrottle(maxFailures, windowMs, maxAddresses, options.now ?? Date.now);
}

function definedOnly(options: AuthThrottleOptions): Partial<typeof DEFAULT_AUTH_THROTTLE> {
  const out: Record<string, number> = {};
  for (const name of ["maxFailures", "windowMs", "maxAddresses"] as const) {
    const value = options[name];
    if (value !== undefined) out[name] = value;
  }
  return out;
}
