/**
 * Puts a fetch-style handler (dashboard-app.ts) on a `node:http` port: `rdzv serve --http-port`. Binds
 * loopback unless told otherwise: without a token, anyone who can reach the port reads every run's nodes
 * and addresses. Guards the edge: the `Host` header (DNS rebinding), connection count and slow requests
 * (see docs/security.md, "The dashboard").
 */

import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { isIP } from "node:net";
import { InvalidArgumentError, RendezvousConnectionError } from "../errors.js";
import { isLoopbackHost } from "../rendezvous/endpoint.js";
import { formatHostPort } from "../store/tcp/address.js";

/** A running HTTP server. */
export interface HttpServer extends AsyncDisposable {
  readonly host: string;
  /** The bound port (the actual one when 0 was asked). */
  readonly port: number;
  /** `http://host:port/`. */
  readonly url: string;
  /** Stops listening and closes every connection (event streams included). Idempotent. */
  close(): Promise<void>;
}

/** Options of `startHttpServer`. */
export interface HttpServerOptions {
  /** Address to bind (default "127.0.0.1"). */
  host?: string;
  /** Port (default 0: any free port). */
  port?: number;
  /**
   * Host names (the request's `Host` header, without port) served besides IP literals and `localhost`
   * (see `hostHeaderAllowed`). Given, they are enforced on any bind address; otherwise only on loopback.
   */
  allowedHosts?: readonly string[];
  /**
   * Most open connections (default 256; more are closed at once). The dashboard shares its process and
   * its file descriptors with the store: connections left open must not starve the store's accept.
   */
  maxConnections?: number;
  /**
   * A client must send its request headers within this many ms (default 10 000; slow-loris), and the
   * whole request within 30 s or this, whichever is longer. Answers (event streams) are not bounded.
   */
  headersTimeoutMs?: number;
  /** Answers each request; `client.address` is the peer's IP (what per-address throttling counts). */
  fetch(request: Request, client: { address: string | undefined }): Promise<Response>;
}

const DEFAULT_MAX_CONNECTIONS = 256;
const DEFAULT_HEADERS_TIMEOUT_MS = 10_000;
const REQUEST_TIMEOUT_MS = 30_000;

/**
 * Starts serving and resolves once listening. Rejects with `RendezvousConnectionError` naming host:port
 * when it cannot listen, `InvalidArgumentError` for a bad port or limit.
 */
export function startHttpServer(options: HttpServerOptions): Promise<HttpServer> {
  const host = options.host ?? "127.0.0.1";
  const port = options.port ?? 0;
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    return Promise.reject(
      new InvalidArgumentError(`the HTTP port must be an integer in 0..65535, got ${port}`),
    );
  }
  const maxConnections = options.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
  const headersTimeout = options.headersTimeoutMs ?? DEFAULT_HEADERS_TIMEOUT_MS;
  for (const [name, value] of [
    ["maxConnections", maxConnections],
    ["headersTimeoutMs", headersTimeout],
  ] as const) {
    if (!Number.isSafeInteger(value) || value < 1) {
      return Promise.reject(
        new InvalidArgumentError(`${name} must be a positive integer, got ${String(value)}`),
      );
    }
  }
  const allowed = options.allowedHosts?.map((name) => name.toLowerCase());
  const enforce = allowed !== undefined || isLoopbackHost(host);
  const timeouts = {
    headersTimeout,
    requestTimeout: Math.max(REQUEST_TIMEOUT_MS, headersTimeout),
    // How often Node checks both timeouts (default 30 s: a 10 s timeout could take 40).
    connectionsCheckingInterval: Math.min(1000, headersTimeout),
  };
  const server = createServer(timeouts, (req, res) => {
    const name = req.headers.host;
    if (enforce && !hostHeaderAllowed(name, allowed)) {
      refuseHost(res, name ?? "");
      return;
    }
    void serve(options.fetch, req, res, host);
  });
  server.maxConnections = maxConnections;
  return new Promise<HttpServer>((resolve, reject) => {
    server.once("error", (err: NodeJS.ErrnoException) => {
      const where = formatHostPort(host, port);
      reject(
        new RendezvousConnectionError(`dashboard cannot listen on ${where}: ${err.code ?? err.message}`, {
          cause: err,
        }),
      );
    });
    server.listen({ host, port }, () => {
      const address = server.address();
      const bound = typeof address === "object" && address !== null ? address.port : port;
      resolve(handle(server, host, bound));
    });
  });
}

