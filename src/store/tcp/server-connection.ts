/**
 * One client connection of the TCP store server: decodes its requests, runs them strictly in order and
 * synchronously against the shared engine (the event loop makes each one atomic), and writes the replies
 * produced while handling one incoming chunk in a single write.
 *
 * A pending WAIT or BARRIER holds back the connection's later requests so replies stay in request order;
 * only a CANCEL_WAIT gets through (see docs/tcpstore-compat.md, "Pipelining behind a wait").
 */

import type { Socket } from "node:net";
import { ErrorCode, RendezvousError } from "../../errors.js";
import { CounterValueError, StorageFailedError, StoreFullError, type Waiter } from "../kv-engine.js";
import { ProtocolError } from "./byte-reader.js";
import {
  encodeAuthThrottledReply,
  encodeKeyListReply,
  encodeQueuePopReply,
  encodeU8Reply,
  encodeU32Reply,
} from "./encode.js";
import {
  AUTH_PROBE_KEY,
  AuthResponse,
  CancelAsyncResponse,
  CheckResponse,
  Dialect,
  EXTENSION_ACK,
  EXTENSION_PROBE_KEY,
  type ProtocolLimits,
  ReplyTag,
  type Request,
  WaitResponse,
  WatchResponse,
} from "./protocol.js";
import { RequestDecoder } from "./request-decoder.js";
import { AsyncWaits, encodeFailed, encodeGetDone, encodeWaitDone } from "./server-async-waits.js";
import { ConnectionRegistrations, checkWaiterLimit } from "./server-registrations.js";
import { PendingReplies } from "./server-replies.js";
import { StallClock } from "./server-stall.js";
import {
  type BarrierParty,
  type KeyWatcher,
  type ServerState,
  tokenDigest,
  tokenMatches,
} from "./server-state.js";
import { directWriter, type ReplyWriter, streamWriter } from "./server-writes.js";

type PendingWait =
  | { readonly kind: "wait"; readonly waiter: Waiter }
  | { readonly kind: "barrier"; readonly key: string };

interface Queued {
  readonly request: Request;
  readonly bytes: number;
}

const EMPTY = new Uint8Array(0);
const STOP_WAITING = encodeU8Reply(WaitResponse.StopWaiting);
const WAIT_CANCELED = encodeU8Reply(WaitResponse.WaitCanceled);
const READY = encodeU8Reply(CheckResponse.Ready);
const NOT_READY = encodeU8Reply(CheckResponse.NotReady);
const ACK = encodeU8Reply(EXTENSION_ACK);
const WATCH_REGISTERED = encodeU8Reply(WatchResponse.KeyCallbackRegistered);
const AUTH_ACCEPTED = encodeU8Reply(AuthResponse.Accepted);
const AUTH_REJECTED = encodeU8Reply(AuthResponse.Rejected);
const IN_ORDER = encodeU8Reply(ReplyTag.InOrder);
const ASYNC_CANCELED = encodeU8Reply(CancelAsyncResponse.Canceled);
const ASYNC_NOT_PENDING = encodeU8Reply(CancelAsyncResponse.NotPending);

/** An AUTH refused unchecked: its address is locked out (auth-throttle.ts). Closes without a bad-input log. */
class AuthThrottledError extends Error {}

/** Whether a connection that has not authenticated may send `req`: the handshake and the probes only. */
function allowedBeforeAuth(req: Request): boolean {
  switch (req.type) {
    case "validate":
    case "ping":
    case "auth":
      return true;
    case "check":
      return req.keys.every((k) => k === EXTENSION_PROBE_KEY || k === AUTH_PROBE_KEY);
    default:
      return false;
  }
}

/**
 * Most bytes a connection that has not authenticated may have sent and not had handled, beyond the
 * largest AUTH (`maxKeyBytes` of token): room for the handshake and probes pipelined in front of it. Past
 * it the connection is closed, so a stranger cannot make the server buffer a 64 MiB value per connection
 * before its request is refused.
 */
const PRE_AUTH_SLACK_BYTES = 4096;

/** Replies are written early once this many bytes are waiting, so a burst of big GETs streams out. */
const FLUSH_BYTES = 1 << 20;
/** Requests queued behind a pending wait, at most (then reading pauses). */
const MAX_QUEUED = 1024;
const MAX_QUEUED_BYTES = 1 << 20;

