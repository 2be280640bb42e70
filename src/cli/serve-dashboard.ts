/**
 * `rdzv serve --http-port N [--http-host HOST]`: the dashboard options, their help text, and starting the
 * dashboard (src/server/dashboard-app.ts) beside the store.
 */

import type { Logger } from "../log.js";
import { isLoopbackHost } from "../rendezvous/endpoint.js";
import { createDashboardApp } from "../server/dashboard-app.js";
import { startHttpServer } from "../server/http-server.js";
import type { RunRetention } from "../server/run-retention.js";
import { formatHostPort } from "../store/tcp/address.js";
import type { TCPStoreServer } from "../store/tcp/server.js";
import { intOption, UsageError } from "./args.js";

/** parseArgs definitions of the dashboard options. */
export const DASHBOARD_OPTIONS = {
  "http-port": { type: "string" },
  "http-host": { type: "string" },
  "http-allowed-host": { type: "string", multiple: true },
} as const;

/** Help lines of the dashboard options. */
export const DASHBOARD_HELP = `  --http-port PORT         serve the dashboard, /api/runs, /events, /metrics and /healthz on this HTTP
                           port (0 picks a free one; default: no dashboard)
  --http-host HOST         address of the HTTP port (default 127.0.0.1). Beyond loopback it requires
                           the store's auth token, when it has one (HTTP Basic password or Bearer)
  --http-allowed-host NAME serve requests for this host name (repeatable): the dashboard answers only
                           IP addresses and localhost on loopback (against DNS rebinding), and with
                           this option only those and the NAMEs on any address
`;

/** The parsed values of `DASHBOARD_OPTIONS`. */
export interface DashboardValues {
  "http-port"?: string | undefined;
  "http-host"?: string | undefined;
  "http-allowed-host"?: string[] | undefined;
}

/** Where the dashboard listens, and the host names it answers besides IP addresses and localhost. */
export interface DashboardAt {
  host: string;
  port: number;
  allowedHosts?: string[];
}

/** A started dashboard, or nothing when `--http-port` was not given. */
export interface ServeDashboard {
  /** Stops the HTTP server and the dashboard's watchers; idempotent. */
  close(): Promise<void>;
}

/** Checks the options before anything starts (a bad value is a usage error). */
export function dashboardPort(values: DashboardValues): DashboardAt | undefined {
  const host = values["http-host"] ?? "127.0.0.1";
  if (host.trim() === "") throw new UsageError("--http-host must not be empty");
  const names = values["http-allowed-host"];
  for (const name of names ?? []) {
    if (!/^[A-Za-z0-9._-]+$/.test(name)) {
      throw new UsageError(
        `--http-allowed-host must be a host name, without port, got ${JSON.stringify(name)}`,
      );
    }
  }
  if (values["http-port"] === undefined) {
    if (values["http-host"] !== undefined) throw new UsageError("--http-host needs --http-port");
    if (names !== undefined) throw new UsageError("--http-allowed-host needs --http-port");
    return undefined;
  }
  const port = intOption("http-port", values["http-port"], 0, 0, 65535);
  return names === undefined ? { host, port } : { host, port, allowedHosts: names };
}

/**
 * Starts the dashboard of `server` when `--http-port` was given, and prints its URL to `out`
 * (`rdzv dashboard on http://HOST:PORT/`). Beyond loopback, a dashboard of a store with `authToken`
 * requires that token too (HTTP Basic password or Bearer); one without says that anyone may read it.
 * `retention`'s counters are exported at /metrics.
 */
export async function startServeDashboard(
  at: DashboardAt | undefined,
  server: TCPStoreServer,
  out: NodeJS.WritableStream,
  logger?: Logger,
  authToken?: string,
  retention?: RunRetention,
): Promise<ServeDashboard> {
  if (at === undefined) return { close: async () => {} };
  const exposed = !isLoopbackHost(at.host);
  const token = exposed ? authToken : undefined;
  const app = createDashboardApp({
    engine: server.engine,
    stats: () => server.stats(),
    storeAddress: formatHostPort(server.host, server.port),
    ...(logger === undefined ? {} : { logger }),
    ...(token === undefined ? {} : { authToken: token, authThrottle: server.authThrottle }),
    ...(retention === undefined ? {} : { retention: () => retention.stats() }),
  });
  let http: Awaited<ReturnType<typeof startHttpServer>>;
  try {
    http = await startHttpServer({ ...at, fetch: app.fetch });
  } catch (err) {
    app.close();
    throw err;
  }
  out.write(`rdzv dashboard on ${http.url}\n`);
  if (exposed && token === undefined) {
    out.write(
      `rdzv dashboard: listening on ${at.host} without authentication; anyone who reaches it sees every run\n`,
    );
  } else if (exposed) {
    out.write(
      `rdzv dashboard: listening on ${at.host}; it requires the store's auth token (HTTP Basic password, ` +
        "any user name, or Authorization: Bearer), sent in the clear: plain HTTP\n",
    );
  }
  return {
    async close() {
      app.close();
      await http.close();
    },
  };
}