/**
 * Whether a request whose `Host` header is `header` may be served: an IP literal, `localhost` (or a name
 * under `.localhost`), one of `allowed` (lower case), or no header at all (HTTP/1.0). Any other name may
 * be a DNS-rebinding attack: a page of `evil.example`, whose name the attacker re-points at this
 * address, reads the dashboard as its own origin.
 */
export function hostHeaderAllowed(header: string | undefined, allowed: readonly string[] = []): boolean {
  if (header === undefined) return true;
  const name = hostName(header.trim().toLowerCase());
  if (name === undefined) return false;
  if (isIP(name) !== 0) return true;
  const bare = name.endsWith(".") ? name.slice(0, -1) : name;
  return (
    bare === "localhost" || bare.endsWith(".localhost") || allowed.includes(bare) || allowed.includes(name)
  );
}

/** The host of a `Host` header (`name`, `name:port`, `[v6]:port`), or undefined when malformed. */
function hostName(header: string): string | undefined {
  if (header.startsWith("[")) {
    const end = header.indexOf("]");
    const rest = header.slice(end + 1);
    return end > 0 && (rest === "" || /^:\d*$/.test(rest)) ? header.slice(1, end) : undefined;
  }
  const colon = header.indexOf(":");
  const name = colon < 0 ? header : header.slice(0, colon);
  if (colon >= 0 && !/^\d*$/.test(header.slice(colon + 1))) return undefined;
  return name === "" ? undefined : name;
}

function refuseHost(res: ServerResponse, header: string): void {
  const error =
    `the Host header ${JSON.stringify(header.slice(0, 200))} is not an address of this dashboard: it ` +
    "serves IP addresses, localhost and the names given with --http-allowed-host (a guard against " +
    "DNS rebinding)";
  res.writeHead(403, {
    "content-type": "application/json; charset=utf-8",
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
  });
  res.end(JSON.stringify({ error }));
}

function handle(server: Server, host: string, port: number): HttpServer {
  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closing ??= new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
    return closing;
  };
  return {
    host,
    port,
    url: `http://${formatHostPort(host === "0.0.0.0" || host === "::" ? "127.0.0.1" : host, port)}/`,
    close,
    [Symbol.asyncDispose]: close,
  };
}

async function serve(
  fetch: HttpServerOptions["fetch"],
  req: IncomingMessage,
  res: ServerResponse,
  host: string,
): Promise<void> {
  const abort = new AbortController();
  res.on("close", () => abort.abort());
  let response: Response;
  try {
    // The path only: a request target such as "//other-host/x" must not become a host.
    const url = new URL(`http://${formatHostPort(host, 80)}${req.url ?? "/"}`);
    const headers = new Headers();
    for (let i = 0; i + 1 < req.rawHeaders.length; i += 2)
      headers.append(req.rawHeaders[i]!, req.rawHeaders[i + 1]!);
    const request = new Request(url, { method: req.method ?? "GET", headers, signal: abort.signal });
    response = await fetch(request, { address: req.socket.remoteAddress });
  } catch (err) {
    response = new Response(JSON.stringify({ error: String(err) }), { status: 400 });
  }
  const headers: Record<string, string> = {};
  response.headers.forEach((value, key) => {
    headers[key] = value;
  });
  res.writeHead(response.status, headers);
  if (response.body === null || req.method === "HEAD") {
    res.end();
    await response.body?.cancel().catch(() => undefined);
    return;
  }
  const reader = response.body.getReader();
  res.on("close", () => void reader.cancel().catch(() => undefined));
  // Rejects when the body fails, e.g. an event stream that dropped a client which stopped reading: the
  // connection must close then, also while it waits for a drain that never comes.
  const failed = reader.closed.then(() => new Promise<never>(() => {}));
  failed.catch(() => undefined);
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      // Event streams must reach the browser now, not when a buffer fills.
      if (!res.write(value)) {
        await Promise.race([drainedOrClosed(res), failed]);
      }
    }
    res.end();
  } catch {
    res.destroy();
  }
}

/** Resolves at the response's next `drain` or `close`, leaving no listener behind. */
function drainedOrClosed(res: ServerResponse): Promise<void> {
  return new Promise<void>((resolve) => {
    const done = (): void => {
      res.off("drain", done);
      res.off("close", done);
      resolve();
    };
    res.on("drain", done);
    res.on("close", done);
  });
}
