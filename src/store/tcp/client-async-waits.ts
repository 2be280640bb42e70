/**
 * The client side of rdzv's `WAIT_ASYNC` and `GET_ASYNC` extensions on one tagged connection: each wait gets
 * a fresh u32 id, and the server's `WaitDone` (or `GetDone`, with the value read) frame with that id
 * settles it. A wait given up (timeout, abort) is forgotten here at once, so a `WaitDone` that crossed its
 * `CANCEL_ASYNC` on the wire is ignored.
 *
 * The table keeps the waits' deadlines itself, with one timer for all of them, armed for the earliest
 * deadline (a timer per call cost a pipelined `get` about a third of its client CPU). The timer is unref'd:
 * the connection's socket keeps the process alive while waits are outstanding.
 */

import { AbortedError, type RendezvousError } from "../../errors.js";
import { MAX_TIMER_MS } from "./client-options.js";

/** When a wait gives up: its deadline (epoch ms), what to reject with then, and an abort signal. */
export interface AsyncWaitLimits {
  readonly deadlineAt: number;
  readonly onTimeout: () => RendezvousError;
  readonly signal?: AbortSignal | undefined;
}

interface Entry {
  readonly resolve: (value: Uint8Array | undefined) => void;
  readonly reject: (err: RendezvousError) => void;
  /** The deadline on the monotonic clock (`performance.now()`), so wall-clock steps do not move it. */
  readonly due: number;
  readonly onTimeout: () => RendezvousError;
  readonly signal: AbortSignal | undefined;
  readonly onAbort: (() => void) | undefined;
}

/** The outstanding async waits of one connection, by id. */
export class AsyncWaitTable {
  readonly #waits = new Map<number, Entry>();
  #nextId = 0;
  #timer: NodeJS.Timeout | undefined;
  /** The monotonic time `#timer` fires at (Infinity when none is armed). */
  #timerDue = Number.POSITIVE_INFINITY;

  /** `givenUp(id)`: wait `id` timed out or was aborted (and is forgotten); the server should drop it. */
  constructor(private readonly givenUp: (id: number) => void) {}

  /** Outstanding waits. */
  get size(): number {
    return this.#waits.size;
  }

  /**
   * A new wait: its id (to send) and the promise its completion resolves: with the value a `GetDone`
   * carries, `undefined` for a `WaitDone`. It rejects with `limits.onTimeout()` at the deadline and with
   * `AbortedError` when the signal fires; either way the wait is forgotten and `givenUp` told.
   */
  add(limits: AsyncWaitLimits): { id: number; done: Promise<Uint8Array | undefined> } {
    let id = this.#nextId;
    // u32 ids wrap; skip any still in use (at most maxWaitersPerConnection are).
    while (this.#waits.has(id)) id = (id + 1) >>> 0;
    this.#nextId = (id + 1) >>> 0;
    const done = new Promise<Uint8Array | undefined>((resolve, reject) => {
      const { signal } = limits;
      const onAbort = signal === undefined ? undefined : (): void => this.#giveUp(id, abortedBy(signal));
      const due = performance.now() + (limits.deadlineAt - Date.now());
      this.#waits.set(id, { resolve, reject, due, onTimeout: limits.onTimeout, signal, onAbort });
      if (due < this.#timerDue) this.#arm(due);
      if (signal !== undefined && onAbort !== undefined) {
        if (signal.aborted) queueMicrotask(onAbort);
        else signal.addEventListener("abort", onAbort, { once: true });
      }
    });
    return { id, done };
  }

  /** The server said wait `id` is over (`value`: what its GET_ASYNC read); unknown ids (given up already) are ignored. */
  settle(id: number, value?: Uint8Array): void {
    const entry = this.#take(id);
    entry?.resolve(value);
  }

  /** Forgets wait `id` (given up); true when it was still outstanding. */
  forget(id: number): boolean {
    return this.#take(id) !== undefined;
  }

  /** Rejects every outstanding wait with `err` (the connection ended). */
  rejectAll(err: RendezvousError): void {
    const entries = [...this.#waits.values()];
    this.#waits.clear();
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#timerDue = Number.POSITIVE_INFINITY;
    for (const entry of entries) {
      unlisten(entry);
      entry.reject(err);
    }
  }

  #take(id: number): Entry | undefined {
    const entry = this.#waits.get(id);
    if (entry === undefined) return undefined;
    this.#waits.delete(id);
    unlisten(entry);
    return entry;
  }

  #giveUp(id: number, err: RendezvousError): void {
    const entry = this.#take(id);
    if (entry === undefined) return;
    entry.reject(err);
    this.givenUp(id);
  }

  #arm(due: number): void {
    clearTimeout(this.#timer);
    this.#timerDue = due;
    const delay = Math.min(Math.max(0, Math.ceil(due - performance.now())), MAX_TIMER_MS);
    this.#timer = setTimeout(() => this.#expire(), delay);
    this.#timer.unref();
  }

  /** The timer fired: rejects every wait past its deadline and arms the timer for the next deadline. */
  #expire(): void {
    this.#timer = undefined;
    this.#timerDue = Number.POSITIVE_INFINITY;
    const now = performance.now();
    const expired: [number, Entry][] = [];
    let next = Number.POSITIVE_INFINITY;
    for (const item of this.#waits) {
      const due = item[1].due;
      if (due <= now) expired.push(item);
      else if (due < next) next = due;
    }
    for (const [id, entry] of expired) this.#giveUp(id, entry.onTimeout());
    if (next < this.#timerDue) this.#arm(next);
  }
}

function unlisten(entry: Entry): void {
  if (entry.signal !== undefined && entry.onAbort !== undefined) {
    entry.signal.removeEventListener("abort", entry.onAbort);
  }
}

function abortedBy(signal: AbortSignal): RendezvousError {
  return new AbortedError(undefined, { cause: signal.reason });
}
