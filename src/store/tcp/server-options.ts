/**
 * Options of a TCP store server: limits, timeouts, authentication and TLS, their defaults, and their
 * validation into the configuration a `TCPStoreServer` runs with.
 */

import type { Server } from "node:net";
import { createServer as createTlsServer, type TlsOptions } from "node:tls";
import { InvalidArgumentError } from "../../errors.js";
import type { Logger } from "../../log.js";
import { KvEngine } from "../kv-engine.js";
import { type AuthThrottleOptions, createAuthThrottle } from "./auth-throttle.js";
import { type OpenFileRoom, readOpenFileRoom } from "./open-files.js";
import { DEFAULT_PROTOCOL_LIMITS, type ProtocolLimits } from "./protocol.js";
import { type ServerSecurity, tokenDigest } from "./server-state.js";

/** Limits of a `TCPStoreServer`. */
export interface ServerLimits extends ProtocolLimits {
  /** Most open connections; more are accepted and closed at once, with a warning (default 16384). */
  maxConnections: number;
  /**
   * Most open connections from one address (an IPv4 address, an IPv6 /64); more are accepted and closed
   * at once, with a warning at most once a minute per address (default 1024). Loopback clients are not
   * counted unless `capLoopbackConnections` is set: a single-host job or benchmark opens thousands from
   * 127.0.0.1. Many nodes behind one NAT share an address: raise it for them.
   */
  maxConnectionsPerAddress: number;
  /** Most keys one connection may wait on at once; also bounds its watches and on-disconnect keys (default 128 Ki). */
  maxWaitersPerConnection: number;
  /**
   * Most bytes the store's keys and values (queue items included) may take together; 0 (the default):
   * no limit, as Redis's `maxmemory`. A write that would pass it is refused and its connection closed,
   * with a warning at most once a minute; writes that shrink the data, and deletes, still pass, so data
   * already past it (a lowered limit, a restart) stays readable. On-disconnect markers are not refused.
   * Sets the limit on the server's engine (`KvEngine.limitBytes`).
   */
  maxStoreBytes: number;
}

/**
 * Default server limits: `DEFAULT_PROTOCOL_LIMITS` plus 16384 connections, 1024 per address and 128 Ki
 * waited keys.
 */
export const DEFAULT_SERVER_LIMITS: Readonly<ServerLimits> = {
  ...DEFAULT_PROTOCOL_LIMITS,
  maxConnections: 16384,
  maxConnectionsPerAddress: 1024,
  maxWaitersPerConnection: 128 * 1024,
  maxStoreBytes: 0,
};

/** Default port, as torchrun's c10d rendezvous endpoint. */
export const DEFAULT_SERVER_PORT = 29400;

/** Timeouts of a `TCPStoreServer`, in ms; 0 disables one. */
export interface ServerTimeouts {
  /**
   * A connection that holds an incomplete request this long (a slow-loris trickling a frame), or does not
   * read its replies this long, is closed; also bounds a TLS handshake and, with an `authToken`, the time
   * a connection has to authenticate. Default 30 000.
   */
  incompleteRequestMs: number;
  /**
   * A connection that sends nothing this long is closed, unless it is parked in a WAIT or BARRIER.
   * Default 0 (off): PyTorch 1.13 keeps a connection that never sends a byte, and an idle PyTorch client
   * is legitimate. When set, keep it above the longest pause of every client.
   */
  idleMs: number;
  /**
   * TCP keep-alive probes start after this much silence, so connections whose peer machine vanished
   * (half-open) are found and closed by the kernel. Default 60 000.
   */
  keepAliveMs: number;
}

/** Default timeouts: 30 s for an incomplete request, no idle timeout, TCP keep-alive after 60 s. */
export const DEFAULT_SERVER_TIMEOUTS: Readonly<ServerTimeouts> = {
  incompleteRequestMs: 30_000,
  idleMs: 0,
  keepAliveMs: 60_000,
};

/** TLS and authentication of a `TCPStoreServer`. PyTorch clients can use neither: see docs/security.md. */
export interface ServerSecurityOptions {
  /**
   * A shared secret every connection must present (rdzv's AUTH extension, v2) before anything but the
   * handshake. PyTorch clients cannot, so a server with a token serves rdzv's clients only.
   */
  authToken?: string | Uint8Array;
  /**
   * The brute-force throttle of AUTH with a token (default: 10 wrong tokens a minute per address, then
   * that address's AUTH is refused for a minute without checking the token; see `AuthThrottleOptions`
   * and docs/security.md). Loopback clients are throttled too. `{ maxFailures: 0 }` turns it off.
   */
  authThrottle?: AuthThrottleOptions;
  /** Serve TLS only, with this certificate and key (PEM); PyTorch clients speak plain TCP only. */
  tls?: Pick<TlsOptions, "cert" | "key" | "ca" | "passphrase" | "minVersion">;
}

