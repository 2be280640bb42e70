/**
 * When a server connection last made progress, for reaping stalled ones: a slow-loris holding part of a
 * request, a peer that leaves its replies unread, an idle connection. Plain timestamps, read by the
 * server's single sweep timer (`TCPStoreServer`), so a connection costs no timer of its own.
 */

/** The stall bookkeeping of one connection. All times are epoch ms. */
export class StallClock {
  /** Requests decoded or dequeued so far. */
  #progress = 0;
  /** Since when the buffered bytes have been an incomplete request, if they are. */
  #partialSince: number | undefined;
  #lastReadAt: number;
  /** Bytes arrived since the last `reapReason`, which dates them (see `read`). */
  #readUndated = false;
  /** Since when the socket has refused more replies, while it does. */
  #writeBlockedSince: number | undefined;

  constructor(now = Date.now()) {
    this.#lastReadAt = now;
  }

  /**
   * Bytes arrived. Only noted: the next sweep (`reapReason`) dates them at its own time, so no read pays
   * for the clock, and an idle connection is reaped up to one sweep late, never early.
   */
  read(): void {
    this.#readUndated = true;
  }

  /** A request was decoded or taken from the queue. */
  progressed(): void {
    this.#progress++;
  }

  /** A token to compare after handling input: `settle(buffered, mark)`. */
  mark(): number {
    return this.#progress;
  }

  /**
   * After handling input: `buffered` bytes remain undecoded. The incomplete-request clock starts when a
   * remainder appears and restarts whenever a request completed since `mark`.
   */
  settle(buffered: number, mark: number): void {
    // The clock is read only when needed: nothing is left over after most reads.
    if (buffered === 0) this.#partialSince = undefined;
    else if (this.#partialSince === undefined || this.#progress !== mark) this.#partialSince = Date.now();
  }

  /** The clock stood still (a wait ended): an incomplete request counts from now. */
  restart(now = Date.now()): void {
    if (this.#partialSince !== undefined) this.#partialSince = now;
  }

  /** The socket refused more replies (idempotent until `writable`). */
  writeBlocked(now = Date.now()): void {
    this.#writeBlockedSince ??= now;
  }

  /** The socket drained. */
  writable(): void {
    this.#writeBlockedSince = undefined;
  }

  /**
   * Why the connection should be reaped at `now`, if it should. `readingPaused`: the server itself stopped
   * reading (its own back-pressure), so a remainder is not the peer's stall. 0 disables a check.
   */
  reapReason(
    now: number,
    incompleteMs: number,
    idleMs: number,
    buffered: number,
    readingPaused: boolean,
  ): string | undefined {
    if (incompleteMs > 0) {
      const blocked = this.#writeBlockedSince;
      if (blocked !== undefined && now - blocked >= incompleteMs) {
        return `did not read its replies for ${now - blocked} ms`;
      }
      const partial = this.#partialSince;
      if (partial !== undefined && !readingPaused && now - partial >= incompleteMs) {
        return `held an incomplete request (${buffered} bytes) for ${now - partial} ms`;
      }
    }
    if (this.#readUndated) {
      this.#readUndated = false;
      this.#lastReadAt = now;
    }
    if (idleMs > 0 && now - this.#lastReadAt >= idleMs) return `idle for ${now - this.#lastReadAt} ms`;
    return undefined;
  }
}
