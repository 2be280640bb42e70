/**
 * `rdzv serve` options for authentication, TLS and connection timeouts: their parseArgs definitions, help
 * text, and the server options they become (see docs/security.md).
 */

import { readFileSync } from "node:fs";
import type { ServerTimeouts, TCPStoreServerOptions } from "../store/tcp/server.js";
import { DEFAULT_SERVER_TIMEOUTS } from "../store/tcp/server.js";
import { intOption, UsageError } from "./args.js";

/** parseArgs definitions of the security options. */
export const SECURITY_OPTIONS = {
  "auth-token-file": { type: "string" },
  "tls-cert": { type: "string" },
  "tls-key": { type: "string" },
  "incomplete-request-timeout-ms": { type: "string" },
  "idle-timeout-ms": { type: "string" },
} as const;

/** Help lines of the security options. */
export const SECURITY_HELP = `  --auth-token-file FILE   require every client to present the token in FILE (default: the
                           RDZV_AUTH_TOKEN environment variable, if set). PyTorch clients cannot:
                           with a token only rdzv's clients connect
  --tls-cert FILE          serve TLS with this certificate (PEM; needs --tls-key). PyTorch clients
                           speak plain TCP only
  --tls-key FILE           the certificate's private key (PEM)
  --incomplete-request-timeout-ms N
                           close a connection holding a partial request (or unread replies) for N ms
                           (default ${DEFAULT_SERVER_TIMEOUTS.incompleteRequestMs}; 0 = never)
  --idle-timeout-ms N      close a connection that sends nothing for N ms, unless it waits on a key
                           (default 0 = never; idle PyTorch clients are legitimate)
`;

/** The parsed values of `SECURITY_OPTIONS`. */
export type SecurityValues = { [K in keyof typeof SECURITY_OPTIONS]?: string | undefined };

/** The server options (token, TLS, timeouts) the values ask for. Throws `UsageError` naming the option. */
export function securityOptions(
  values: SecurityValues,
  env: NodeJS.ProcessEnv = process.env,
): Pick<TCPStoreServerOptions, "authToken" | "tls" | "timeouts"> {
  const out: Pick<TCPStoreServerOptions, "authToken" | "tls" | "timeouts"> = { timeouts: timeouts(values) };
  const file = values["auth-token-file"];
  const token = file === undefined ? env.RDZV_AUTH_TOKEN : readText("auth-token-file", file).trim();
  if (file !== undefined && token === "") throw new UsageError(`--auth-token-file ${file} is empty`);
  if (token !== undefined && token !== "") out.authToken = token;
  const cert = values["tls-cert"];
  const key = values["tls-key"];
  if ((cert === undefined) !== (key === undefined)) {
    throw new UsageError("--tls-cert and --tls-key go together: give both or neither");
  }
  if (cert !== undefined && key !== undefined) {
    out.tls = { cert: readText("tls-cert", cert), key: readText("tls-key", key) };
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
    throw new UsageError(`--${option} ${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
}
