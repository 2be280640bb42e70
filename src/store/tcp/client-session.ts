/**
 * The connections behind one `TCPStore` handle: the main connection (pipelined non-blocking requests,
 * reconnected on demand) and the pool of wait connections (one per pending WAIT/BARRIER), plus the
 * deadline, abort and reconnect rules every call follows. Against an rdzv server, WAITs run on the main
 * connection instead, as `WAIT_ASYNC`s (tagged replies), so a waiting client holds one connection only.
 */

import { setMaxListeners } from "node:events";
import {
  ErrorCode,
  RendezvousConnectionError,
  RendezvousError,
  type RendezvousStoreGoneError,
  RendezvousTimeoutError,
} from "../../errors.js";
import { checkTimeoutMs, keysTimeoutMessage, throwIfAborted } from "../deadline.js";
import type { CallOptions } from "../store.js";
import { type ConnectTarget, connectWithRetry, peerName, storeClosedError } from "./client-connect.js";
import { type ClientConnection, Shape, userKey } from "./client-connection.js";
import {
  type ConnectOutcome,
  checkGiveUpRule,
  classifyConnectFailure,
  type GiveUpRule,
  givesUp,
  goneError,
  nextStreak,
  type RefusalStreak,
} from "./client-give-up.js";
import { type ResolvedOptions, race } from "./client-options.js";
import { WaitPool } from "./client-wait-pool.js";
import { CheckResponse, type Request, WaitResponse } from "./protocol.js";

/** True when a non-blocking call needs no timer or abort listener. */
function unbounded(options: CallOptions | undefined): boolean {
  return options === undefined || (options.signal === undefined && options.timeoutMs === undefined);
}

/**
 * The error message of call `op` whose wait on `keys` (as sent: "/"-keys, byte strings) timed out, in
 * every store's form: "get timeout after 100ms, keys: a" (user keys, without the "/").
 */
export function waitTimeoutMessage(op: string, keys: readonly string[]): (timeoutMs: number) => string {
  return keysTimeoutMessage(op, keys.map(userKey));
}

/**
 * Owns a `TCPStore`'s connections and the rules of its calls (used by `TCPStore` only): non-blocking
 * requests on the main connection, reconnected on demand by the next call, which waits at most its
 * connect budget; blocking requests on wait connections; `onDisconnect` when the main connection drops.
 * Every connect attempt's outcome feeds the give-up rule (client-give-up.ts): once it gives up, the session
 * fails every pending and later call with its error, as if closed.
 */
export class ClientSession {
  readonly peer: string;
  readonly #options: ResolvedOptions;
  readonly #target: ConnectTarget;
  readonly #onDisconnect: (err: RendezvousError) => void;
  readonly #lifetime = new AbortController();
  readonly #waits: WaitPool;
  #timeoutMs: number;
  #main: ClientConnection | undefined;
  #connecting: Promise<ClientConnection> | undefined;
  #connectDeadline = 0;
  #lastConnectError: unknown;
  #hasExtensions = false;
  #closed = false;
  #giveUp: GiveUpRule | undefined;
  #streak: RefusalStreak;
  #gone: RendezvousStoreGoneError | undefined;

