/** `rdzv serve`: the standalone store server. */

import { parseArgs } from "node:util";
import { LogLevel } from "../log.js";
import { isLoopbackHost } from "../rendezvous/endpoint.js";
import { formatHostPort } from "../store/tcp/address.js";
import { countOpenFiles, openFileAdvice, readOpenFileLimit } from "../store/tcp/open-files.js";
import { createTCPStoreServer, DEFAULT_SERVER_LIMITS, DEFAULT_SERVER_PORT } from "../store/tcp/server.js";
import { intOption, sizeOption, UsageError } from "./args.js";
import { DASHBOARD_HELP, DASHBOARD_OPTIONS, dashboardPort, startServeDashboard } from "./serve-dashboard.js";
import { DATA_HELP, DATA_OPTIONS, openServeData } from "./serve-data.js";
import { createServeLogger } from "./serve-log.js";
import { RETENTION_HELP, RETENTION_OPTIONS, runTtlMs, startServeRetention } from "./serve-retention.js";
import { SECURITY_HELP, SECURITY_OPTIONS, securityOptions } from "./serve-security.js";

export const SERVE_HELP = `Usage: rdzv serve [options]

Runs a TCP store server that PyTorch's TCPStore clients (1.x and 2.x) and rdzv's own clients use
as rendezvous endpoint (e.g. torchrun --rdzv-backend c10d --rdzv-endpoint HOST:PORT).

Options:
  --host HOST              address to bind (default 127.0.0.1; use 0.0.0.0 or :: to serve other machines)
  --port PORT              port to bind (default ${DEFAULT_SERVER_PORT}; 0 picks a free port)
  --max-connections N      most open connections (default ${DEFAULT_SERVER_LIMITS.maxConnections})
  --max-connections-per-address N
                           most open connections from one address (IPv4, IPv6 /64), loopback not
                           counted (default ${DEFAULT_SERVER_LIMITS.maxConnectionsPerAddress}; raise it for many nodes behind one NAT)
  --max-key-bytes N        largest key (default ${DEFAULT_SERVER_LIMITS.maxKeyBytes})
  --max-value-bytes N      largest value (default ${DEFAULT_SERVER_LIMITS.maxValueBytes})
  --max-store-bytes SIZE   most bytes all keys and values may take together (512M, 2G, ...); a write
                           past it is refused and its connection closed; deletes and writes that
                           shrink the data still pass (default 0: no limit, as Redis's maxmemory)
${SECURITY_HELP}${DATA_HELP}${RETENTION_HELP}${DASHBOARD_HELP}  --log-level LEVEL        debug, info, warn or error (default info)
  -h, --help               show this help
`;

const LEVELS = new Set<string>(Object.values(LogLevel));

