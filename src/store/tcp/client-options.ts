/** Options of the TCPStore client, their defaults and validation, and the deadline race its calls use. */

import { readFileSync } from "node:fs";
import type { ConnectionOptions } from "node:tls";
import { AbortedError, InvalidArgumentError, type RendezvousError } from "../../errors.js";
import { type Logger, silentLogger } from "../../log.js";
import { checkTimeoutMs } from "../deadline.js";
import { DEFAULT_STORE_TIMEOUT_MS } from "../store.js";
import { checkGiveUpRule, type GiveUpRule } from "./client-give-up.js";
import type { Dialect, ProtocolLimits } from "./protocol.js";

/** Options of `connectTCPStore` / `new TCPStore`. */
export interface TCPStoreOptions {
  /** Server host name or address. */
  host: string;
  /** Server port (1..65535). */
  port: number;
  /** Default timeout of blocking calls in ms (default 300 000, as PyTorch). Settable later as `timeoutMs`. */
  timeoutMs?: number;
  /**
   * How long to keep retrying a connect (with backoff and jitter) before failing with a
   * `RendezvousConnectionError`; default `timeoutMs`, as PyTorch. Reconnects made by a later call are
   * also bounded by that call's own timeout.
   */
  connectTimeoutMs?: number;
  /** Wire dialect: "v2" (PyTorch >= 2.1, default) or "v1" (PyTorch <= 2.0 servers). */
  dialect?: Dialect;
  /**
   * PyTorch's `world_size`: when given (and `waitForWorkers` is not false) the store sends ADD `init/` 1
   * once after its first connect, as a PyTorch client does. Waiting for the workers is the server's job.
   */
  worldSize?: number;
  /** PyTorch's `wait_for_workers` (default true): false skips the `init/` increment. */
  waitForWorkers?: boolean;
  /**
   * Size limits (default `DEFAULT_PROTOCOL_LIMITS`, those of a default rdzv server): replies over them
   * drop the connection, and requests over them fail at once with `RDZV_LIMIT_EXCEEDED` instead of
   * being sent. Set them to a server's own limits for clear errors.
   */
  limits?: Partial<ProtocolLimits>;
  /**
   * Shared secret for an rdzv server started with an auth token (sent with rdzv's AUTH extension right
   * after VALIDATE; v2 only). Default: the `RDZV_AUTH_TOKEN` environment variable when set (ignored in v1).
   * A PyTorch server closes a connection that sends it: use no token there.
   */
  authToken?: string | undefined;
  /**
   * Connect with TLS: `true` (system CAs) or Node `tls.connect` options (`ca` for a self-signed server,
   * `servername`, client `cert`/`key`, ...). Default: TLS trusting the PEM file named by `RDZV_TLS_CA` when
   * that variable is set, else plain TCP. Only rdzv servers speak TLS.
   */
  tls?: boolean | ConnectionOptions | undefined;
  /**
   * Against an rdzv server (one that answers the extension probe), run WAITs on the main connection with
   * rdzv's `WAIT_ASYNC` extension instead of a wait connection each (default true). PyTorch servers
   * always get wait connections.
   */
  asyncWaits?: boolean;
  /**
   * When to stop retrying a server for good (client-give-up.ts): once every connect attempt has been refused
   * for `giveUp.afterRefusedMs` (nothing listens there, or its host is unreachable; timeouts do not count),
   * every pending and later call fails at once with a `RendezvousStoreGoneError` (`RDZV_CONNECTION`) whose
   * message `giveUp.message` writes. Default: none, every call retries within its own connect budget.
   * Settable later as `giveUp`.
   */
  giveUp?: GiveUpRule | undefined;
  logger?: Logger;
}

/** Environment variable holding the default `authToken` of rdzv's clients. */
export const AUTH_TOKEN_ENV = "RDZV_AUTH_TOKEN";
/** Environment variable naming a CA file (PEM): when set, rdzv's clients default to TLS trusting it. */
export const TLS_CA_ENV = "RDZV_TLS_CA";

/** `TCPStoreOptions` with defaults applied. */
export interface ResolvedOptions {
  readonly host: string;
  readonly port: number;
  readonly timeoutMs: number;
  readonly connectTimeoutMs: number;
  readonly dialect: Dialect;
  readonly worldSize: number | undefined;
  readonly waitForWorkers: boolean;
  readonly limits: Partial<ProtocolLimits>;
  readonly authToken: string | undefined;
  readonly tls: ConnectionOptions | undefined;
  readonly asyncWaits: boolean;
  readonly giveUp: GiveUpRule | undefined;
  readonly logger: Logger;
}

