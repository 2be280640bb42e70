/**
 * Opening client connections: TCP connect, the v2 handshake (VALIDATE, PING) and the rdzv extension
 * probe, retried with exponential backoff and jitter until a deadline, as PyTorch's client does.
 */

import { connect, isIP, type Socket } from "node:net";
import { type ConnectionOptions, connect as connectTls } from "node:tls";
import {
  AbortedError,
  ErrorCode,
  RendezvousAuthError,
  RendezvousConnectionError,
  RendezvousError,
} from "../../errors.js";
import type { Logger } from "../../log.js";
import { sleep } from "../deadline.js";
import { ClientConnection, Shape, socketError } from "./client-connection.js";
import {
  AUTH_PROBE_KEY,
  AuthResponse,
  CheckResponse,
  type Dialect,
  EXTENSION_PROBE_KEY,
  type ProtocolLimits,
  VALIDATION_MAGIC,
} from "./protocol.js";
import { type AuthReply, ReplyDecoder } from "./reply-decoder.js";
import { copyingOnread } from "./server-reads.js";

/** Where and how to connect. */
export interface ConnectTarget {
  readonly host: string;
  readonly port: number;
  readonly dialect: Dialect;
  readonly limits: Partial<ProtocolLimits>;
  readonly logger: Logger;
  /** Shared secret sent with AUTH after VALIDATE (v2), if any. */
  readonly authToken?: string | undefined;
  /** TLS options when the server speaks TLS. */
  readonly tls?: ConnectionOptions | undefined;
}

/** A freshly opened connection. */
export interface OpenedConnection {
  readonly conn: ClientConnection;
  /** Whether the server answered the extension probe (only when `probe` was asked for). */
  readonly hasExtensions: boolean;
}

/** Options of one connect (with or without retries). */
export interface OpenOptions {
  /** Also send the extension probe (v2 only). */
  readonly probe: boolean;
  /** Called when the connection ends; `undefined` after a deliberate close. */
  readonly onClose?: (err: RendezvousError | undefined) => void;
  /** Stops the attempts (the store is closing). */
  readonly signal?: AbortSignal;
  /** Told about every failed attempt. */
  readonly onAttemptFailed?: (err: unknown) => void;
}

/**
 * Bounds of one attempt. The lower bound lets an attempt outlive a nearly spent deadline, so a slow but
 * healthy server still gets its connection (the caller stops waiting at its own deadline either way, and
 * a connection that arrives late is kept for the next call).
 */
const MIN_ATTEMPT_MS = 1000;
const MAX_ATTEMPT_MS = 10_000;
const FIRST_BACKOFF_MS = 10;
const MAX_BACKOFF_MS = 1000;

/** `host:port`, bracketing IPv6 addresses. */
export function peerName(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}

/**
 * Opens a connection, retrying failed attempts (refused, reset, handshake failures) with backoff until
 * `deadline()` (epoch ms; read again after every attempt, so it may move). Rejects with a
 * `RendezvousConnectionError` naming the server, the last failure as `cause`.
 */
export async function connectWithRetry(
  target: ConnectTarget,
  deadline: () => number,
  options: OpenOptions,
): Promise<OpenedConnection> {
  const peer = peerName(target.host, target.port);
  let backoffMs = FIRST_BACKOFF_MS;
  for (let attempt = 1; ; attempt++) {
    const attemptMs = Math.min(Math.max(deadline() - Date.now(), MIN_ATTEMPT_MS), MAX_ATTEMPT_MS);
    try {
      return await openConnection(target, attemptMs, options);
    } catch (err) {
      // A refused token or certificate stays refused: retrying would only hide why.
      if (err instanceof AbortedError || options.signal?.aborted || hasAuthCode(err)) throw err;
      options.onAttemptFailed?.(err);
      const left = deadline() - Date.now();
      target.logger.debug("TCPStore connect attempt failed", { peer, attempt, error: String(err) });
      if (left <= 0) {
        const reason = err instanceof Error ? err.message : String(err);
        throw new RendezvousConnectionError(
          `could not connect to the TCPStore server at ${peer} (${attempt} attempt${attempt === 1 ? "" : "s"}): ${reason}`,
          { cause: err },
        );
      }
      await sleep(Math.min(backoffMs * (0.75 + Math.random() / 2), left), options.signal);
      backoffMs = Math.min(backoffMs * 2, MAX_BACKOFF_MS);
    }
  }
}

