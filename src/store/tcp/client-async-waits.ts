/**
 * The client side of rdzv's `WAIT_ASYNC` and `GET_ASYNC` extensions on one tagged connection: each wait gets
 * a fresh u32 id, and the server's `WaitDone` (or `GetDone`, with the value read) frame with that id
 * settles it. A wait given up (timeout, abort) is forgotten here at once, so a `WaitDone` that crossed its
 * `CANCEL_ASYNC` on the wire is ignored.
 *
 * The table keeps the waits' deadlines itself, with one timer for all of them, armed for the earliest
 * deadline (a timer per call cost a pipelined `get` about a third of its client CPU). The timer is unref'd:
 * the connection's socket keeps the process alive while waits are outstanding.
 *
 * Waits live in an array of slots indexed by `id & mask`, not in a `Map`. A `Map` that many ids pass
 * through rehashes about once per capacity's worth of them, and V8 allocates the new table in the old
 * generation once the first one got there (a connection idle for a while, or busy with other requests),
 * while each table it replaced keeps pointing at its entries: every such table then kept a whole batch of
 * finished waits (their promises, closures and values) alive through the young generation's collections
 * until the next full one. A client that had first made 50,000 pipelined adds spent twice the CPU per
 * pipelined get afterwards (3.9 MB surviving each scavenge instead of 1.1, 3.2 MB promoted).
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
  readonly id: number;
  readonly resolve: (value: Uint8Array | undefined) => void;
  readonly reject: (err: RendezvousError) => void;
  /** The deadline on the monotonic clock (`performance.now()`), so wall-clock steps do not move it. */
  readonly due: number;
  readonly onTimeout: () => RendezvousError;
  readonly signal: AbortSignal | undefined;
  readonly onAbort: (() => void) | undefined;
}

/** Slots a table starts with (it doubles while more than half are taken). */
const INITIAL_SLOTS = 64;

/** The outstanding async waits of one connection, by id. */
export class AsyncWaitTable {
  /** Wait `id` sits at `#slot(id)`; an id is handed out only when its slot is free. */
  #slots: (Entry | undefined)[] = new Array<Entry | undefined>(INITIAL_SLOTS).fill(undefined);
  #size = 0;
  #nextId = 0;
  #timer: NodeJS.Timeout | undefined;
  /** The monotonic time `#timer` fires at (Infinity when none is armed). */
  #timerDue = Number.POSITIVE_INFINITY;

  /** `givenUp(id)`: wait `id` timed out or was aborted (and is forgotten); the server should drop it. */
  constructor(private readonly givenUp: (id: number) => void) {}

  /** Outstanding waits. */
  get size(): number {
    return this.#size;
  }

  /**
   * A new wait: its id (to send) and the promise its completion resolves: with the value a `GetDone`
   * carries, `undefined` for a `WaitDone`. It rejects with `limits.onTimeout()` at the deadline and with
   * `AbortedError` when the signal fires; either way the wait is forgotten and `givenUp` told.
   */
  add(limits: AsyncWaitLimits): { id: number; done: Promise<Uint8Array | undefined> } {
    if ((this.#size + 1) * 2 > this.#slots.length) this.#grow();
    // u32 ids wrap; an id whose slot is taken is skipped (so no id in use is handed out twice).
    let id = this.#nextId;
    while (this.#slots[this.#slot(id)] !== undefined) id = (id + 1) >>> 0;
    this.#nextId = (id + 1) >>> 0;
    const done = new Promise<Uint8Array | undefined>((resolve, reject) => {
      const { signal } = limits;
      const onAbort = signal === undefined ? undefined : (): void => this.#giveUp(id, abortedBy(signal));
      const due = performance.now() + (limits.deadlineAt - Date.now());
      this.#slots[this.#slot(id)] = {
        id,
        resolve,
        reject,
        due,
        onTimeout: limits.onTimeout,
        signal,
        onAbort,
      };
      this.#size++;
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
    const entries = this.#entries();
    this.#slots.fill(undefined);
    this.#size = 0;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#timerDue = Number.POSITIVE_INFINITY;
    for (const entry of entries) {
      unlisten(entry);
      entry.reject(err);
    }
  }

  #entries(): Entry[] {
    const entries: Entry[] = [];
    for (const entry of this.#slots) if (entry !== undefined) entries.push(entry);
    return entries;
  }

  /** The slot of `id`: its low bits (the slot count is a power of two). */
  #slot(id: number): number {
    return id & (this.#slots.length - 1);
  }

  #take(id: number): Entry | undefined {
    const slot = this.#slot(id);
    const entry = this.#slots[slot];
    if (entry === undefined || entry.id !== id) return undefined;
    this.#slots[slot] = undefined;
    this.#size--;
    unlisten(entry);
    return entry;
  }

  /** Doubles the slots; ids apart under the old mask stay apart under the new one. */
  #grow(): void {
    const old = this.#slots;
    this.#slots = new Array<Entry | undefined>(old.length * 2).fill(undefined);
    for (const entry of old) if (entry !== undefined) this.#slots[this.#slot(entry.id)] = entry;
    // The old array may sit in the old generation: it must not keep the waits alive there.
    old.fill(undefined);
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
    const expired: Entry[] = [];
    let next = Number.POSITIVE_INFINITY;
    for (const entry of this.#slots) {
      if (entry === undefined) continue;
      if (entry.due <= now) expired.push(entry);
      else if (entry.due < next) next = entry.due;
    }
    for (const entry of expired) this.#giveUp(entry.id, entry.onTimeout());
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