  constructor(options: ResolvedOptions, onDisconnect: (err: RendezvousError) => void) {
    const { host, port, dialect, limits, logger, authToken, tls } = options;
    this.peer = peerName(host, port);
    this.#options = options;
    this.#target = { host, port, dialect, limits, logger, authToken, tls };
    this.#onDisconnect = onDisconnect;
    this.#timeoutMs = options.timeoutMs;
    this.#giveUp = options.giveUp;
    this.#waits = new WaitPool((deadlineAt, onClose) => this.#openWaitConnection(deadlineAt, onClose));
    // Every connection being opened listens on it, and against a v1 server each pending wait opens one:
    // many listeners at once are the design here, not a leak for Node to warn of.
    setMaxListeners(0, this.#lifetime.signal);
  }

  get timeoutMs(): number {
    return this.#timeoutMs;
  }

  set timeoutMs(value: number) {
    this.#timeoutMs = checkTimeoutMs(value, "timeoutMs");
  }

  get giveUp(): GiveUpRule | undefined {
    return this.#giveUp;
  }

  set giveUp(rule: GiveUpRule | undefined) {
    this.#giveUp = checkGiveUpRule(rule);
  }

  /** The error every call fails with once the give-up rule found the server gone, else `undefined`. */
  get gone(): RendezvousStoreGoneError | undefined {
    return this.#gone;
  }

  get hasExtensions(): boolean {
    return this.#hasExtensions;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Wait connections open right now. */
  get waitConnections(): number {
    return this.#waits.size;
  }

  /**
   * Runs `op` on the main connection and bounds its reply by `options`. When the connection is up and the
   * call has no timeout or signal this is synchronous and allocates nothing extra: the pipelined fast
   * path. Otherwise it (re)connects first, within the call's budget. Throws of `op` become rejections.
   */
  run<T>(
    options: CallOptions | undefined,
    what: string,
    op: (conn: ClientConnection) => Promise<T>,
  ): Promise<T> {
    const main = this.#main;
    if (main?.open && unbounded(options)) {
      try {
        return op(main);
      } catch (err) {
        return Promise.reject(err);
      }
    }
    return this.#runSlow(options, what, op);
  }

  async #runSlow<T>(
    options: CallOptions | undefined,
    what: string,
    op: (conn: ClientConnection) => Promise<T>,
  ): Promise<T> {
    const conn =
      this.#main?.open && options?.signal?.aborted !== true ? this.#main : await this.#reconnect(options);
    const reply = op(conn);
    if (unbounded(options)) return reply;
    const timeoutMs = checkTimeoutMs(options?.timeoutMs ?? this.#timeoutMs);
    const timeout = (): RendezvousError => new RendezvousTimeoutError(`${what} timeout after ${timeoutMs}ms`);
    return race(reply, Date.now() + timeoutMs, options?.signal, timeout);
  }

  /**
   * Waits for byte-string keys for call `op` (named by its timeout): CHECK on the main connection, then
   * WAIT on a wait connection if needed.
   */
  async waitKeys(
    op: string,
    keys: readonly string[],
    options: CallOptions | undefined,
    start: number,
  ): Promise<void> {
    // A WAIT_ASYNC of present keys completes at once: no CHECK needed.
    if (this.#main?.tagged)
      return this.blocking({ type: "wait", keys }, options, start, waitTimeoutMessage(op, keys));
    const ready = await this.run(options, op, (c) => c.request({ type: "check", keys }, Shape.u8));
    if (ready === CheckResponse.Ready) return;
    await this.blocking({ type: "wait", keys }, options, start, waitTimeoutMessage(op, keys));
  }

  /**
   * Runs a WAIT or BARRIER on a wait connection within the call's timeout (counted from `start`, epoch
   * ms), cancelling it on expiry or abort.
   */
  async blocking(
    req: Request,
    options: CallOptions | undefined,
    start: number,
    describe: (timeoutMs: number) => string,
  ): Promise<void> {
    this.#enter(options);
    const timeoutMs = checkTimeoutMs(options?.timeoutMs ?? this.#timeoutMs);
    const deadlineAt = start + timeoutMs;
    const signal = options?.signal;
    if (req.type === "wait" && this.#hasExtensions && this.#options.asyncWaits) {
      const main = this.#main?.open ? this.#main : await this.#reconnect(options);
      if (main.tagged) {
        const onTimeout = (): RendezvousError => new RendezvousTimeoutError(describe(timeoutMs));
        return main.waitAsync(req.keys, { deadlineAt, onTimeout, signal });
      }
    }
    // Opening a wait connection retries within the connect budget. Running out of the call's own time
    // while the server is reachable (the main connection is up) is a timeout, not a connection error.
    const acquiring = this.#waits.acquire(Math.min(deadlineAt, Date.now() + this.#options.connectTimeoutMs));
    const expired = (): RendezvousError =>
      this.#main?.open ? new RendezvousTimeoutError(describe(timeoutMs)) : this.#connectError(timeoutMs);
    const conn = await race(acquiring, deadlineAt, signal, expired).catch((err) => {
      acquiring.then(
        (c) => this.#waits.release(c),
        () => {},
      );
      throw err;
    });
    let reply: number;
    try {
      const timeout = (): RendezvousError => new RendezvousTimeoutError(describe(timeoutMs));
      reply = await race(conn.request(req, Shape.u8), deadlineAt, signal, timeout);
    } catch (err) {
      this.#waits.cancel(conn);
      throw err;
    }
    this.#waits.release(conn);
    if (reply !== WaitResponse.StopWaiting) {
      throw new RendezvousError(`${req.type} answered ${reply} instead of STOP_WAITING`, ErrorCode.Protocol);
    }
  }

  /**
   * The value of byte-string `key` once it exists, read with one GET_ASYNC on the tagged main connection
   * (one request, one reply, whether the key exists yet or not) within the call's timeout (counted from
   * `start`); cancelled on the server on timeout or abort. `undefined`, sending nothing, when the main
   * connection is not tagged (a PyTorch server, or option `asyncWaits: false`): the caller then reads the
   * classic way.
   */
  getAsync(key: string, options: CallOptions | undefined, start: number): Promise<Uint8Array | undefined> {
    const main = this.#main;
    // The common case (connected, tagged, not aborted) without an async function's own promise and ticks.
    if (main?.tagged === true && main.open && !this.#closed && options?.signal?.aborted !== true) {
      try {
        return this.#getOn(main, key, options, start);
      } catch (err) {
        return Promise.reject(err);
      }
    }
    return this.#getAsyncSlow(key, options, start);
  }

  async #getAsyncSlow(
    key: string,
    options: CallOptions | undefined,
    start: number,
  ): Promise<Uint8Array | undefined> {
    this.#enter(options);
    if (!this.#hasExtensions || !this.#options.asyncWaits) return undefined;
    const main =
      this.#main?.open && options?.signal?.aborted !== true ? this.#main : await this.#reconnect(options);
    if (!main.tagged) return undefined;
    return this.#getOn(main, key, options, start);
  }

  #getOn(
    main: ClientConnection,
    key: string,
    options: CallOptions | undefined,
    start: number,
  ): Promise<Uint8Array | undefined> {
    const timeoutMs = checkTimeoutMs(options?.timeoutMs ?? this.#timeoutMs);
    return main.getAsync(key, {
      deadlineAt: start + timeoutMs,
      onTimeout: () => new RendezvousTimeoutError(waitTimeoutMessage("get", [key])(timeoutMs)),
      signal: options?.signal,
    });
  }

  /** The main connection, connecting first when needed within `budgetMs`. */
  async connect(budgetMs: number): Promise<ClientConnection> {
    const main = this.#main;
    return main?.open ? main : this.#reconnect({ timeoutMs: budgetMs });
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#lifetime.abort();
    const main = this.#main;
    this.#main = undefined;
    await Promise.all([main?.close(storeClosedError()), this.#waits.close(storeClosedError())]);
  }

  /** Reconnects the main connection; concurrent callers share one attempt, each bounded by its own budget. */
  async #reconnect(options: CallOptions | undefined): Promise<ClientConnection> {
    this.#enter(options);
    const budgetMs = Math.min(this.#options.connectTimeoutMs, options?.timeoutMs ?? this.#timeoutMs);
    const deadlineAt = Date.now() + budgetMs;
    this.#connectDeadline = Math.max(this.#connectDeadline, deadlineAt);
    this.#connecting ??= this.#openMain().finally(() => {
      this.#connecting = undefined;
      this.#connectDeadline = 0;
    });
    return race(this.#connecting, deadlineAt, options?.signal, () => this.#connectError(budgetMs));
  }

  async #openMain(): Promise<ClientConnection> {
    let conn: ClientConnection | undefined;
    const opened = await connectWithRetry(this.#target, () => this.#connectDeadline, {
      probe: this.#target.dialect === "v2",
      signal: this.#lifetime.signal,
      onAttemptFailed: (err) => this.#attemptFailed(err),
      onClose: (err) => {
        if (conn !== undefined) this.#mainClosed(conn, err);
      },
    }).catch((err: unknown) => this.#connectFailed(err));
    conn = opened.conn;
    if (this.#closed) {
      void conn.close();
      throw storeClosedError();
    }
    this.#main = conn;
    this.#lastConnectError = undefined;
    this.#attempted({ kind: "connected" });
    this.#hasExtensions = opened.hasExtensions;
    // Not awaited: the server handles TAGGED_REPLIES before anything sent after it.
    if (opened.hasExtensions && this.#options.asyncWaits) conn.enableTagged().catch(() => {});
    conn.startWatchdog(() => this.#timeoutMs);
    this.#options.logger.debug("TCPStore connected", { peer: this.peer, extensions: opened.hasExtensions });
    return conn;
  }

  #mainClosed(conn: ClientConnection, err: RendezvousError | undefined): void {
    if (this.#main !== conn) return;
    this.#main = undefined;
    if (err === undefined || this.#closed) return;
    this.#options.logger.warn("TCPStore connection lost", { peer: this.peer, error: err.message });
    this.#onDisconnect(err);
  }

  async #openWaitConnection(
    deadlineAt: number,
    onClose: (c: ClientConnection | undefined) => void,
  ): Promise<ClientConnection> {
    let conn: ClientConnection | undefined;
    const opened = await connectWithRetry(this.#target, () => deadlineAt, {
      probe: false,
      signal: this.#lifetime.signal,
      onAttemptFailed: (err) => this.#attemptFailed(err),
      onClose: () => onClose(conn),
    }).catch((err: unknown) => this.#connectFailed(err));
    conn = opened.conn;
    this.#attempted({ kind: "connected" });
    return conn;
  }

  #connectFailed(err: unknown): never {
    this.#lastConnectError = err;
    if (this.#closed) throw storeClosedError();
    throw this.#gone ?? err;
  }

  #attemptFailed(err: unknown): void {
    this.#lastConnectError = err;
    this.#attempted(classifyConnectFailure(err));
  }

  /** Feeds an attempt's outcome to the give-up rule; gives up when the rule says so. */
  #attempted(outcome: ConnectOutcome): void {
    const now = Date.now();
    const streak = nextStreak(this.#streak, outcome, now);
    this.#streak = streak;
    const rule = this.#giveUp;
    if (rule === undefined || streak === undefined || !givesUp(rule, streak, now)) return;
    if (this.#closed || this.#gone !== undefined) return;
    const gone = goneError(rule, this.peer, streak);
    this.#gone = gone;
    this.#options.logger.error("TCPStore server gone; failing every call", {
      peer: this.peer,
      error: gone.message,
    });
    // Stops every connect in progress (they then fail with `gone`, see #connectFailed) and fails the
    // calls pending on the connections still open.
    this.#lifetime.abort(gone);
    const main = this.#main;
    this.#main = undefined;
    main?.destroy(gone);
    void this.#waits.close(gone);
  }

  #connectError(budgetMs: number): RendezvousError {
    const last = this.#lastConnectError;
    const reason = last instanceof Error ? `: ${last.message}` : "";
    const message = `could not connect to the TCPStore server at ${this.peer} within ${budgetMs}ms${reason}`;
    return new RendezvousConnectionError(message, { cause: last });
  }

  #enter(options: CallOptions | undefined): void {
    if (this.#closed) throw storeClosedError();
    if (this.#gone !== undefined) throw this.#gone;
    throwIfAborted(options?.signal);
  }
}
