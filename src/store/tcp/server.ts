/**
 * A TCP store server wire-compatible with PyTorch's c10d `TCPStore`: it serves PyTorch 1.x/2.0 clients (v1)
 * and 2.1+ clients (v2) on one port, detecting the dialect per connection, plus rdzv's own extensions.
 * Behaviour and every deliberate difference from PyTorch's servers: docs/tcpstore-compat.md.
 */

import { EventEmitter } from "node:events";
import { createServer, type Server, type Socket } from "node:net";
import { InvalidArgumentError, RendezvousConnectionError } from "../../errors.js";
import { type Logger, LogRateLimit, silentLogger } from "../../log.js";
import type { KvEngine } from "../kv-engine.js";
import { AddressCap } from "./address-cap.js";
import { addressKey } from "./address-key.js";
import type { AuthThrottle } from "./auth-throttle.js";
import { type OpenFileRoom, warnAtConnections } from "./open-files.js";
import { ServerConnection } from "./server-connection.js";
import {
  resolveServerConfig,
  type ServerConfig,
  type ServerLimits,
  type ServerTimeouts,
  type TCPStoreServerOptions,
  tlsServer,
} from "./server-options.js";
import { directReads } from "./server-reads.js";
import { ServerState } from "./server-state.js";

export type { AuthThrottle, AuthThrottleOptions } from "./auth-throttle.js";
export type { OpenFileRoom } from "./open-files.js";
export {
  DEFAULT_SERVER_LIMITS,
  DEFAULT_SERVER_PORT,
  DEFAULT_SERVER_TIMEOUTS,
  type ServerLimits,
  type ServerSecurityOptions,
  type ServerTimeouts,
  type TCPStoreServerOptions,
} from "./server-options.js";

/** A snapshot of a server's counters. */
export interface ServerStats {
  /** Open connections. */
  connections: number;
  /** Connections accepted since the start (rejected ones excluded). */
  connectionsTotal: number;
  /** Pending WAIT and BARRIER calls (and any other engine waiters). */
  waiters: number;
  /** Keys in the store (queues excluded), as GETNUMKEYS. */
  keys: number;
  /** Requests handled since the start, by command name (`set`, `get`, `wait`, ...). */
  opsByType: Record<string, number>;
  /** Connections closed for bad input (malformed bytes, limits, ADD on a non-number) since the start. */
  protocolErrors: number;
  /** Open connections by detected dialect (connections yet to send a byte are in neither). */
  dialects: { v1: number; v2: number };
  /** AUTH requests with a wrong token since the start (each closed its connection). */
  authFailures: number;
  /**
   * AUTH requests refused without checking their token since the start, because too many wrong tokens
   * had come from their address (`authThrottle`; each closed its connection).
   */
  authThrottled: number;
  /** Connections closed at once since the start because their address had `maxConnectionsPerAddress` open. */
  perAddressRejected: number;
  /** Connections closed at once since the start because `maxConnections` were open (or the server was closing). */
  rejected: number;
  /** Connections closed by a timeout (incomplete request, unread replies, idle) since the start. */
  reaped: number;
  /** Writes refused since the start because the store was full (`limits.maxStoreBytes`; each closed its connection). */
  storeFull: number;
  /** Bytes of the store's keys and values as `limits.maxStoreBytes` counts them; undefined without that limit. */
  storeBytes: number | undefined;
}

/** Payload of the `connection` event. */
export interface ConnectionEvent {
  id: number;
  /** Peer address, `host:port` (`[v6addr]:port` for IPv6). */
  remote: string;
}

/** Payload of the `disconnect` event. */
export interface DisconnectEvent {
  id: number;
  reason: string;
}

/** Payload of the `protocolError` event (the connection is closed right after). */
export interface ProtocolErrorEvent {
  id: number;
  remote: string;
  reason: string;
}

/** Events of `TCPStoreServer`. */
export interface TCPStoreServerEvents {
  connection: [ConnectionEvent];
  disconnect: [DisconnectEvent];
  protocolError: [ProtocolErrorEvent];
}

