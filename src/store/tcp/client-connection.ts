/**
 * One client connection to a TCPStore server: a pipelined request/reply channel over a socket.
 *
 * Replies carry no id, so they are matched to requests by order: every request that expects a reply
 * appends its reply shape to a FIFO, and the reply stream is decoded in that order. Requests made in the
 * same tick are gathered into one socket write. Requests without a reply (SET, APPEND, ...) resolve once
 * the server has handled them: a write that ends with such requests ends with a PING (v1: GETNUMKEYS),
 * whose reply, coming in order, says that everything before it was applied (and, with `--data-dir`,
 * journaled). So a `set` that resolved survives a server that is killed afterwards, and one the server
 * refused (over its limits: it closes the connection) rejects instead of vanishing.
 *
 * A WAIT or BARRIER parks the reply stream on the server, and PyTorch's servers keep answering later
 * requests of that connection while it is parked (out of order). So a connection carrying a blocking
 * request must carry nothing else but the CANCEL_WAIT that may follow it; `TCPStore` runs blocking
 * requests on connections of their own (see `client-wait-pool.ts`). Against an rdzv server the main
 * connection instead switches to tagged replies (`enableTagged`) and waits with `WAIT_ASYNC`, any number
 * at once, between its pipelined requests (see `client-async-waits.ts`).
 */

import type { Socket } from "node:net";
import {
  ErrorCode,
  RendezvousConnectionError,
  RendezvousError,
  RendezvousTimeoutError,
} from "../../errors.js";
import { type AsyncWaitLimits, AsyncWaitTable } from "./client-async-waits.js";
import { RequestWriter } from "./client-encode.js";
import { closedByServer, requestFailed, socketError } from "./client-errors.js";
import { CancelAsyncResponse, type Dialect, type Request, WaitResponse } from "./protocol.js";
import type { Reply, ReplyDecoder, ReplyShape } from "./reply-decoder.js";

export { describeRequest, printable, socketError, userKey } from "./client-errors.js";

/** The value type of a reply of kind `K`. */
export type ReplyValue<K extends ReplyShape["kind"]> = Extract<Reply, { kind: K }>["value"];

/** Reply shapes without parameters, allocated once. */
export const Shape = {
  u8: { kind: "u8" },
  auth: { kind: "auth" },
  u32: { kind: "u32" },
  i64: { kind: "i64" },
  value: { kind: "value" },
  queuePop: { kind: "queuePop" },
  keyList: { kind: "keyList" },
} as const satisfies Record<string, ReplyShape>;

interface Pending {
  readonly shape: ReplyShape;
  readonly req: Request;
  readonly resolve: (value: never) => void;
  readonly reject: (err: Error) => void;
  /** The requests without a reply that this (PING / GETNUMKEYS) request confirms. */
  readonly confirms?: Batch;
}

interface Batch {
  readonly promise: Promise<void>;
  readonly resolve: () => void;
  readonly reject: (err: Error) => void;
}

/** How a `ClientConnection` speaks and whom it tells when it ends. */
export interface ClientConnectionOptions {
  readonly dialect: Dialect;
  /** `host:port`, for messages. */
  readonly peer: string;
  readonly decoder: ReplyDecoder;
  /** Called once when the connection ends, with the reason (undefined after `close()`). */
  readonly onClose?: (err: RendezvousError | undefined) => void;
}

/** A connected socket speaking the TCPStore protocol as a client. Created by `openConnection`. */
export class ClientConnection {
  readonly dialect: Dialect;
  readonly peer: string;
  readonly socket: Socket;
  readonly #decoder: ReplyDecoder;
  readonly #onClose: ((err: RendezvousError | undefined) => void) | undefined;
  #pending: Pending[] = [];
  #head = 0;
  readonly #out: RequestWriter;
  #batch: Batch | undefined;
  #flushScheduled = false;
  #closed = false;
  #repliesDecoded = 0;
  #watchdog: NodeJS.Timeout | undefined;
  #tagged = false;
  readonly #asyncWaits = new AsyncWaitTable((id) => void this.#cancelOnServer(id));