/** A server-side connection. Created by the server for each accepted socket. */
export class ServerConnection implements BarrierParty, KeyWatcher {
  readonly decoder: RequestDecoder;
  readonly #out = new PendingReplies();
  /** Watch notifications raised by this connection's own request, sent after its reply (as PyTorch 1.x). */
  #deferred: Buffer[] | undefined;
  #dispatching = false;
  #pending: PendingWait | undefined;
  #queue: Queued[] = [];
  #queuedBytes = 0;
  #writeBlocked = false;
  #readingPaused = false;
  #resumeScheduled = false;
  #dialect: Dialect | undefined;
  #closed = false;
  #closeReason: string | undefined;
  readonly #registrations: ConnectionRegistrations;
  #authenticated: boolean;
  /** When the connection was accepted (epoch ms): it must authenticate within the incomplete-request timeout. */
  readonly #openedAt = Date.now();
  readonly #preAuthMaxBytes: number;
  readonly #stall = new StallClock();
  /** After TAGGED_REPLIES: every reply is preceded by a `ReplyTag`; WAIT_ASYNC is allowed. */
  #tagged = false;
  readonly #asyncWaits: AsyncWaits;
  readonly #writer: ReplyWriter;

  /**
   * `address` is the peer's IP (`socket.remoteAddress`, kept since a closed socket forgets it), `remote`
   * it with the port, for logs. With `directWrites`, replies go to the socket's handle when this Node
   * allows it (server-writes.ts).
   */
  constructor(
    readonly id: number,
    readonly remote: string,
    readonly address: string | undefined,
    private readonly socket: Socket,
    private readonly state: ServerState,
    protocolLimits: Readonly<ProtocolLimits>,
    private readonly onClosed: (conn: ServerConnection, reason: string) => void,
    directWrites = false,
  ) {
    this.decoder = new RequestDecoder(protocolLimits);
    this.#registrations = new ConnectionRegistrations(state, this);
    this.#authenticated = state.security.tokenDigest === undefined;
    this.#preAuthMaxBytes = protocolLimits.maxKeyBytes + PRE_AUTH_SLACK_BYTES;
    this.#asyncWaits = new AsyncWaits(state, (id) => this.notify(encodeWaitDone(id)));
    socket.setNoDelay(true);
    // A socket from `directReads` emits no 'data': its reads come to `received` directly.
    socket.on("data", (chunk: Buffer) => this.received(chunk));
    const drained = (): void => {
      this.#writeBlocked = false;
      this.#stall.writable();
      this.pump();
    };
    this.#writer =
      (directWrites ? directWriter(socket, drained) : undefined) ?? streamWriter(socket, drained);
    socket.on("end", () => {
      this.#closeReason ??= "peer closed the connection";
    });
    socket.on("error", (err: NodeJS.ErrnoException) => {
      this.#closeReason ??= `socket error: ${err.code ?? err.message}`;
    });
    socket.on("close", () => {
      const reason = this.#closeReason ?? "closed";
      this.teardown();
      this.onClosed(this, reason);
    });
  }