/**
 * A running TCP store server. Create it with `createTCPStoreServer`. Its data lives in `engine`, which
 * in-process code may use directly (same atomicity: everything runs on the event loop).
 *
 * Emits `connection`, `disconnect` and `protocolError` (see `TCPStoreServerEvents`).
 */
export class TCPStoreServer extends EventEmitter<TCPStoreServerEvents> implements AsyncDisposable {
  /** The bound address. */
  readonly host: string;
  /** The bound port (the actual one when 0 was asked). */
  readonly port: number;
  readonly engine: KvEngine;
  readonly limits: Readonly<ServerLimits>;
  readonly timeouts: Readonly<ServerTimeouts>;
  /** Whether connections must authenticate (an `authToken` was given). */
  readonly requiresAuth: boolean;
  /** Whether the server speaks TLS. */
  readonly tls: boolean;
  /**
   * The per-address wrong-token budgets of AUTH (`authThrottle` option). A dashboard that takes the same
   * token shares it (src/server/dashboard-app.ts), so the two ports give one address one budget.
   */
  readonly authThrottle: AuthThrottle;
  readonly #server: Server;
  readonly #sweeper: NodeJS.Timeout | undefined;
  readonly #state: ServerState;
  readonly #logger: Logger;
  readonly #connections = new Set<ServerConnection>();
  readonly #perAddress: AddressCap;
  #perAddressRejected = 0;
  #rejected = 0;
  /** Refusals at `maxConnections`, logged at most once per `CAP_LOG_INTERVAL_MS`. */
  readonly #rejectLog = new LogRateLimit(CAP_LOG_INTERVAL_MS);
  /** The open-file limit watched (`openFiles` option), and the connections at which it is near. */
  readonly #openFiles: OpenFileRoom | undefined;
  readonly #openFilesWarnAt: number;
  readonly #openFilesLog = new LogRateLimit(CAP_LOG_INTERVAL_MS);
  #connectionsTotal = 0;
  #nextId = 1;
  #closing: Promise<void> | undefined;
  #allClosed: (() => void) | undefined;