/** Validates `options` eagerly (the message names the bad value) and applies defaults. */
export function resolveOptions(options: TCPStoreOptions): ResolvedOptions {
  if (options === null || typeof options !== "object") {
    throw new InvalidArgumentError(`TCPStore options must be an object, got ${String(options)}`);
  }
  const { host, port, dialect = "v2", worldSize } = options;
  if (typeof host !== "string" || host.length === 0) {
    throw new InvalidArgumentError(`TCPStore host must be a non-empty string, got ${JSON.stringify(host)}`);
  }
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new InvalidArgumentError(`TCPStore port must be an integer in 1..65535, got ${String(port)}`);
  }
  if (dialect !== "v1" && dialect !== "v2") {
    throw new InvalidArgumentError(`TCPStore dialect must be "v1" or "v2", got ${JSON.stringify(dialect)}`);
  }
  if (worldSize !== undefined && (!Number.isSafeInteger(worldSize) || worldSize < 1)) {
    throw new InvalidArgumentError(`TCPStore worldSize must be a positive integer, got ${String(worldSize)}`);
  }
  const timeoutMs = checkTimeoutMs(options.timeoutMs ?? DEFAULT_STORE_TIMEOUT_MS, "timeoutMs");
  return {
    host,
    port,
    timeoutMs,
    connectTimeoutMs: checkTimeoutMs(options.connectTimeoutMs ?? timeoutMs, "connectTimeoutMs"),
    dialect,
    worldSize,
    waitForWorkers: options.waitForWorkers ?? true,
    limits: options.limits ?? {},
    authToken: resolveToken(options.authToken, dialect),
    tls: resolveTls(options.tls),
    asyncWaits: options.asyncWaits ?? true,
    giveUp: checkGiveUpRule(options.giveUp),
    logger: options.logger ?? silentLogger,
  };
}

function resolveToken(token: string | undefined, dialect: Dialect): string | undefined {
  if (token !== undefined) {
    if (typeof token !== "string" || token.length === 0) {
      throw new InvalidArgumentError(`TCPStore authToken must be a non-empty string, got ${typeof token}`);
    }
    if (dialect === "v1") throw new InvalidArgumentError("TCPStore authToken needs the v2 dialect");
    return token;
  }
  const fromEnv = process.env[AUTH_TOKEN_ENV];
  return dialect === "v2" && fromEnv !== undefined && fromEnv.length > 0 ? fromEnv : undefined;
}

function resolveTls(tls: boolean | ConnectionOptions | undefined): ConnectionOptions | undefined {
  if (tls === false) return undefined;
  if (tls === true) return {};
  if (tls !== undefined) {
    if (tls === null || typeof tls !== "object") {
      throw new InvalidArgumentError(
        `TCPStore tls must be a boolean or tls.connect options, got ${String(tls)}`,
      );
    }
    return tls;
  }
  const caFile = process.env[TLS_CA_ENV];
  if (caFile === undefined || caFile.length === 0) return undefined;
  try {
    return { ca: readFileSync(caFile) };
  } catch (err) {
    throw new InvalidArgumentError(`${TLS_CA_ENV}=${caFile}: cannot read the CA file`, { cause: err });
  }
}

/** setTimeout's largest delay; longer ones fire at once. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Settles like `promise`, unless `deadlineAt` (epoch ms) passes first (rejects with `onTimeout()`) or
 * `signal` fires (`AbortedError`). The loser is left running; its outcome is ignored but handled.
 */
export function race<T>(
  promise: Promise<T>,
  deadlineAt: number,
  signal: AbortSignal | undefined,
  onTimeout: () => RendezvousError,
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const done = (): void => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
    };
    const onAbort = (): void => {
      done();
      reject(new AbortedError(undefined, { cause: signal?.reason }));
    };
    let timer: NodeJS.Timeout | undefined;
    const arm = (): void => {
      const left = deadlineAt - Date.now();
      if (left > MAX_TIMER_MS) {
        timer = setTimeout(arm, MAX_TIMER_MS);
        return;
      }
      timer = setTimeout(
        () => {
          done();
          reject(onTimeout());
        },
        Math.max(0, left),
      );
    };
    arm();
    if (signal?.aborted) return onAbort();
    signal?.addEventListener("abort", onAbort, { once: true });
    promise.then(
      (value) => {
        done();
        resolve(value);
      },
      (err: unknown) => {
        done();
        reject(err);
      },
    );
  });
}
