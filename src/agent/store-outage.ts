/**
 * The agent's bound on a rendezvous store it cannot reach while its workers run (rdzv-conf
 * `store_unreachable_timeout`). The agent's round watch retries failed store calls, as a `rdzv serve
 * --data-dir` restart or an etcd leader election takes seconds and must not stop healthy workers; but a
 * store that never comes back (a `rdzv serve` stopped for good, a store without its data) would have the
 * agent retry for ever while the job can neither restart nor end cleanly. Once no call has succeeded for the
 * bound, the agent stops its workers and exits 1 with an error saying so. A store known to be gone for good
 * (`RendezvousStoreGoneError`, such as the c10d backend's store whose hosting agent died) ends it at once.
 *
 * torchrun gives up far sooner: its monitor loop calls `num_nodes_waiting()` unguarded every
 * `monitor_interval`, so the first store error ends `_invoke_run` and with it the workers.
 */

import {
  ErrorCode,
  findStoreGone,
  hasErrorCode,
  type RendezvousError,
  RendezvousStoreGoneError,
} from "../errors.js";

/** Default of `storeUnreachableTimeoutMs`: 10 min (rdzv-conf's default with the default `join_timeout`). */
export const DEFAULT_STORE_UNREACHABLE_TIMEOUT_MS = 600_000;

/**
 * One outage of the store as the agent's watches see it: the time since the last call that succeeded,
 * when the one after it failed. Time-driven only through `now` (injectable).
 */
export class StoreOutage {
  readonly boundMs: number;
  readonly #storeName: string;
  readonly #now: () => number;
  #sinceMs: number | undefined;
  #lastError: unknown;

  /** `storeName` says which store in messages (`c10d at host:29400`). */
  constructor(boundMs: number, storeName: string, now: () => number = Date.now) {
    this.boundMs = boundMs;
    this.#storeName = storeName;
    this.#now = now;
  }

  /** A store call succeeded: any outage is over. */
  answered(): void {
    this.#sinceMs = undefined;
    this.#lastError = undefined;
  }

  /**
   * A store call failed with `err`. Returns the error that ends the agent: the store-gone error `err`
   * carries, or, once the outage has lasted `boundMs`, one naming the store, how long and what to do;
   * `undefined` while retrying may still help. An abort (the watch's own bound, see `bounded`) does not
   * replace the last error the store gave.
   */
  failed(err: unknown): RendezvousError | undefined {
    const gone = findStoreGone(err);
    if (gone !== undefined) return gone;
    const now = this.#now();
    this.#sinceMs ??= now;
    if (!hasErrorCode(err, ErrorCode.Aborted) || this.#lastError === undefined) this.#lastError = err;
    if (now - this.#sinceMs < this.boundMs) return undefined;
    return this.#unreachable(now - this.#sinceMs, this.#sinceMs);
  }

  /** Ms left before the bound during an outage, else `undefined`. */
  leftMs(): number | undefined {
    return this.#sinceMs === undefined ? undefined : Math.max(0, this.#sinceMs + this.boundMs - this.#now());
  }

  /**
   * Runs `call` with `signal`, or during an outage with one that also fires when the bound passes: a call
   * that hangs on an unreachable store (each may take its connect budget, the store's read timeout) then
   * ends in time. The timer keeps the process alive, as the call it bounds would.
   */
  async bounded<T>(signal: AbortSignal, call: (signal: AbortSignal) => Promise<T>): Promise<T> {
    const left = this.leftMs();
    if (left === undefined) return call(signal);
    const bound = new AbortController();
    const timer = setTimeout(() => bound.abort(), left);
    try {
      return await call(AbortSignal.any([signal, bound.signal]));
    } finally {
      clearTimeout(timer);
    }
  }

  #unreachable(forMs: number, sinceMs: number): RendezvousStoreGoneError {
    const last = this.#lastError instanceof Error ? this.#lastError.message : String(this.#lastError);
    return new RendezvousStoreGoneError(
      `could not reach the rendezvous store (${this.#storeName}) for ${seconds(forMs)} (since ` +
        `${new Date(sinceMs).toISOString()}), longer than store_unreachable_timeout (${seconds(this.boundMs)}): ` +
        "stopping the workers, as without the store this node can neither restart them nor learn of the " +
        `other nodes. Last error: ${last}. Check that the store runs and that this node reaches it ` +
        "(rdzv serve keeps the rendezvous across its restarts with --data-dir), then start the job again; " +
        "to wait longer, raise store_unreachable_timeout (seconds) in --rdzv-conf",
      { cause: this.#lastError },
    );
  }
}

function seconds(ms: number): string {
  return `${Number((ms / 1000).toFixed(1))} s`;
}
