/**
 * The dashboard's HTTP routes as a fetch-style handler (`Request` in, `Response` out), so they are tested
 * without a socket; http-server.ts puts them on a port.
 *
 * | route              | answer                                                                  |
 * | ------------------ | ----------------------------------------------------------------------- |
 * | `GET /`            | the dashboard page (self-contained: its script and style come from here) |
 * | `GET /api/runs`    | `{ now, store, runs: RunSummary[], total, truncated }` (see maxRunsListed) |
 * | `GET /api/runs/ID` | `{ now, runs: RunView[], timeline: TimelineEvent[] }`; 404 when unknown |
 * | `GET /events`      | server-sent events `runs` (as /api/runs), with `?run=ID` also `run` and `timeline` |
 * | `GET /metrics`     | Prometheus exposition (prom-client)                                     |
 * | `GET /healthz`     | `{ status: "ok", ... }`                                                 |
 */

import { InvalidArgumentError } from "../errors.js";
import type { Logger } from "../log.js";
import type { KvEngine } from "../store/kv-engine.js";
import { type AuthThrottle, createAuthThrottle } from "../store/tcp/auth-throttle.js";
import type { ServerStats } from "../store/tcp/server.js";
import { createDashboardAuth, type DashboardAuth } from "./dashboard-auth.js";
import { DASHBOARD_CSS, DASHBOARD_HTML, DASHBOARD_JS } from "./dashboard-page.js";
import { inspectRun, MAX_RUNS_LISTED, type RunList, summarizeRuns } from "./inspector.js";
import { engineKeyReader, WIRE_KEY_PREFIX } from "./key-reader.js";
import { LiveUpdates } from "./live-updates.js";
import { createServerMetrics, type ServerMetrics } from "./metrics.js";
import { RendezvousMonitor } from "./monitor.js";
import { attachRunIndex } from "./run-index.js";
import type { RunRetentionStats } from "./run-retention.js";
import type { RunView } from "./run-view.js";
import { createSseStream, type SseStream, sseBounds } from "./sse.js";

/** Options of `createDashboardApp`. */
export interface DashboardAppOptions {
  /** The store's data (a `TCPStoreServer`'s `engine`). */
  engine: KvEngine;
  /** Prefix of user keys in `engine` (default "/", as on a TCP store server). */
  keyPrefix?: string;
  /** The store server's counters, for `/metrics` and `/healthz`. */
  stats?: () => ServerStats;
  /** Run retention's counters (run-retention.ts), for `/metrics`. */
  retention?: () => RunRetentionStats;
  /** Shown in the page header, e.g. the store's `host:port`. */
  storeAddress?: string;
  /** Most nodes per round shown in a run's detail (default 5000; more are counted in a note). */
  maxNodesShown?: number;
  /**
   * Most runs in the run list (/api/runs and the event stream; default 1000): the most recently changed
   * first, then by id. The answer says how many there are (`total`, `truncated`); any run's detail is
   * still at /api/runs/ID.
   */
  maxRunsListed?: number;
  /** Least time between two pushes to event-stream clients, ms (default 200). */
  pushIntervalMs?: number;
  /** Least time between two pushes when only keep-alive counters moved, ms (default 1000). */
  keepAlivePushIntervalMs?: number;
  /**
   * Most bytes queued for an event-stream client that does not keep up before it is dropped (default
   * 4 MiB); it reconnects and gets a fresh snapshot. See sse.ts.
   */
  maxEventBacklogBytes?: number;
  /** Longest an event-stream client may take nothing while events wait, ms (default 30 000). */
  maxEventStallMs?: number;
  /**
   * Most event streams open at once (default 64); `/events` answers 503 beyond, so that clients opening
   * streams cannot make the server hold a backlog (up to `maxEventBacklogBytes`) for each of thousands.
   */
  maxEventStreams?: number;
  /** Export Node's process metrics too (default true). */
  processMetrics?: boolean;
  /** Clock, epoch ms (default `Date.now`). */
  now?: () => number;
  /** Where unfollowable keys and dropped event-stream clients are reported (default: nowhere). */
  logger?: Logger;
  /**
   * A secret every request but `/healthz` must present, as `Authorization: Bearer TOKEN` or HTTP Basic
   * with the token as password (any user name; browsers ask for it), compared in constant time. Others
   * get 401. Default: none.
   */
  authToken?: string;
  /**
   * The per-address wrong-token throttle of `authToken` (default: one of the dashboard's own, with the
   * defaults of `createAuthThrottle`). `rdzv serve` passes its store's (`TCPStoreServer.authThrottle`):
   * one budget per address for both ports. A locked-out address gets 429 with `Retry-After`.
   */
  authThrottle?: AuthThrottle;
}

/** What the HTTP server knows of a request's client. */
export interface ClientInfo {
  /** The peer's IP address (`socket.remoteAddress`). */
  readonly address?: string | undefined;
}

