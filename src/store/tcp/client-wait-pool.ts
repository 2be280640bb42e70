/**
 * Connections for blocking requests (WAIT, BARRIER). A parked WAIT blocks its connection's reply stream,
 * and PyTorch's servers answer requests pipelined behind it out of order, so each blocking request gets a
 * connection to itself: one is taken from the idle list or opened (VALIDATE + PING, like PyTorch's
 * `clone()`), and given back when the request completes. On timeout or abort the request is cancelled
 * with CANCEL_WAIT (v2) and the connection reused once the server acknowledged it; a v1 connection, which
 * has no cancel, is closed instead, so a stale reply can never desynchronize a later request.
 */

import type { RendezvousError } from "../../errors.js";
import { storeClosedError } from "./client-connect.js";
import type { ClientConnection } from "./client-connection.js";

/** Opens a connection that reports its end through `onClose`. */
export type OpenWaitConnection = (
  deadlineAt: number,
  onClose: (conn: ClientConnection | undefined) => void,
) => Promise<ClientConnection>;

/** How long a cancelled connection waits for the server's WAIT_CANCELED before it is closed instead. */
const CANCEL_ACK_TIMEOUT_MS = 10_000;

/** How many idle wait connections are kept for reuse (idle ones do not keep the process alive). */
export const MAX_IDLE_WAIT_CONNECTIONS = 2;

/** The wait connections of one `TCPStore`: handed out one blocking request at a time. */
export class WaitPool {
  readonly #open: OpenWaitConnection;
  readonly #maxIdle: number;
  readonly #idle: ClientConnection[] = [];
  readonly #all = new Set<ClientConnection>();
  #closed = false;

  constructor(open: OpenWaitConnection, maxIdle = MAX_IDLE_WAIT_CONNECTIONS) {
    this.#open = open;
    this.#maxIdle = maxIdle;
  }

  /** Connections open right now (busy and idle). */
  get size(): number {
    return this.#all.size;
  }

  /** An idle connection, or a new one opened before `deadlineAt` (epoch ms). */
  async acquire(deadlineAt: number): Promise<ClientConnection> {
    for (let conn = this.#idle.pop(); conn !== undefined; conn = this.#idle.pop()) {
      if (conn.open) {
        conn.socket.ref();
        return conn;
      }
    }
    const conn = await this.#open(deadlineAt, (c) => {
      if (c === undefined) return;
      this.#all.delete(c);
      const i = this.#idle.indexOf(c);
      if (i >= 0) this.#idle.splice(i, 1);
    });
    if (this.#closed) {
      void conn.close();
      throw storeClosedError();
    }
    this.#all.add(conn);
    return conn;
  }

  /** Gives back a connection whose blocking request completed. */
  release(conn: ClientConnection): void {
    if (!conn.open) return;
    if (this.#closed || conn.pendingCount > 0 || this.#idle.length >= this.#maxIdle) {
      this.#drop(conn);
      return;
    }
    conn.socket.unref();
    this.#idle.push(conn);
  }

  /** Gives back a connection whose blocking request was given up (timeout or abort). */
  cancel(conn: ClientConnection): void {
    if (!conn.open) return;
    if (conn.dialect === "v1") {
      this.#drop(conn);
      return;
    }
    // A server that never acknowledges the cancel must not pin the connection forever.
    const timer = setTimeout(() => this.#drop(conn), CANCEL_ACK_TIMEOUT_MS);
    timer.unref();
    conn.cancelWait().then(
      () => {
        clearTimeout(timer);
        this.release(conn);
      },
      () => {
        clearTimeout(timer);
        this.#drop(conn);
      },
    );
  }

  #drop(conn: ClientConnection): void {
    this.#all.delete(conn);
    void conn.close();
  }

  /** Closes every connection; blocking requests still pending reject with `err`. */
  async close(err: RendezvousError): Promise<void> {
    this.#closed = true;
    const all = [...this.#all];
    this.#all.clear();
    this.#idle.length = 0;
    await Promise.all(all.map((conn) => conn.close(err)));
  }
}
