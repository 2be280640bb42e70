/**
 * The client side of rdzv's `WAIT_ASYNC` and `GET_ASYNC` extensions on one tagged connection: each wait gets
 * a fresh u32 id, and the server's `WaitDone` (or `GetDone`, with the value read) frame with that id
 * settles it. A wait given up (timeout, abort) is forgotten
 * here at once, so a `WaitDone` that crossed its `CANCEL_ASYNC` on the wire is ignored.
 */

import type { RendezvousError } from "../../errors.js";

interface Entry {
  readonly resolve: (value: Uint8Array | undefined) => void;
  readonly reject: (err: RendezvousError) => void;
}

/** The outstanding async waits of one connection, by id. */
export class AsyncWaitTable {
  readonly #waits = new Map<number, Entry>();
  #nextId = 0;

  /** Outstanding waits. */
  get size(): number {
    return this.#waits.size;
  }

  /**
   * A new wait: its id (to send) and the promise its completion resolves: with the value a `GetDone`
   * carries, `undefined` for a `WaitDone`.
   */
  add(): { id: number; done: Promise<Uint8Array | undefined> } {
    let id = this.#nextId;
    // u32 ids wrap; skip any still in use (at most maxWaitersPerConnection are).
    while (this.#waits.has(id)) id = (id + 1) >>> 0;
    this.#nextId = (id + 1) >>> 0;
    const done = new Promise<Uint8Array | undefined>((resolve, reject) =>
      this.#waits.set(id, { resolve, reject }),
    );
    return { id, done };
  }

  /** The server said wait `id` is over (`value`: what its GET_ASYNC read); unknown ids (given up already) are ignored. */
  settle(id: number, value?: Uint8Array): void {
    const entry = this.#waits.get(id);
    if (entry === undefined) return;
    this.#waits.delete(id);
    entry.resolve(value);
  }

  /** Forgets wait `id` (given up); true when it was still outstanding. */
  forget(id: number): boolean {
    return this.#waits.delete(id);
  }

  /** Rejects every outstanding wait with `err` (the connection ended). */
  rejectAll(err: RendezvousError): void {
    const entries = [...this.#waits.values()];
    this.#waits.clear();
    for (const entry of entries) entry.reject(err);
  }
}