/** Runs `rdzv serve` until SIGINT/SIGTERM; resolves with the exit code. */
export async function serveCommand(
  argv: readonly string[],
  out: NodeJS.WritableStream = process.stdout,
): Promise<number> {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      host: { type: "string" },
      port: { type: "string" },
      "max-connections": { type: "string" },
      "max-connections-per-address": { type: "string" },
      "max-key-bytes": { type: "string" },
      "max-value-bytes": { type: "string" },
      "max-store-bytes": { type: "string" },
      "log-level": { type: "string" },
      ...SECURITY_OPTIONS,
      ...DATA_OPTIONS,
      ...RETENTION_OPTIONS,
      ...DASHBOARD_OPTIONS,
      help: { type: "boolean", short: "h" },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) {
    out.write(SERVE_HELP);
    return 0;
  }
  const level = values["log-level"] ?? "info";
  if (!LEVELS.has(level))
    throw new UsageError(
      `--log-level must be one of ${[...LEVELS].join(", ")}, got ${JSON.stringify(level)}`,
    );
  const logger = createServeLogger(level as LogLevel);
  const host = values.host ?? "127.0.0.1";
  if (host.trim() === "") throw new UsageError("--host must not be empty");
  const security = securityOptions(values, process.env, logger);
  const http = dashboardPort(values);
  const runTtl = runTtlMs(values);
  // Every option is checked before the data directory is opened (and locked).
  const port = intOption("port", values.port, DEFAULT_SERVER_PORT, 0, 65535);
  const limits = {
    maxConnections: intOption(
      "max-connections",
      values["max-connections"],
      DEFAULT_SERVER_LIMITS.maxConnections,
      1,
      1_000_000,
    ),
    maxConnectionsPerAddress: intOption(
      "max-connections-per-address",
      values["max-connections-per-address"],
      DEFAULT_SERVER_LIMITS.maxConnectionsPerAddress,
      1,
      1_000_000,
    ),
    maxKeyBytes: intOption(
      "max-key-bytes",
      values["max-key-bytes"],
      DEFAULT_SERVER_LIMITS.maxKeyBytes,
      1,
      2 ** 30,
    ),
    maxValueBytes: intOption(
      "max-value-bytes",
      values["max-value-bytes"],
      DEFAULT_SERVER_LIMITS.maxValueBytes,
      0,
      2 ** 31,
    ),
    maxStoreBytes: sizeOption(
      "max-store-bytes",
      values["max-store-bytes"],
      DEFAULT_SERVER_LIMITS.maxStoreBytes,
    ),
  };
  const data = openServeData(values, logger, out);
  const server = await createTCPStoreServer({
    ...security,
    ...(data.engine === undefined ? {} : { engine: data.engine }),
    host,
    port,
    logger,
    limits,
  }).catch((err: unknown) => {
    data.close();
    throw err;
  });
  // Installed before anything is printed: a signal sent once the listening line shows stops the server
  // cleanly (it killed the process while the dashboard was starting).
  const stopped = new Promise<number>((resolve) => {
    const stop = (signal: string): void => {
      process.off("SIGINT", stop);
      process.off("SIGTERM", stop);
      logger.info(`received ${signal}, shutting down`);
      resolve(0);
    };
    process.on("SIGINT", stop);
    process.on("SIGTERM", stop);
    data.onFailure((err) => {
      process.off("SIGINT", stop);
      process.off("SIGTERM", stop);
      // Fail-stop: nothing more may be acknowledged that the data dir does not hold.
      logger.error(
        "rdzv store: storage error: the data directory cannot record writes; stopping the server (exit status 1)",
        {
          file: err.file,
          error: err.message,
        },
      );
      resolve(1);
    });
  });
  out.write(`rdzv store listening on ${formatHostPort(server.host, server.port)}\n`);
  const fileLimit = readOpenFileLimit();
  const inUse = countOpenFiles();
  const advice =
    fileLimit === undefined || inUse === undefined
      ? undefined
      : openFileAdvice(fileLimit, inUse, limits.maxConnections);
  if (advice !== undefined) logger.warn(`rdzv store: ${advice}`);
  if (!server.requiresAuth && !isLoopbackHost(server.host)) {
    // PyTorch's clients cannot send a token, so serving them unauthenticated is allowed, but never silently.
    logger.warn(
      "rdzv store: no auth token: any client that reaches this address can read, change and delete every " +
        "key (rendezvous state and the jobs' data). On a network others share, keep the port behind a " +
        "firewall, or require --auth-token-file (PyTorch clients cannot send one; see docs/security.md)",
      { host: server.host, port: server.port },
    );
  }
  if (server.tls || server.requiresAuth) {
    out.write(
      `rdzv store: ${[server.tls ? "TLS" : "", server.requiresAuth ? "auth token required" : ""].filter(Boolean).join(", ")} (PyTorch clients cannot connect)\n`,
    );
  }
  const token = typeof security.authToken === "string" ? security.authToken : undefined;
  const retention = startServeRetention(server.engine, runTtl, logger);
  const dashboard = await startServeDashboard(http, server, out, logger, token, retention).catch(
    async (err: unknown) => {
      retention?.close();
      data.close();
      await server.close();
      throw err;
    },
  );
  const code = await stopped;
  retention?.close();
  // Before the connections close: the server's own on-disconnect writes at shutdown are not journaled,
  // so a restart does not mark every client gone (they reconnect).
  data.close();
  await dashboard.close();
  await server.close();
  out.write("rdzv store stopped\n");
  return code;
}