/** One attempt: connect, then (v2) VALIDATE and PING, and the probe. Fails after `attemptMs`. */
export function openConnection(
  target: ConnectTarget,
  attemptMs: number,
  options: OpenOptions,
): Promise<OpenedConnection> {
  const peer = peerName(target.host, target.port);
  return new Promise<OpenedConnection>((resolve, reject) => {
    let conn: ClientConnection | undefined;
    // Plain TCP reads through `onread`; nothing arrives before the connection object exists (the
    // server speaks only when spoken to), but a read that did would wait for it.
    const early: Buffer[] = [];
    // Whether the server sent anything, and whether TCP connected (a TLS socket's handshake comes after).
    let received = 0;
    let tcpConnected = false;
    const socket = openSocket(target, (chunk) => {
      received += chunk.length;
      if (conn === undefined) early.push(chunk);
      else conn.received(chunk);
    });
    socket.once("connect", () => {
      tcpConnected = true;
    });
    const fail = (err: RendezvousError): void => {
      cleanup();
      if (conn === undefined) socket.destroy();
      else conn.destroy(err);
      reject(err);
    };
    const onError = (err: Error): void => {
      const mapped = connectError(peer, err);
      fail(target.tls !== undefined && tcpConnected ? tlsToPlainHint(mapped) : mapped);
    };
    const onAbort = (): void =>
      fail(new AbortedError("connecting was aborted", { cause: options.signal?.reason }));
    const timer = setTimeout(
      () => fail(new RendezvousConnectionError(`connecting to ${peer} timed out after ${attemptMs}ms`)),
      attemptMs,
    );
    const cleanup = (): void => {
      clearTimeout(timer);
      socket.off("error", onError);
      options.signal?.removeEventListener("abort", onAbort);
    };
    if (options.signal?.aborted) return onAbort();
    options.signal?.addEventListener("abort", onAbort, { once: true });
    socket.once("error", onError);
    socket.once(target.tls === undefined ? "connect" : "secureConnect", () => {
      socket.off("error", onError);
      socket.setKeepAlive(true, 30_000);
      const c = new ClientConnection(socket, {
        dialect: target.dialect,
        peer,
        decoder: new ReplyDecoder(target.limits),
        onClose: (err) => options.onClose?.(err),
      });
      conn = c;
      for (const chunk of early.splice(0)) c.received(chunk);
      handshake(c, options.probe, target.authToken).then(
        (hasExtensions) => {
          cleanup();
          resolve({ conn: c, hasExtensions });
        },
        (err: unknown) => {
          const mapped = err instanceof RendezvousError ? err : socketError(peer, err as Error);
          const silent = target.tls === undefined && received === 0 && mapped.code === ErrorCode.Connection;
          fail(silent ? unansweredHandshake(peer, mapped, target.authToken !== undefined) : mapped);
        },
      );
    });
  });
}

/**
 * A socket to the target. Plain TCP hands each read to `onChunk` through Node's `onread` option, with no
 * Readable stream in between (as the server's direct reads, server-reads.ts); TLS reads as a stream.
 */
function openSocket(target: ConnectTarget, onChunk: (chunk: Buffer) => void): Socket {
  const { host, port, tls } = target;
  if (tls === undefined) return connect({ host, port, noDelay: true, onread: copyingOnread(onChunk) });
  // Node checks the certificate against `servername`, or against `host` (IP SANs included) without it.
  const servername = tls.servername ?? (isIP(host) === 0 ? host : undefined);
  const socket = connectTls({ ...tls, host, port, ...(servername === undefined ? {} : { servername }) });
  socket.setNoDelay(true);
  return socket;
}

/**
 * A plain connection the server closed before sending a byte of the handshake's replies. A TLS server
 * does that (it reads the handshake as a bad TLS record), so does a PyTorch <= 2.0 server (v2's VALIDATE
 * is bad input to it), and a PyTorch server given rdzv's AUTH: say so rather than blame the request.
 */
function unansweredHandshake(peer: string, err: RendezvousError, withToken: boolean): RendezvousError {
  const causes = [
    "a server that speaks TLS (rdzv serve --tls-cert: connect with TLS, through the tls option or RDZV_TLS_CA)",
    "a PyTorch <= 2.0 server (it needs dialect v1)",
    ...(withToken ? ["a PyTorch server sent an auth token (rdzv's AUTH: only rdzv servers take one)"] : []),
    "a server at its connection limit",
  ];
  return new RendezvousConnectionError(
    `the TCPStore server at ${peer} closed the connection without answering the handshake, as these do: ${causes.join("; ")}`,
    { cause: err },
  );
}