/** Options of `createTCPStoreServer`. */
export interface TCPStoreServerOptions extends ServerSecurityOptions {
  /** Address to bind (default "127.0.0.1"). "::" binds every interface, IPv4 included (dual-stack). */
  host?: string;
  /** Port to bind (default 29400); 0 picks any free port, see `TCPStoreServer.port`. */
  port?: number;
  /** Limits; unset fields take `DEFAULT_SERVER_LIMITS`. */
  limits?: Partial<ServerLimits>;
  /** Timeouts; unset fields take `DEFAULT_SERVER_TIMEOUTS`. */
  timeouts?: Partial<ServerTimeouts>;
  /** Where to log (default: nowhere). */
  logger?: Logger;
  /** The engine to serve (default: a new, empty one), e.g. one a journal replayed into. */
  engine?: KvEngine;
  /** Count loopback clients against `limits.maxConnectionsPerAddress` too (default false). */
  capLoopbackConnections?: boolean;
  /**
   * The open-file limit the connections are watched against (open-files.ts): a warning at most once a
   * minute once they come close, as connections past it are dropped without a word. Default: this
   * process's, read from /proc at the start (not watched where /proc does not say); `false`: not watched.
   */
  openFiles?: OpenFileRoom | false;
}

/** Validated configuration of a server. */
export interface ServerConfig {
  readonly limits: Readonly<ServerLimits>;
  readonly timeouts: Readonly<ServerTimeouts>;
  readonly security: ServerSecurity;
  readonly tls: boolean;
  readonly engine: KvEngine;
  readonly capLoopbackConnections: boolean;
  readonly openFiles: OpenFileRoom | undefined;
}

/**
 * Validates `options` (messages name the bad value) and applies the defaults. Throws `InvalidArgumentError`.
 */
export function resolveServerConfig(options: TCPStoreServerOptions): {
  host: string;
  port: number;
  config: ServerConfig;
} {
  const host = checkHost(options.host ?? "127.0.0.1");
  const port = checkPort(options.port ?? DEFAULT_SERVER_PORT);
  const limits = checkLimits({ ...DEFAULT_SERVER_LIMITS, ...options.limits });
  const config: ServerConfig = {
    limits,
    timeouts: checkTimeouts({ ...DEFAULT_SERVER_TIMEOUTS, ...options.timeouts }),
    security: {
      tokenDigest: checkToken(options.authToken, limits.maxKeyBytes),
      throttle: createAuthThrottle(options.authThrottle),
    },
    tls: options.tls !== undefined,
    engine: options.engine ?? new KvEngine(),
    capLoopbackConnections: options.capLoopbackConnections === true,
    openFiles: options.openFiles === false ? undefined : (options.openFiles ?? readOpenFileRoom()),
  };
  return { host, port, config };
}

/** A TLS listener for `config`. Throws `InvalidArgumentError` for unusable TLS options. */
export function tlsServer(options: NonNullable<ServerSecurityOptions["tls"]>, config: ServerConfig): Server {
  if (options.cert === undefined || options.key === undefined) {
    throw new InvalidArgumentError("tls needs both cert and key");
  }
  const { incompleteRequestMs } = config.timeouts;
  let server: Server;
  try {
    server = createTlsServer({
      ...options,
      ...(incompleteRequestMs > 0 ? { handshakeTimeout: incompleteRequestMs } : {}),
    });
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    throw new InvalidArgumentError(`bad TLS options: ${reason}`, { cause: err });
  }
  // Counted before the handshake, so a flood of handshakes cannot pass the limit; rejected ones emit "drop".
  server.maxConnections = config.limits.maxConnections;
  return server;
}

function checkToken(token: string | Uint8Array | undefined, maxBytes: number): Buffer | undefined {
  if (token === undefined) return undefined;
  const bytes = typeof token === "string" ? Buffer.from(token, "utf8") : token;
  if (!(bytes instanceof Uint8Array) || bytes.length === 0) {
    throw new InvalidArgumentError("authToken must be a non-empty string or Uint8Array");
  }
  if (bytes.length > maxBytes) {
    throw new InvalidArgumentError(`authToken must be at most maxKeyBytes (${maxBytes}) bytes`);
  }
  return tokenDigest(bytes);
}

function checkTimeouts(timeouts: ServerTimeouts): ServerTimeouts {
  for (const [name, value] of Object.entries(timeouts)) {
    if (!Number.isSafeInteger(value) || value < 0) {
      throw new InvalidArgumentError(
        `timeouts.${name} must be a non-negative integer (ms), got ${String(value)}`,
      );
    }
  }
  return timeouts;
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
    // maxStoreBytes 0: no limit.
    const least = name === "maxStoreBytes" ? 0 : 1;
    if (!Number.isSafeInteger(value) || value < least) {
      const what = least === 0 ? "a non-negative" : "a positive";
      throw new InvalidArgumentError(`limits.${name} must be ${what} integer, got ${String(value)}`);
    }
  }
  return limits;
}
