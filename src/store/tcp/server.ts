/**
 * A TCP store server wire-compatible with PyTorch's c10d `TCPStore`: it serves PyTorch 1.x/2.0 clients (v1)
 * and 2.1+ clients (v2) on one port, detecting the dialect per connection, plus rdzv's own extensions.
 * Behaviour and every deliberate difference from PyTorch's servers: docs/tcpstore-compat.md.
 */

import { EventEmitter } from "node:events";
import { createServer, type Server, type Socket } from "node:net";
import { InvalidArgumentError, RendezvousConnectionError } from "../../errors.js";
import { type Logger, silentLogger } from "../../log.js";
import { KvEngine } from "../kv-engine.js";
import { DEFAULT_PROTOCOL_LIMITS, type ProtocolLimits } from "./protocol.js";
import { ServerConnection } from "./server-connection.js";
import { ServerState } from "./server-state.js";

/** Limits of a `TCPStoreServer`. */
export interface ServerLimits extends ProtocolLimits {
  /** Most open connections; more are accepted and closed at once, with a warning (default 16384). */
  maxConnections: number;
  /** Most keys one connection may wait on at once; also bounds its watches and on-disconnect keys (default 128 Ki). */
  maxWaitersPerConnection: number;
}

/** Default server limits: `DEFAULT_PROTOCOL_LIMITS` plus 16384 connections and 128 Ki waited keys. */
export const DEFAULT_SERVER_LIMITS: Readonly<ServerLimits> = {
  ...DEFAULT_PROTOCOL_LIMITS,
  maxConnections: 16384,
  maxWaitersPerConnection: 128 * 1024,
};

/** Default port, as torchrun's c10d rendezvous endpoint. */
export const DEFAULT_SERVER_PORT = 29400;

/** Options of `createTCPStoreServer`. */
export interface TCPStoreServerOptions {
  /** Address to bind (default "127.0.0.1"). "::" binds every interface, IPv4 included (dual-stack). */
  host?: string;
  /** Port to bind (default 29400); 0 picks any free port, see `TCPStoreServer.port`. */
  port?: number;
  /** Limits; unset fields take `DEFAULT_SERVER_LIMITS`. */
  limits?: Partial<ServerLimits>;
  /** Where to log (default: nowhere). */
  logger?: Logger;
}

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
  readonly #server: Server;
  readonly #state: ServerState;
  readonly #logger: Logger;
  readonly #connections = new Set<ServerConnection>();
  #connectionsTotal = 0;
  #nextId = 1;
  #closing: Promise<void> | undefined;
  #allClosed: (() => void) | undefined;

  /** @internal Use `createTCPStoreServer`. */
  constructor(server: Server, host: string, limits: Readonly<ServerLimits>, logger: Logger) {
    super();
    const address = server.address();
    if (address === null || typeof address === "string") {
      throw new InvalidArgumentError("TCPStoreServer needs a listening TCP server");
    }
    this.#server = server;
    this.host = host;
    this.port = address.port;
    this.limits = limits;
    this.#logger = logger;
    this.engine = new KvEngine();
    this.#state = new ServerState(this.engine, limits, logger, {
      protocolError: (id, remote, reason) => this.emit("protocolError", { id, remote, reason }),
    });
    server.on("connection", (socket) => this.accept(socket));
    server.on("error", (err) => logger.error("TCPStore server: listener error", { error: String(err) }));
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
    };
  }

  /**
   * Stops listening and destroys every connection (their on-disconnect sets still run). The data stays in
   * `engine`. Idempotent; resolves once every socket is closed.
   */
  close(): Promise<void> {
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

  private accept(socket: Socket): void {
    const remote = formatRemote(socket);
    if (this.#closing !== undefined || this.#connections.size >= this.limits.maxConnections) {
      this.#logger.warn("TCPStore server: rejecting a connection", {
        remote,
        reason: this.#closing === undefined ? "maxConnections reached" : "server closing",
        maxConnections: this.limits.maxConnections,
      });
      socket.on("error", () => {});
      socket.destroy();
      return;
    }
    const id = this.#nextId++;
    const conn = new ServerConnection(id, remote, socket, this.#state, this.limits, (c, reason) =>
      this.removed(c, reason),
    );
    this.#connections.add(conn);
    this.#connectionsTotal++;
    this.#logger.debug("TCPStore server: connection", { id, remote });
    this.emit("connection", { id, remote });
  }

  private removed(conn: ServerConnection, reason: string): void {
    if (!this.#connections.delete(conn)) return;
    this.#logger.debug("TCPStore server: disconnect", { id: conn.id, remote: conn.remote, reason });
    this.emit("disconnect", { id: conn.id, reason });
    if (this.#connections.size === 0) this.#allClosed?.();
  }
}

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
  let limits: Readonly<ServerLimits>;
  try {
    host = checkHost(options.host ?? "127.0.0.1");
    port = checkPort(options.port ?? DEFAULT_SERVER_PORT);
    limits = checkLimits({ ...DEFAULT_SERVER_LIMITS, ...options.limits });
  } catch (err) {
    return Promise.reject(err);
  }
  const logger = options.logger ?? silentLogger;
  const server = createServer({ noDelay: true });
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
      const store = new TCPStoreServer(server, host, limits, logger);
      logger.info("TCPStore server listening", { host, port: store.port });
      resolve(store);
    });
  });
}

function checkHost(host: string): string {
  if (typeof host !== "string" || host.length === 0) {
    throw new InvalidArgumentError(`host must be a non-empty string, got ${JSON.stringify(host)}`);
  }
  return host;
}

function checkPort(port: number): number {
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new InvalidArgumentError(`port must be an integer in 0..65535, got ${String(port)}`);
  }
  return port;
}

function checkLimits(limits: ServerLimits): ServerLimits {
  for (const [name, value] of Object.entries(limits)) {
    if (!Number.isSafeInteger(value) || value < 1) {
      throw new InvalidArgumentError(`limits.${name} must be a positive integer, got ${String(value)}`);
    }
  }
  return limits;
}