/** A TLS connection whose TCP connected but whose TLS handshake failed for no certificate reason. */
function tlsToPlainHint(err: RendezvousError): RendezvousError {
  if (err.code !== ErrorCode.Connection) return err;
  return new RendezvousConnectionError(
    `${err.message} (in the TLS handshake: this client speaks TLS, from the tls option or RDZV_TLS_CA, and ` +
      "the server must too: rdzv serve --tls-cert; PyTorch's servers never do)",
    { cause: err },
  );
}

function hasAuthCode(err: unknown): boolean {
  return err instanceof RendezvousError && err.code === ErrorCode.Auth;
}

/** Certificate verification failures (Node's codes for them) are authentication errors; the rest connection errors. */
function connectError(peer: string, err: Error): RendezvousError {
  const code = (err as NodeJS.ErrnoException).code ?? "";
  if (/CERT|SELF_SIGNED|UNABLE_TO_VERIFY|ERR_TLS_CERT_ALTNAME/.test(code)) {
    return new RendezvousAuthError(`the TLS certificate of ${peer} does not verify: ${err.message}`, {
      cause: err,
    });
  }
  return socketError(peer, err);
}

/**
 * v2: VALIDATE (no reply), AUTH when there is a token, PING with the pid as nonce (echoed), the optional
 * extension probe, and without a token the auth probe; all pipelined in one write.
 */
async function handshake(
  conn: ClientConnection,
  probe: boolean,
  token: string | undefined,
): Promise<boolean> {
  if (conn.dialect === "v1") return false;
  const nonce = process.pid >>> 0;
  void conn.send({ type: "validate", magic: VALIDATION_MAGIC }).catch(() => {});
  const auth =
    token === undefined
      ? undefined
      : conn.request({ type: "auth", token: Buffer.from(token, "utf8") }, Shape.auth);
  const ping = conn.request({ type: "ping", nonce }, Shape.u32);
  const check = probe ? conn.request({ type: "check", keys: [EXTENSION_PROBE_KEY] }, Shape.u8) : undefined;
  const authProbe =
    token === undefined ? conn.request({ type: "check", keys: [AUTH_PROBE_KEY] }, Shape.u8) : undefined;
  const replies = Promise.all([ping, check, authProbe]);
  // A rejected AUTH closes the connection, failing the requests behind it: the AUTH error is the one to report.
  replies.catch(() => {});
  if (auth !== undefined) await checkAuth(conn, auth);
  const [echoed, ready, needsAuth] = await replies;
  if (echoed !== nonce) {
    throw new RendezvousConnectionError(
      `${conn.peer} answered PING ${nonce} with ${echoed}: not a TCPStore server?`,
    );
  }
  if (needsAuth === CheckResponse.Ready) {
    throw new RendezvousAuthError(
      `the TCPStore server at ${conn.peer} requires authentication: give the client its token (authToken, or the RDZV_AUTH_TOKEN environment variable)`,
    );
  }
  return ready === CheckResponse.Ready;
}

async function checkAuth(conn: ClientConnection, auth: Promise<AuthReply>): Promise<void> {
  let answer: AuthReply;
  try {
    answer = await auth;
  } catch (err) {
    // Retried like any lost connection: a server that restarts looks the same as one that has no AUTH.
    const reason = err instanceof Error ? err.message : String(err);
    throw new RendezvousConnectionError(
      `${reason} (at AUTH: only rdzv servers take an auth token, PyTorch's close the connection)`,
      { cause: err },
    );
  }
  if (answer.response === AuthResponse.Throttled) {
    const seconds = Math.ceil(answer.retryAfterMs / 1000);
    throw new RendezvousAuthError(
      `the TCPStore server at ${conn.peer} refuses authentication from this address for ${seconds} s more ` +
        "without checking the token: too many wrong auth tokens came from it (its brute-force throttle). " +
        "Check the token of every client on this machine (authToken, or RDZV_AUTH_TOKEN)",
      { retryAfterMs: answer.retryAfterMs },
    );
  }
  if (answer.response !== AuthResponse.Accepted) {
    throw new RendezvousAuthError(`the TCPStore server at ${conn.peer} rejected the auth token`);
  }
}

/** The error pending calls get when their store is closed. */
export function storeClosedError(): RendezvousError {
  return new RendezvousError("the TCPStore was closed", ErrorCode.ResourceClosed);
}