  /** Bytes read from the socket (the connection may keep `chunk`). */
  received(chunk: Buffer): void {
    if (this.#closed) return;
    this.#stall.read();
    this.decoder.push(chunk);
    this.pump();
  }

  /** The dialect, once the connection's first bytes decided it. */
  get dialect(): Dialect | undefined {
    return this.#dialect;
  }

  /** Closes the connection at once, dropping unsent replies (server shutdown). */
  destroy(reason: string): void {
    this.#closeReason ??= reason;
    this.teardown();
    this.socket.destroy();
  }

  /**
   * Why this connection should be reaped now, if it should: it held an incomplete request for
   * `incompleteMs` (slow-loris), did not read its replies for `incompleteMs`, or received nothing for
   * `idleMs`. 0 disables a check. A connection parked in a WAIT or BARRIER is never reaped: waiting is its job.
   */
  reapReason(now: number, incompleteMs: number, idleMs: number): string | undefined {
    if (this.#closed || this.#pending !== undefined) return undefined;
    if (!this.#authenticated && incompleteMs > 0 && now - this.#openedAt >= incompleteMs) {
      return `did not authenticate within ${now - this.#openedAt} ms`;
    }
    const buffered = this.decoder.bufferedBytes;
    // Async waits are waiting too: a connection holding some is not idle.
    const idle = this.#asyncWaits.size > 0 ? 0 : idleMs;
    return this.#stall.reapReason(now, incompleteMs, idle, buffered, this.#readingPaused);
  }

  /** BarrierParty: the barrier this connection was parked on reached its count. */
  barrierReleased(): void {
    this.#pending = undefined;
    this.waitDone();
  }

  /**
   * KeyWatcher: a v1 watch notification for this connection; also a WAIT_ASYNC completion. Raised by this
   * connection's own request, it follows that request's reply.
   */
  notify(message: Buffer): void {
    if (this.#closed) return;
    if (this.#dispatching) {
      this.#deferred ??= [];
      this.#deferred.push(message);
      return;
    }
    this.reply(message);
    this.scheduleResume();
  }

  /** Handles whatever can be handled now, writes the replies, and pauses or resumes reading. */
  private pump(): void {
    if (this.#closed) return;
    const mark = this.#stall.mark();
    try {
      this.processRequests();
      // After handling: an AUTH complete in the buffer has been taken, whatever follows it.
      if (!this.#authenticated) this.checkPreAuthBytes();
    } catch (err) {
      this.fail(err);
      return;
    }
    this.flush();
    this.updateReading();
    this.#stall.settle(this.decoder.bufferedBytes, mark);
  }

  private processRequests(): void {
    while (!this.#closed && !this.#writeBlocked) {
      if (this.#pending === undefined && this.#queue.length > 0) {
        const next = this.#queue.shift()!;
        this.#stall.progressed();
        this.#queuedBytes -= next.bytes;
        this.dispatch(next.request);
      } else {
        if (this.#pending !== undefined && this.queueFull()) return;
        const before = this.decoder.bufferedBytes;
        const request = this.decoder.next();
        if (this.#dialect === undefined && this.decoder.dialect !== undefined) this.dialectDecided();
        if (request === undefined) return;
        this.#stall.progressed();
        if (this.#pending === undefined) {
          this.dispatch(request);
        } else if (this.#dialect === Dialect.V1) {
          // A v1 client never pipelines behind its WAIT: a new request means it timed out (spec §4.5).
          this.cancelPending();
          this.dispatch(request);
        } else {
          // The only thing a v2 client pipelines behind a wait is CANCEL_WAIT; it cancels the wait now
          // (so the wait gets no reply) and still replies in its place in the queue.
          if (request.type === "cancelWait") this.cancelPending();
          this.#queue.push({ request, bytes: before - this.decoder.bufferedBytes });
          this.#queuedBytes += before - this.decoder.bufferedBytes;
        }
      }
      if (this.#out.bytes >= FLUSH_BYTES) this.flush();
    }
  }

  /** Throws (`RDZV_AUTH`) when the unauthenticated peer holds more bytes in the buffer than an AUTH needs. */
  private checkPreAuthBytes(): void {
    const buffered = this.decoder.bufferedBytes;
    if (buffered <= this.#preAuthMaxBytes) return;
    throw new ProtocolError(
      `authentication required: ${buffered} bytes sent before authenticating (at most ${this.#preAuthMaxBytes})`,
      ErrorCode.Auth,
    );
  }

  private queueFull(): boolean {
    return this.#queue.length >= MAX_QUEUED || this.#queuedBytes >= MAX_QUEUED_BYTES;
  }

  private dispatch(req: Request): void {
    if (!this.#authenticated && !allowedBeforeAuth(req)) {
      const why = this.#dialect === Dialect.V1 ? " (v1 clients cannot authenticate)" : "";
      throw new ProtocolError(`authentication required before ${req.type}${why}`, ErrorCode.Auth);
    }
    this.state.ops[req.type]++;
    this.#dispatching = true;
    const tagAt = this.#tagged ? this.#out.count : -1;
    try {
      this.handle(req);
      // The in-order reply this request produced, if any, gets its tag in front.
      if (tagAt >= 0) this.#out.insertAt(tagAt, IN_ORDER);
    } catch (err) {
      // A tagged connection (rdzv's client) is told why its ADD failed, and keeps its other requests,
      // waits and on-disconnect keys; the failing request wrote nothing and changed nothing. Untagged
      // ones (PyTorch's clients) are closed, as PyTorch's servers do.
      if (tagAt < 0 || !(err instanceof CounterValueError)) throw err;
      this.reply(encodeFailed(err.reason));
    }
    this.#dispatching = false;
    if (this.#deferred !== undefined) {
      for (const message of this.#deferred) this.reply(message);
      this.#deferred = undefined;
    }
  }

  private handle(req: Request): void {
    const { engine } = this.state;
    switch (req.type) {
      case "validate":
        break; // the decoder checked the magic; VALIDATE has no reply
      case "ping":
        this.reply(encodeU32Reply(req.nonce));
        break;
      case "set":
        engine.set(req.key, req.value);
        break;
      case "compareSet":
        this.#out.value(engine.compareSet(req.key, req.expected, req.desired));
        break;
      case "get":
        // A missing key reads as empty, as PyTorch's libuv server (legacy closes the connection).
        this.#out.value(engine.get(req.key) ?? EMPTY);
        break;
      case "add":
        this.#out.i64(engine.add(req.key, req.delta));
        break;
      case "check": {
        const ready = req.keys.every((k) => this.probe(k) ?? engine.has(k));
        this.reply(ready ? READY : NOT_READY);
        break;
      }
      case "auth":
        this.authenticate(req.token);
        break;
      case "wait":
        this.wait(req.keys);
        break;
      case "getNumKeys":
        this.#out.i64(BigInt(engine.size));
        break;
      case "watchKey":
        this.#registrations.watch(req.key);
        this.reply(WATCH_REGISTERED);
        break;
      case "deleteKey":
        this.#out.i64(engine.delete(req.key) ? 1n : 0n);
        break;
      case "append":
        engine.append(req.key, req.value);
        break;
      case "multiGet":
        for (const k of req.keys) this.#out.value(engine.get(k) ?? EMPTY);
        break;
      case "multiSet":
        engine.multiSet(req.keys, req.values);
        break;
      case "cancelWait":
        this.cancelPending();
        this.reply(WAIT_CANCELED);
        break;
      case "queuePush":
        engine.queuePush(req.key, req.value);
        break;
      case "queuePop": {
        const length = engine.queueLen(req.key);
        this.reply(encodeQueuePopReply(length, length > 0 ? engine.queuePop(req.key) : undefined));
        break;
      }
      case "queueLen":
        this.#out.i64(BigInt(engine.queueLen(req.key)));
        break;
      case "listKeys":
        this.reply(encodeKeyListReply(engine.keys()));
        break;
      case "barrier":
        this.barrier(req.key, req.worldSize);
        break;
      case "onDisconnectSet":
        this.#registrations.onDisconnectSet(req.key, req.value);
        this.reply(ACK);
        break;
      case "onDisconnectClear":
        this.#registrations.onDisconnectClear(req.key);
        this.reply(ACK);
        break;
      case "taggedReplies":
        // Its own ACK is the last untagged reply.
        this.reply(ACK);
        this.#tagged = true;
        break;
      case "waitAsync":
        this.requireTagged(req.type);
        this.#asyncWaits.add(req.id, req.keys);
        break;
      case "getAsync": {
        this.requireTagged(req.type);
        const { key } = req;
        // The value as it is when the key appears (synchronously, from the request that created it).
        this.#asyncWaits.add(req.id, [key], (id) => this.notify(encodeGetDone(id, engine.get(key) ?? EMPTY)));
        break;
      }
      case "cancelAsync":
        this.requireTagged(req.type);
        this.reply(this.#asyncWaits.cancel(req.id) ? ASYNC_CANCELED : ASYNC_NOT_PENDING);
        break;
    }
  }

  private requireTagged(type: string): void {
    if (!this.#tagged) throw new ProtocolError(`${type} before TAGGED_REPLIES`);
  }

  /** CHECK's answer for a probe key, or undefined for a real key. */
  private probe(key: string): boolean | undefined {
    if (key === EXTENSION_PROBE_KEY) return true;
    if (key === AUTH_PROBE_KEY) return this.state.security.tokenDigest !== undefined;
    return undefined;
  }

  private authenticate(token: Uint8Array): void {
    const { security } = this.state;
    const waitMs = security.throttle.retryAfterMs(this.address);
    if (waitMs > 0) {
      // Not checked: a locked-out address must not learn whether its guess was right.
      this.state.authThrottled++;
      this.reply(encodeAuthThrottledReply(waitMs));
      throw new AuthThrottledError(`authentication throttled for ${waitMs} ms more`);
    }
    const given = tokenDigest(token);
    if (!tokenMatches(security, given)) {
      this.state.authFailures++;
      const { key, lockedMs } = security.throttle.failed(this.address, given);
      if (lockedMs > 0) {
        // One line per lockout, so at most one per address and window.
        this.state.logger.warn(
          "TCPStore server: too many wrong auth tokens from one address: refusing its AUTH unchecked",
          { address: key, maxFailures: security.throttle.maxFailures, lockedMs },
        );
      }
      this.reply(AUTH_REJECTED);
      throw new ProtocolError("authentication failed: wrong token", ErrorCode.Auth);
    }
    this.#authenticated = true;
    this.reply(AUTH_ACCEPTED);
  }

  private wait(keys: readonly string[]): void {
    checkWaiterLimit(this.state, keys.length, "WAIT keys");
    const waiter: Waiter = {
      wake: () => {
        if (this.#pending?.kind !== "wait" || this.#pending.waiter !== waiter) return;
        this.#pending = undefined;
        this.waitDone();
      },
    };
    if (this.state.engine.addWaiter(keys, waiter)) this.reply(STOP_WAITING);
    else this.#pending = { kind: "wait", waiter };
  }

  private barrier(key: string, worldSize: bigint): void {
    const count = this.state.engine.add(key, 1n);
    if (count >= worldSize) {
      this.state.releaseBarrier(key);
      this.reply(STOP_WAITING);
    } else {
      this.#pending = { kind: "barrier", key };
      this.state.parkBarrier(key, this);
    }
  }

  /** Called (synchronously, from whichever request satisfied it) when the pending wait is over. */
  private waitDone(): void {
    if (this.#closed) return;
    // The incomplete-request clock stood still during the wait.
    this.#stall.restart();
    if (this.#tagged) this.reply(IN_ORDER);
    this.reply(STOP_WAITING);
    this.scheduleResume();
  }

  /** Drops the pending WAIT/BARRIER registration, if any. */
  private cancelPending(): void {
    const pending = this.#pending;
    if (pending === undefined) return;
    this.#pending = undefined;
    if (pending.kind === "wait") this.state.engine.removeWaiter(pending.waiter);
    else this.state.unparkBarrier(pending.key, this);
  }

  private dialectDecided(): void {
    this.#dialect = this.decoder.dialect!;
    this.state.dialects[this.#dialect]++;
  }

  private reply(buf: Buffer): void {
    this.#out.push(buf);
  }

  /** Runs `pump` once the current request (maybe another connection's) has finished. */
  private scheduleResume(): void {
    if (this.#resumeScheduled) return;
    this.#resumeScheduled = true;
    queueMicrotask(() => {
      this.#resumeScheduled = false;
      this.pump();
    });
  }

  private flush(): void {
    if (this.#out.writeTo(this.#writer)) return;
    this.#writeBlocked = true;
    this.#stall.writeBlocked();
  }

  private updateReading(): void {
    if (this.#closed) return;
    const pause = this.#writeBlocked || (this.#pending !== undefined && this.queueFull());
    if (pause === this.#readingPaused) return;
    this.#readingPaused = pause;
    if (pause) this.socket.pause();
    else this.socket.resume();
  }

  /**
   * Closes the connection for bad input, or for a write the store could not record (its storage failed:
   * not the client's fault, and logged by the storage itself): the replies already produced go out first.
   */
  private fail(err: unknown): void {
    const reason = err instanceof Error ? err.message : String(err);
    if (err instanceof AuthThrottledError) {
      this.#closeReason ??= reason; // counted, and logged when the lockout began
    } else if (err instanceof StoreFullError) {
      this.#closeReason ??= reason;
      this.state.storeFullRefused(this.id, this.remote, reason);
    } else if (err instanceof StorageFailedError) {
      this.#closeReason ??= `storage failed: ${reason}`;
      this.state.logger.warn("TCPStore server: closing a connection: the store cannot record its write", {
        id: this.id,
        remote: this.remote,
        file: err.file,
      });
    } else {
      const code = err instanceof RendezvousError ? err.code : ErrorCode.Protocol;
      this.#closeReason ??= `bad input: ${reason}`;
      this.state.badInput(this.id, this.remote, reason, code);
    }
    this.flush();
    this.teardown();
    this.socket.destroySoon();
  }

  /** Drops the connection's waits, watches and queued requests, and runs its on-disconnect sets. Idempotent. */
  private teardown(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.cancelPending();
    this.#asyncWaits.clear();
    this.#queue = [];
    this.#out.clear();
    if (this.#dialect !== undefined) this.state.dialects[this.#dialect]--;
    let sets = 0;
    try {
      // The server's own markers: a full store still takes them (the others must learn of this close).
      sets = this.state.engine.unlimited(() => this.#registrations.release());
    } catch (err) {
      // The store stops recording for good (fail-stop): the markers cannot be written either.
      if (!(err instanceof StorageFailedError)) throw err;
      this.state.logger.warn("TCPStore server: on-disconnect sets not run: the store cannot record writes", {
        id: this.id,
        file: err.file,
      });
    }
    if (sets > 0)
      this.state.logger.debug("TCPStore server: ran on-disconnect sets", { id: this.id, keys: sets });
  }
}