/** The dashboard's routes and the state behind them. */
export interface DashboardApp {
  /**
   * Answers one request from `client` (its address is what the auth throttle counts; without one, every
   * such request shares one budget). Never rejects: failures become 500 answers.
   */
  fetch(request: Request, client?: ClientInfo): Promise<Response>;
  readonly monitor: RendezvousMonitor;
  readonly metrics: ServerMetrics;
  /** Stops watching the engine and ends every event stream. Idempotent. */
  close(): void;
}

const SOURCES = new Set<string>(["rdzv", "pytorch"]);
const DEFAULT_MAX_EVENT_STREAMS = 64;

/**
 * Creates the routes over `options.engine`; it starts watching key changes at once (for the timeline, and
 * the run index behind the run list: one pass over the keys the engine holds, e.g. restored from a data
 * directory, then each key created or deleted).
 * Throws `InvalidArgumentError` for event-stream bounds, `maxEventStreams` or a `maxRunsListed` that are
 * not positive integers.
 */
export function createDashboardApp(options: DashboardAppOptions): DashboardApp {
  const now = options.now ?? Date.now;
  const bounds = sseBounds({
    ...(options.maxEventBacklogBytes === undefined ? {} : { maxBacklogBytes: options.maxEventBacklogBytes }),
    ...(options.maxEventStallMs === undefined ? {} : { maxStallMs: options.maxEventStallMs }),
  });
  const maxStreams = options.maxEventStreams ?? DEFAULT_MAX_EVENT_STREAMS;
  if (!Number.isSafeInteger(maxStreams) || maxStreams < 1) {
    throw new InvalidArgumentError(`maxEventStreams must be a positive integer, got ${String(maxStreams)}`);
  }
  if (options.authToken !== undefined && options.authToken === "") {
    throw new InvalidArgumentError("authToken must not be empty");
  }
  const monitor = new RendezvousMonitor(
    options.logger === undefined ? { now } : { now, logger: options.logger },
  );
  const keyPrefix = options.keyPrefix ?? WIRE_KEY_PREFIX;
  const detach = monitor.attach(options.engine, keyPrefix);
  // Run lists from the index: 300,000 other keys made each one list them all (~100 ms).
  const runIndex = attachRunIndex(options.engine, keyPrefix);
  const metrics = createServerMetrics({
    monitor,
    ...(options.stats === undefined ? {} : { stats: options.stats }),
    ...(options.retention === undefined ? {} : { retention: options.retention }),
    ...(options.processMetrics === undefined ? {} : { processMetrics: options.processMetrics }),
  });
  const auth =
    options.authToken === undefined
      ? undefined
      : createDashboardAuth(
          options.authToken,
          options.authThrottle ?? createAuthThrottle(),
          metrics.dashboardAuth,
          options.logger,
        );
  const reader = engineKeyReader(options.engine, keyPrefix, { runKeys: runIndex.index });
  const inspect = { keepAlives: monitor, maxSlots: options.maxNodesShown ?? 5000 };
  const views = (runId: string, source?: RunView["source"]): Promise<RunView[]> =>
    inspectRun(reader, runId, source === undefined ? inspect : { ...inspect, source });
  // Counts and states from a few keys per run: leave markers come from the run index.
  const maxRuns = options.maxRunsListed ?? MAX_RUNS_LISTED;
  if (!Number.isSafeInteger(maxRuns) || maxRuns < 1) {
    throw new InvalidArgumentError(`maxRunsListed must be a positive integer, got ${String(maxRuns)}`);
  }
  const summaries = (): Promise<RunList> => summarizeRuns(reader, { maxRuns, prefer: monitor.recentRuns() });
  const live = new LiveUpdates({ now, summaries, views }, monitor, {
    ...(options.pushIntervalMs === undefined ? {} : { intervalMs: options.pushIntervalMs }),
    ...(options.keepAlivePushIntervalMs === undefined
      ? {}
      : { keepAliveIntervalMs: options.keepAlivePushIntervalMs }),
  });
  const streams = new Set<SseStream>();
  let closed = false;

  const events = (url: URL): Response => {
    const runId = url.searchParams.get("run") ?? undefined;
    const source = url.searchParams.get("source") ?? undefined;
    if (source !== undefined && !SOURCES.has(source))
      return problem(400, `source must be rdzv or pytorch, got ${source}`);
    if (streams.size >= maxStreams) {
      return problem(
        503,
        `too many event streams open (${maxStreams}, the most this dashboard serves): close another tab ` +
          "or client of this dashboard",
        { "retry-after": "5" },
      );
    }
    const watch = { ...(runId ? { runId } : {}), ...(source ? { source: source as RunView["source"] } : {}) };
    let unsubscribe: (() => void) | undefined;
    const stream = createSseStream({
      open(client) {
        void live
          .subscribe(client, watch, (id) => monitor.timeline(id))
          .then(
            (remove) => {
              unsubscribe = remove;
              if (!streams.has(stream)) remove(); // ended while subscribing
            },
            () => stream.end(),
          );
      },
      close(drop) {
        unsubscribe?.();
        streams.delete(stream);
        if (drop !== undefined) {
          options.logger?.warn("dashboard: dropped an event-stream client that does not keep up", {
            ...drop,
          });
        }
      },
      ...bounds,
    });
    streams.add(stream);
    return new Response(stream.body, {
      headers: {
        "content-type": "text/event-stream; charset=utf-8",
        ...COMMON_HEADERS,
        "x-accel-buffering": "no",
      },
    });
  };

  const route = async (request: Request): Promise<Response> => {
    const url = new URL(request.url, "http://localhost");
    if (request.method !== "GET" && request.method !== "HEAD") {
      return problem(405, `${request.method} is not allowed`, { allow: "GET, HEAD" });
    }
    const path = url.pathname;
    if (path === "/" || path === "/index.html")
      return text(DASHBOARD_HTML, "text/html; charset=utf-8", PAGE_HEADERS);
    if (path === "/dashboard.js") return text(DASHBOARD_JS, "text/javascript; charset=utf-8");
    if (path === "/dashboard.css") return text(DASHBOARD_CSS, "text/css; charset=utf-8");
    if (path === "/healthz") {
      const stats = options.stats?.();
      return json({
        status: "ok",
        ...(options.storeAddress ? { store: options.storeAddress } : {}),
        ...(stats ? { connections: stats.connections, keys: stats.keys } : {}),
      });
    }
    if (path === "/metrics") {
      const { body, contentType } = await metrics.scrape();
      return text(body, contentType);
    }
    if (path === "/api/runs")
      return json({ now: now(), store: options.storeAddress ?? null, ...(await summaries()) });
    if (path.startsWith("/api/runs/")) {
      let runId: string;
      try {
        runId = decodeURIComponent(path.slice("/api/runs/".length));
      } catch {
        return problem(400, "the run id is not valid percent-encoding");
      }
      const source = url.searchParams.get("source") ?? undefined;
      if (source !== undefined && !SOURCES.has(source))
        return problem(400, `source must be rdzv or pytorch, got ${source}`);
      if (runId === "") return problem(404, "no run id");
      const runs = await views(runId, source as RunView["source"] | undefined);
      if (runs.length === 0) return problem(404, `no run ${JSON.stringify(runId)} in this store`);
      return json({ now: now(), runs, timeline: monitor.timeline(runId) });
    }
    if (path === "/events") return events(url);
    return problem(404, `no route ${path}`);
  };

  return {
    monitor,
    metrics,
    async fetch(request, client) {
      if (closed) return problem(503, "the dashboard is closed");
      const refused = auth === undefined ? undefined : authProblem(auth.check.bind(auth), request, client);
      if (refused !== undefined) return refused;
      try {
        return await route(request);
      } catch (err) {
        return problem(500, err instanceof Error ? err.message : String(err));
      }
    },
    close() {
      if (closed) return;
      closed = true;
      detach();
      runIndex.detach();
      live.close();
      metrics.close();
      for (const stream of [...streams]) stream.end();
      streams.clear();
    },
  };
}

