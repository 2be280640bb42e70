/**
 * `rdzv serve` options for authentication, TLS and connection timeouts: their parseArgs definitions, help
 * text, and the server options they become (see docs/security.md).
 */

import { createPrivateKey, X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import { createSecureContext } from "node:tls";
import { modeOpenToOthers } from "../file-mode.js";
import { type Logger, silentLogger } from "../log.js";
import { DEFAULT_AUTH_THROTTLE } from "../store/tcp/auth-throttle.js";
import type { ServerTimeouts, TCPStoreServerOptions } from "../store/tcp/server.js";
import { DEFAULT_SERVER_TIMEOUTS } from "../store/tcp/server.js";
import { intOption, UsageError } from "./args.js";

/** parseArgs definitions of the security options. */
export const SECURITY_OPTIONS = {
  "auth-token-file": { type: "string" },
  "max-auth-failures": { type: "string" },
  "tls-cert": { type: "string" },
  "tls-key": { type: "string" },
  "incomplete-request-timeout-ms": { type: "string" },
  "idle-timeout-ms": { type: "string" },
} as const;

/** Help lines of the security options. */
export const SECURITY_HELP = `  --auth-token-file FILE   require every client to present the token in FILE (default: the
                           RDZV_AUTH_TOKEN environment variable, if set). PyTorch clients cannot:
                           with a token only rdzv's clients connect
  --max-auth-failures N    distinct wrong tokens one address (IPv4, IPv6 /64; loopback too) may
                           present a minute, on the store and the dashboard together (a stale token
                           retried counts once); then its every attempt
                           is refused unchecked for a minute (default ${DEFAULT_AUTH_THROTTLE.maxFailures}; 0 = no limit)
  --tls-cert FILE          serve TLS with this certificate (PEM; needs --tls-key). PyTorch clients
                           speak plain TCP only
  --tls-key FILE           the certificate's private key (PEM)
  --incomplete-request-timeout-ms N
                           close a connection holding a partial request (or unread replies) for N ms,
                           or not authenticated (with a token) after N ms
                           (default ${DEFAULT_SERVER_TIMEOUTS.incompleteRequestMs}; 0 = never)
  --idle-timeout-ms N      close a connection that sends nothing for N ms, unless it waits on a key
                           (default 0 = never; idle PyTorch clients are legitimate)
`;

/** The parsed values of `SECURITY_OPTIONS`. */
export type SecurityValues = { [K in keyof typeof SECURITY_OPTIONS]?: string | undefined };

/**
 * The server options (token, TLS, timeouts) the values ask for. Throws `UsageError` naming the option.
 * Warns through `logger` when the token file or the TLS key is open to other users.
 */
export function securityOptions(
  values: SecurityValues,
  env: NodeJS.ProcessEnv = process.env,
  logger: Logger = silentLogger,
): Pick<TCPStoreServerOptions, "authToken" | "authThrottle" | "tls" | "timeouts"> {
  const out: Pick<TCPStoreServerOptions, "authToken" | "authThrottle" | "tls" | "timeouts"> = {
    timeouts: timeouts(values),
    authThrottle: {
      maxFailures: intOption(
        "max-auth-failures",
        values["max-auth-failures"],
        DEFAULT_AUTH_THROTTLE.maxFailures,
        0,
        1_000_000,
      ),
    },
  };
  const file = values["auth-token-file"];
  if (file !== undefined) warnIfShared("auth token file", file, logger);
  const token = file === undefined ? env.RDZV_AUTH_TOKEN : readText("auth-token-file", file).trim();
  if (file !== undefined && token === "") throw new UsageError(`--auth-token-file ${file} is empty`);
  if (token !== undefined && token !== "") out.authToken = token;
  const cert = values["tls-cert"];
  const key = values["tls-key"];
  if ((cert === undefined) !== (key === undefined)) {
    throw new UsageError("--tls-cert and --tls-key go together: give both or neither");
  }
  if (cert !== undefined && key !== undefined) {
    warnIfShared("TLS key file", key, logger);
    out.tls = checkedTls(cert, key);
  }
  return out;
}

function timeouts(values: SecurityValues): Partial<ServerTimeouts> {
  const day = 24 * 3600 * 1000;
  return {
    incompleteRequestMs: intOption(
      "incomplete-request-timeout-ms",
      values["incomplete-request-timeout-ms"],
      DEFAULT_SERVER_TIMEOUTS.incompleteRequestMs,
      0,
      day,
    ),
    idleMs: intOption("idle-timeout-ms", values["idle-timeout-ms"], DEFAULT_SERVER_TIMEOUTS.idleMs, 0, day),
  };
}

function readText(option: string, path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch (err) {
    throw new UsageError(`--${option} ${path} cannot be read: ${(err as Error).message}`);
  }
}

/**
 * The certificate and key in the two files, each checked on its own so that the error names the file
 * (OpenSSL's "PEM routines::no start line" says neither which file nor what it should hold).
 */
function checkedTls(certPath: string, keyPath: string): { cert: string; key: string } {
  const cert = readText("tls-cert", certPath);
  const key = readText("tls-key", keyPath);
  try {
    new X509Certificate(cert);
  } catch (err) {
    throw new UsageError(`--tls-cert ${certPath} holds no PEM certificate: ${(err as Error).message}`);
  }
  try {
    createPrivateKey(key);
  } catch (err) {
    const reason =
      (err as NodeJS.ErrnoException).code === "ERR_MISSING_PASSPHRASE"
        ? "it is encrypted (rdzv serve takes an unencrypted key; keep it private with its file mode)"
        : (err as Error).message;
    throw new UsageError(`--tls-key ${keyPath} holds no usable PEM private key: ${reason}`);
  }
  try {
    createSecureContext({ cert, key });
  } catch (err) {
    throw new UsageError(
      `--tls-key ${keyPath} does not go with the certificate in --tls-cert ${certPath}: ${(err as Error).message}`,
    );
  }
  return { cert, key };
}

/**
 * Warns (as ssh refuses a private key that others can read) when the secret in `path` is open to other
 * users: whoever reads the token connects as any client. A file that cannot be read is left to `readText`.
 */
function warnIfShared(what: string, path: string, logger: Logger): void {
  if (process.platform === "win32") return; // no POSIX modes
  const mode = modeOpenToOthers(path);
  if (mode === undefined) return;
  logger.warn(
    `${what} ${path} is open to other users (mode ${mode.toString(8)}): anyone on this machine who reads ` +
      `it has the secret; chmod 600 it`,
    { file: path, mode: mode.toString(8) },
  );
}
