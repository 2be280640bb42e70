/**
 * The `WAIT_ASYNC` and `GET_ASYNC` registrations of one server connection (rdzv extension, tagged
 * connections only): any number of waits, each with a client-chosen u32 id (one id space for both),
 * outstanding at once without parking the connection. When a wait's keys all exist the connection writes
 * a `WaitDone` frame with its id (a `GetDone` frame with the key's value, for a GET_ASYNC);
 * `CANCEL_ASYNC` drops one; all of them end with the connection.
 */

import type { Waiter } from "../kv-engine.js";
import { ProtocolError } from "./byte-reader.js";
import { MAX_FAILED_REASON_BYTES, ReplyTag } from "./protocol.js";
import { checkWaiterLimit } from "./server-registrations.js";
import type { ServerState } from "./server-state.js";

/** The tagged frame telling the client that the `WAIT_ASYNC` of `id` is over: tag, u32 id. */
export function encodeWaitDone(id: number): Buffer {
  const buf = Buffer.allocUnsafe(5);
  buf[0] = ReplyTag.WaitDone;
  buf.writeUInt32LE(id >>> 0, 1);
  return buf;
}

/** The tagged frame carrying what the `GET_ASYNC` of `id` read: tag, u32 id, u64 length, bytes. */
export function encodeGetDone(id: number, value: Uint8Array): Buffer {
  const buf = Buffer.allocUnsafe(13 + value.byteLength);
  buf[0] = ReplyTag.GetDone;
  buf.writeUInt32LE(id >>> 0, 1);
  buf.writeUInt32LE(value.byteLength >>> 0, 5);
  buf.writeUInt32LE(Math.floor(value.byteLength / 2 ** 32), 9);
  buf.set(value, 13);
  return buf;
}

/**
 * The tagged frame that answers a request which failed and changed nothing: tag, u64 length, the reason
 * (UTF-8, cut to `MAX_FAILED_REASON_BYTES`).
 */
export function encodeFailed(reason: string): Buffer {
  const text = Buffer.from(reason, "utf8").subarray(0, MAX_FAILED_REASON_BYTES);
  const buf = Buffer.allocUnsafe(9 + text.byteLength);
  buf[0] = ReplyTag.Failed;
  buf.writeUInt32LE(text.byteLength, 1);
  buf.writeUInt32LE(0, 5);
  buf.set(text, 9);
  return buf;
}

/** The outstanding async waits of one connection. */
export class AsyncWaits {
  readonly #waits = new Map<number, Waiter>();

  /** `done(id)` runs (synchronously, from whichever request created the last key) when a wait is over. */
  constructor(
    private readonly state: ServerState,
    private readonly done: (id: number) => void,
  ) {}

  /** Outstanding waits. */
  get size(): number {
    return this.#waits.size;
  }

  /**
   * Registers wait `id` on `keys`; when they all exist already it is done at once. `done` (default: the
   * constructor's) runs when it is over.
   */
  add(id: number, keys: readonly string[], done: (id: number) => void = this.done): void {
    if (this.#waits.has(id)) throw new ProtocolError(`async wait id ${id} is already pending`);
    checkWaiterLimit(this.state, keys.length, "WAIT keys");
    checkWaiterLimit(this.state, this.#waits.size + 1, "pending WAIT_ASYNCs");
    const waiter: Waiter = {
      wake: () => {
        if (this.#waits.get(id) !== waiter) return;
        this.#waits.delete(id);
        done(id);
      },
    };
    if (this.state.engine.addWaiter(keys, waiter)) done(id);
    else this.#waits.set(id, waiter);
  }

  /** Drops wait `id`; false when it was not pending (done already, or never registered). */
  cancel(id: number): boolean {
    const waiter = this.#waits.get(id);
    if (waiter === undefined) return false;
    this.#waits.delete(id);
    this.state.engine.removeWaiter(waiter);
    return true;
  }

  /** Drops every wait (the connection closed). */
  clear(): void {
    for (const waiter of this.#waits.values()) this.state.engine.removeWaiter(waiter);
    this.#waits.clear();
  }
}