  /** @internal Use `createTCPStoreServer`. */
  constructor(server: Server, host: string, config: ServerConfig, logger: Logger) {
    super();
    const { limits, timeouts, security, tls } = config;
    const address = server.address();
    if (address === null || typeof address === "string") {
      throw new InvalidArgumentError("TCPStoreServer needs a listening TCP server");
    }
    this.#server = server;
    this.host = host;
    this.port = address.port;
    this.limits = limits;
    this.timeouts = timeouts;
    this.requiresAuth = security.tokenDigest !== undefined;
    this.tls = tls;
    this.authThrottle = security.throttle;
    this.#logger = logger;
    this.engine = config.engine;
    this.#openFiles = config.openFiles;
    if (limits.maxStoreBytes > 0) this.engine.limitBytes(limits.maxStoreBytes);
    this.#openFilesWarnAt =
      config.openFiles === undefined ? Number.POSITIVE_INFINITY : warnAtConnections(config.openFiles);
    const hooks = {
      protocolError: (id: number, remote: string, reason: string) =>
        this.emit("protocolError", { id, remote, reason }),
    };
    this.#state = new ServerState(this.engine, limits, logger, hooks, security);
    this.#perAddress = new AddressCap(
      limits.maxConnectionsPerAddress,
      config.capLoopbackConnections,
      CAP_LOG_INTERVAL_MS,
    );
    if (tls) {
      server.on("secureConnection", (socket: Socket) => this.accept(socket));
      server.on("drop", (data) => {
        this.#reject(`${data?.remoteAddress}:${data?.remotePort}`, "maxConnections reached");
      });
      server.on("tlsClientError", (err: Error, socket: Socket) => {
        logger.warn("TCPStore server: TLS handshake failed", {
          remote: formatRemote(socket),
          error: err.message,
        });
        socket.destroy(); // Node leaves a failed (or timed-out) handshake's socket open
      });
    } else {
      server.on("connection", (socket) => this.accept(socket));
    }
    server.on("error", (err) => logger.error("TCPStore server: listener error", { error: String(err) }));
    const { incompleteRequestMs, idleMs } = timeouts;
    const shortest = Math.min(...[incompleteRequestMs, idleMs].filter((ms) => ms > 0));
    if (Number.isFinite(shortest)) {
      // One timer for all connections; a connection is reaped at most a quarter period late.
      this.#sweeper = setInterval(() => this.sweep(), Math.min(Math.max(shortest / 4, 10), 1000));
      this.#sweeper.unref();
    }
  }

  /** A snapshot of the counters. */
  stats(): ServerStats {
    return {
      connections: this.#connections.size,
      connectionsTotal: this.#connectionsTotal,
      waiters: this.engine.waiterCount + this.#state.barrierWaiters,
      keys: this.engine.size,
      opsByType: { ...this.#state.ops },
      protocolErrors: this.#state.protocolErrors,
      dialects: { ...this.#state.dialects },
      authFailures: this.#state.authFailures,
      authThrottled: this.#state.authThrottled,
      perAddressRejected: this.#perAddressRejected,
      storeFull: this.#state.storeFull,
      storeBytes: this.engine.bytes,
      rejected: this.#rejected,
      reaped: this.#state.reaped,
    };
  }

  /**
   * Stops listening and destroys every connection (their on-disconnect sets still run). The data stays in
   * `engine`. Idempotent; resolves once every socket is closed.
   */
  close(): Promise<void> {
    clearInterval(this.#sweeper);
    this.#closing ??= new Promise<void>((resolve) => {
      const listenerClosed = new Promise<void>((done) => this.#server.close(() => done()));
      const connectionsClosed = new Promise<void>((done) => {
        if (this.#connections.size === 0) done();
        else this.#allClosed = done;
      });
      for (const conn of this.#connections) conn.destroy("server closed");
      void Promise.all([listenerClosed, connectionsClosed]).then(() => {
        this.#state.dispose();
        this.#logger.info("TCPStore server closed", { host: this.host, port: this.port });
        resolve();
      });
    });
    return this.#closing;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  /**
   * Counts a connection refused for `reason` and logs it, at most one line a minute: a flood at the limit
   * (a reconnect loop, an attack) would otherwise write a line per connection. The line says how many
   * were refused since the last one without a line of their own.
   */
  #reject(remote: string, reason: string): void {
    this.#rejected++;
    const { log, unlogged } = this.#rejectLog.take(performance.now());
    if (!log) return;
    this.#logger.warn("TCPStore server: rejecting a connection", {
      remote,
      reason,
      maxConnections: this.limits.maxConnections,
      unlogged,
    });
  }

  /**
   * Warns, at most once a minute, that the connections come close to the open-file limit: past it the
   * process cannot accept, and the connections it could not are closed unseen (open-files.ts).
   */
  #nearOpenFileLimit(): void {
    const { log, unlogged } = this.#openFilesLog.take(performance.now());
    if (!log || this.#openFiles === undefined) return;
    this.#logger.warn(
      "TCPStore server: connections are close to the process's open-file limit: past it, new connections " +
        "are closed before the server sees them, with no line in this log. Raise the limit above " +
        "maxConnections before starting the server (ulimit -n; systemd: LimitNOFILE=)",
      {
        connections: this.#connections.size,
        openFileLimit: this.#openFiles.limit,
        inUseAtStart: this.#openFiles.inUse,
        maxConnections: this.limits.maxConnections,
        // Connections past the warning point not logged in the minute before this line.
        unlogged,
      },
    );
  }

  private accept(accepted: Socket): void {
    let socket = accepted;
    const remote = formatRemote(socket);
    if (this.#closing !== undefined || this.#connections.size >= this.limits.maxConnections) {
      this.#reject(remote, this.#closing === undefined ? "maxConnections reached" : "server closing");
      socket.on("error", () => {});
      socket.destroy();
      return;
    }
    const address = accepted.remoteAddress;
    const admission = this.#perAddress.admit(address);
    if (!admission.admitted) {
      this.#perAddressRejected++;
      if (admission.log) {
        this.#logger.warn("TCPStore server: rejecting a connection", {
          remote,
          reason: "maxConnectionsPerAddress reached",
          address: admission.key,
          maxConnectionsPerAddress: this.limits.maxConnectionsPerAddress,
          // Refusals of this address not logged in the minute before this one.
          unlogged: admission.unlogged,
        });
      }
      socket.on("error", () => {});
      socket.destroy();
      return;
    }
    const id = this.#nextId++;
    const { keepAliveMs } = this.timeouts;
    let conn: ServerConnection | undefined;
    if (!this.tls) {
      // Plain TCP listens with pauseOnConnect: read directly when this Node allows it, else as a stream.
      socket = directReads(accepted, (chunk) => conn?.received(chunk)) ?? accepted;
      if (socket === accepted) socket.resume();
    }
    if (keepAliveMs > 0) socket.setKeepAlive(true, keepAliveMs);
    conn = new ServerConnection(
      id,
      remote,
      address,
      socket,
      this.#state,
      this.limits,
      (c, reason) => this.removed(c, reason),
      // Plain TCP writes straight to the socket's handle where Node allows it; TLS encrypts in its stream.
      !this.tls,
    );
    this.#connections.add(conn);
    this.#connectionsTotal++;
    if (this.#connections.size >= this.#openFilesWarnAt) this.#nearOpenFileLimit();
    this.#logger.debug("TCPStore server: connection", { id, remote });
    this.emit("connection", { id, remote });
  }

  private sweep(): void {
    const now = Date.now();
    const { incompleteRequestMs, idleMs } = this.timeouts;
    for (const conn of this.#connections) {
      const reason = conn.reapReason(now, incompleteRequestMs, idleMs);
      if (reason === undefined) continue;
      this.#state.reaped++;
      this.#logger.warn("TCPStore server: closing a stalled connection", {
        id: conn.id,
        remote: conn.remote,
        reason,
      });
      conn.destroy(`reaped: ${reason}`);
    }
  }

  private removed(conn: ServerConnection, reason: string): void {
    if (!this.#connections.delete(conn)) return;
    this.#perAddress.release(addressKey(conn.address));
    this.#logger.debug("TCPStore server: disconnect", { id: conn.id, remote: conn.remote, reason });
    this.emit("disconnect", { id: conn.id, reason });
    if (this.#connections.size === 0) this.#allClosed?.();
  }
}

/** A refused address's refusals are logged at most this often. */
const CAP_LOG_INTERVAL_MS = 60_000;

function formatRemote(socket: Socket): string {
  const address = socket.remoteAddress ?? "unknown";
  return address.includes(":") ? `[${address}]:${socket.remotePort}` : `${address}:${socket.remotePort}`;
}

/**
 * Starts a TCP store server and resolves once it listens. Binds `127.0.0.1:29400` unless told otherwise
 * (never every interface by default). Throws `InvalidArgumentError` for bad options and
 * `RendezvousConnectionError` (code `RDZV_CONNECTION`, naming host:port) when it cannot listen, e.g. when the
 * port is in use.
 */
export function createTCPStoreServer(options: TCPStoreServerOptions = {}): Promise<TCPStoreServer> {
  let host: string;
  let port: number;
  let config: ServerConfig;
  try {
    ({ host, port, config } = resolveServerConfig(options));
  } catch (err) {
    return Promise.reject(err);
  }
  const { limits } = config;
  const logger = options.logger ?? silentLogger;
  let server: Server;
  try {
    server =
      options.tls === undefined
        ? createServer({ noDelay: true, pauseOnConnect: true })
        : tlsServer(options.tls, config);
  } catch (err) {
    return Promise.reject(err);
  }
  return new Promise<TCPStoreServer>((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException): void => {
      const where = host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
      reject(
        new RendezvousConnectionError(
          `TCPStore server cannot listen on ${where}: ${err.code ?? err.message}`,
          { cause: err },
        ),
      );
    };
    server.once("error", onError);
    // The backlog matters during a rendezvous stampede; the kernel caps it at somaxconn.
    server.listen({ host, port, backlog: Math.min(limits.maxConnections, 65535) }, () => {
      server.off("error", onError);
      const store = new TCPStoreServer(server, host, config, logger);
      logger.info("TCPStore server listening", {
        host,
        port: store.port,
        tls: store.tls,
        auth: store.requiresAuth,
      });
      resolve(store);
    });
  });
}