  constructor(socket: Socket, options: ClientConnectionOptions) {
    this.socket = socket;
    this.dialect = options.dialect;
    this.peer = options.peer;
    this.#decoder = options.decoder;
    this.#out = new RequestWriter(undefined, options.decoder.limits);
    this.#onClose = options.onClose;
    socket.on("data", (chunk: Buffer) => this.#onData(chunk));
    socket.on("error", (err) => this.destroy(socketError(this.peer, err)));
    socket.on("close", () =>
      this.destroy(closedByServer(this.peer, this.#headRequest(), this.#asyncWaits.size)),
    );
  }

  /** Bytes read from the socket, for a socket that reads through `onread` (which emits no 'data'). */
  received(chunk: Buffer): void {
    this.#onData(chunk);
  }

  /** False once the connection ended, for whatever reason. */
  get open(): boolean {
    return !this.#closed;
  }

  /** True once `enableTagged()` was sent: `waitAsync` may be used. */
  get tagged(): boolean {
    return this.#tagged;
  }

  /** Outstanding `waitAsync` waits. */
  get asyncWaitCount(): number {
    return this.#asyncWaits.size;
  }

  /** Number of requests still waiting for their reply. */
  get pendingCount(): number {
    return this.#pending.length - this.#head;
  }

  /** Sends a request that has no reply; resolves once the server handled it (see the module comment). */
  send(req: Request): Promise<void> {
    if (this.#closed) return Promise.reject(this.#closedError());
    this.#write(req);
    if (this.#batch === undefined) {
      let resolve!: () => void;
      let reject!: (err: Error) => void;
      const promise = new Promise<void>((res, rej) => {
        resolve = res;
        reject = rej;
      });
      this.#batch = { promise, resolve, reject };
    }
    return this.#batch.promise;
  }

  /** Sends a request and resolves with its reply of shape `shape`. */
  request<S extends ReplyShape>(req: Request, shape: S): Promise<ReplyValue<S["kind"]>> {
    return new Promise((resolve, reject) => {
      if (this.#closed) {
        reject(this.#closedError());
        return;
      }
      this.#write(req);
      this.#pending.push({ shape, req, resolve: resolve as (v: never) => void, reject });
    });
  }

  /**
   * Sends CANCEL_WAIT (v2) after a blocking request of this connection, and resolves once the server
   * acknowledged it; a reply `00` of the cancelled request that crossed the cancel on the wire is consumed
   * by that request's own entry.
   */
  cancelWait(): Promise<void> {
    return this.request({ type: "cancelWait" }, Shape.u8).then((v) => {
      if (v !== WaitResponse.WaitCanceled) throw this.#protocolError(`CANCEL_WAIT answered ${v}`);
    });
  }

  /**
   * rdzv extension (only on a server that answered the extension probe): switches the connection to tagged
   * replies. `waitAsync` works at once (the server handles requests in order); the decoder switches when
   * the acknowledgement arrives. Resolves then.
   */
  enableTagged(): Promise<void> {
    this.#tagged = true;
    return this.request({ type: "taggedReplies" }, Shape.u8).then(() => {});
  }

  /**
   * rdzv extension (after `enableTagged`): waits until every one of `keys` exists without blocking the
   * connection. Resolves then; rejects at the deadline or on abort (and drops the wait on the server), or
   * when the connection ends.
   */
  waitAsync(keys: readonly string[], limits: AsyncWaitLimits): Promise<void> {
    return this.#async(
      (id) => ({ type: "waitAsync", id, keys }),
      limits,
    ) as Promise<unknown> as Promise<void>;
  }

  /**
   * rdzv extension (after `enableTagged`): reads `key` once it exists, without blocking the connection.
   * Resolves with its value then (`undefined` only if the server answered with a plain `WaitDone`); rejects
   * as `waitAsync`.
   */
  getAsync(key: string, limits: AsyncWaitLimits): Promise<Uint8Array | undefined> {
    return this.#async((id) => ({ type: "getAsync", id, key }), limits);
  }

  #async(request: (id: number) => Request, limits: AsyncWaitLimits): Promise<Uint8Array | undefined> {
    if (this.#closed) return Promise.reject(this.#closedError());
    const wait = this.#asyncWaits.add(limits);
    try {
      this.#write(request(wait.id));
    } catch (err) {
      this.#asyncWaits.forget(wait.id);
      wait.done.catch(() => {});
      throw err;
    }
    return wait.done;
  }

  /**
   * Sends CANCEL_ASYNC for an async wait this side gave up (timed out or aborted; the table forgot it
   * already), so no waiter is left behind on the server. Resolves once the server answered.
   */
  async #cancelOnServer(id: number): Promise<void> {
    if (this.#closed) return;
    const reply = await this.request({ type: "cancelAsync", id }, Shape.u8).catch(() => undefined);
    if (
      reply !== undefined &&
      reply !== CancelAsyncResponse.Canceled &&
      reply !== CancelAsyncResponse.NotPending
    ) {
      this.destroy(this.#protocolError(`CANCEL_ASYNC answered ${reply}`));
    }
  }

  /**
   * Fails the connection when replies stop arriving for `timeoutMs()` while requests are pending, so a
   * hung (not closed) server cannot hang non-blocking calls forever. Only for connections that never carry
   * blocking requests.
   */
  startWatchdog(timeoutMs: () => number): void {
    let seen = -1;
    let since = 0;
    const tick = (): void => {
      if (this.pendingCount === 0 || this.#repliesDecoded !== seen) {
        seen = this.#repliesDecoded;
        since = Date.now();
        return;
      }
      const ms = timeoutMs();
      if (Date.now() - since >= ms) {
        this.destroy(
          new RendezvousTimeoutError(`no reply from the TCPStore server at ${this.peer} for ${ms}ms`),
        );
      }
    };
    this.#watchdog = setInterval(tick, Math.min(Math.max(timeoutMs() / 4, 50), 5000));
    this.#watchdog.unref();
  }

  /**
   * Flushes queued requests and half-closes the connection; pending requests reject with `err`. Resolves
   * when the socket closed (the server saw the end), or after `graceMs`, when it is destroyed.
   */
  close(
    err: RendezvousError = new RendezvousError("the store was closed", ErrorCode.ResourceClosed),
    graceMs = 1000,
  ): Promise<void> {
    const closed = new Promise<void>((resolve) => {
      if (this.socket.closed) return resolve();
      this.socket.once("close", () => resolve());
    });
    if (!this.#closed) {
      this.#flush();
      this.socket.ref();
      this.socket.end();
      this.#fail(err, undefined);
      const timer = setTimeout(() => this.socket.destroy(), graceMs);
      timer.unref();
      void closed.then(() => clearTimeout(timer));
    }
    return closed;
  }

  /** Ends the connection at once; pending requests reject with `err`. */
  destroy(err: RendezvousError): void {
    if (this.#closed) return;
    this.socket.destroy();
    this.#fail(err, err);
  }

  #fail(err: RendezvousError, reason: RendezvousError | undefined): void {
    this.#closed = true;
    clearInterval(this.#watchdog);
    const pending = this.#pending.slice(this.#head);
    this.#pending = [];
    this.#head = 0;
    this.#out.clear();
    const batch = this.#batch;
    this.#batch = undefined;
    batch?.reject(err);
    for (const p of pending) {
      // Closed by this side (`close()`): requests written before it count as sent, as they always did.
      if (p.confirms !== undefined && reason === undefined) p.resolve(undefined as never);
      else p.reject(err);
    }
    this.#asyncWaits.rejectAll(err);
    this.#onClose?.(reason);
  }

  /** Encodes `req` into the pending batch (throws, writing nothing, when it cannot be encoded). */
  #write(req: Request): void {
    this.#out.write(this.dialect, req);
    if (this.#flushScheduled) return;
    // One write per tick. Measured on loopback (2 vCPUs, 256 calls in flight): process.nextTick and
    // queueMicrotask are on par (~1 us of client CPU per pipelined add); setImmediate waits for the next
    // loop turn and cost ~2x the CPU and half the throughput.
    this.#flushScheduled = true;
    process.nextTick(() => this.#flush());
  }

  #flush(): void {
    this.#flushScheduled = false;
    if (this.#closed || this.#out.length === 0) return;
    const batch = this.#batch;
    this.#batch = undefined;
    if (batch !== undefined) {
      // The reply to this request says that the requests without a reply before it were handled.
      const req: Request = this.dialect === "v1" ? { type: "getNumKeys" } : { type: "ping", nonce: 0 };
      this.#out.write(this.dialect, req);
      this.#pending.push({
        shape: this.dialect === "v1" ? Shape.i64 : Shape.u32,
        req,
        resolve: () => batch.resolve(),
        reject: batch.reject,
        confirms: batch,
      });
    }
    this.socket.write(this.#out.take());
  }

  #onData(chunk: Buffer): void {
    if (this.#closed) return;
    this.#decoder.push(chunk);
    try {
      while (this.#head < this.#pending.length || this.#decoder.tagged) {
        const entry = this.#pending[this.#head];
        const reply = this.#decoder.next(entry?.shape);
        if (reply === undefined) return;
        this.#repliesDecoded++;
        if (reply.kind === "waitDone") {
          this.#asyncWaits.settle(reply.value);
          continue;
        }
        if (reply.kind === "getDone") {
          this.#asyncWaits.settle(reply.value, reply.data);
          continue;
        }
        if (entry === undefined) throw this.#protocolError("a reply with no request pending");
        this.#shift();
        if (reply.kind === "failed") {
          entry.reject(requestFailed(entry.req, reply.value));
          continue;
        }
        // Every reply after TAGGED_REPLIES' acknowledgement is tagged.
        if (entry.req.type === "taggedReplies") this.#decoder.tagged = true;
        if (reply.kind === "u8" && reply.value === WaitResponse.WaitCanceled && this.#cancelFollows(entry)) {
          // The server cancelled `entry` (a WAIT/BARRIER) without answering it: its single `01` answers
          // both the blocking request and the CANCEL_WAIT behind it.
          const cancel = this.#pending[this.#head]!;
          this.#shift();
          entry.resolve(reply.value as never);
          cancel.resolve(reply.value as never);
          continue;
        }
        entry.resolve(reply.value as never);
      }
      if (this.#decoder.bufferedBytes > 0)
        throw this.#protocolError("unexpected bytes with no request pending");
    } catch (err) {
      const e = err instanceof RendezvousError ? err : this.#protocolError(String(err));
      this.destroy(new RendezvousConnectionError(`bad reply from ${this.peer}: ${e.message}`, { cause: e }));
    }
  }

  #cancelFollows(entry: Pending): boolean {
    const next = this.#pending[this.#head];
    return (entry.req.type === "wait" || entry.req.type === "barrier") && next?.req.type === "cancelWait";
  }

  #shift(): void {
    this.#pending[this.#head++] = undefined as never;
    if (this.#head === this.#pending.length) {
      this.#pending = [];
      this.#head = 0;
    } else if (this.#head >= 4096 && this.#head * 2 >= this.#pending.length) {
      this.#pending = this.#pending.slice(this.#head);
      this.#head = 0;
    }
  }

  #headRequest(): Request | undefined {
    return this.#pending[this.#head]?.req;
  }

  #closedError(): RendezvousError {
    return new RendezvousConnectionError(`the connection to ${this.peer} is closed`);
  }

  #protocolError(message: string): RendezvousError {
    return new RendezvousError(message, ErrorCode.Protocol);
  }
}