/**
 * The page only loads its own script and style, may not be framed (clickjacking) and sets no base URL or
 * form target.
 */
const PAGE_HEADERS = {
  "content-security-policy":
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; " +
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
  "x-frame-options": "DENY",
};

/**
 * On every answer: no content sniffing (a JSON error quoting a client's run id is never read as HTML),
 * no caching, and no referrer (run ids in the URL stay here).
 */
const COMMON_HEADERS = {
  "cache-control": "no-store",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
};

/** The answer refusing `request` (401 or 429), or undefined when it may be served. `/healthz` always may. */
function authProblem(
  check: DashboardAuth["check"],
  request: Request,
  client: ClientInfo | undefined,
): Response | undefined {
  if (new URL(request.url, "http://localhost").pathname === "/healthz") return undefined;
  const verdict = check(request, client?.address);
  if (verdict.kind === "ok") return undefined;
  if (verdict.kind === "throttled") {
    return problem(
      429,
      `too many wrong auth tokens came from this address: it is refused for ${verdict.retryAfterS} s more, ` +
        "whatever token it sends",
      { "retry-after": String(verdict.retryAfterS) },
    );
  }
  return problem(401, "this dashboard requires the store's auth token (Bearer, or as Basic password)", {
    "www-authenticate": 'Basic realm="rdzv dashboard", charset="UTF-8"',
  });
}

function text(body: string, type: string, headers: Record<string, string> = {}): Response {
  return new Response(body, { headers: { "content-type": type, ...COMMON_HEADERS, ...headers } });
}

function json(data: unknown, status = 200): Response {
  return new Response(JSON.stringify(data), {
    status,
    headers: { "content-type": "application/json; charset=utf-8", ...COMMON_HEADERS },
  });
}

function problem(status: number, message: string, headers: Record<string, string> = {}): Response {
  const response = json({ error: message }, status);
  for (const [k, v] of Object.entries(headers)) response.headers.set(k, v);
  return response;
}
