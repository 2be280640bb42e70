/**
 * Prometheus metrics of `rdzv serve` (prom-client, one registry per server): the store's counters, read
 * from `TCPStoreServer.stats()` at scrape time, run retention's (`--run-ttl`), also read then, and the rendezvous' events, counted as the monitor sees
 * them (rounds completed, nodes joined and lost, rendezvous latency).
 */

import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import { GoneReason } from "../rendezvous/round.js";
import type { ServerStats } from "../store/tcp/server.js";
import type { DashboardAuthCounters } from "./dashboard-auth.js";
import type { RendezvousMonitor } from "./monitor.js";
import type { RunRetentionStats } from "./run-retention.js";
import type { TimelineEvent } from "./run-view.js";

/** Options of `createServerMetrics`. */
export interface ServerMetricsOptions {
  /** The store's counters (`TCPStoreServer.stats`); without it only rendezvous metrics are exported. */
  stats?: () => ServerStats;
  /** Run retention's counters (run-retention.ts); without it no retention metrics are exported. */
  retention?: () => RunRetentionStats;
  /** The monitor whose events are counted. */
  monitor: RendezvousMonitor;
  /** Also export Node's process metrics (CPU, memory, event loop lag; default true). */
  processMetrics?: boolean;
}

/** A server's metrics. */
export interface ServerMetrics {
  readonly registry: Registry;
  /** The exposition text and its content type, for `/metrics`. */
  scrape(): Promise<{ body: string; contentType: string }>;
  /** Counters of the dashboard's token check (`rdzv_dashboard_auth_failures_total`, `..._throttled_total`). */
  readonly dashboardAuth: DashboardAuthCounters;
  /** Stops counting the monitor's events. */
  close(): void;
}

/** Latency buckets in seconds: a rendezvous takes from milliseconds (max nodes at once) to minutes. */
const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600];

/** Creates the registry; see the file comment for what it holds. */
export function createServerMetrics(options: ServerMetricsOptions): ServerMetrics {
  const registry = new Registry();
  const registers = [registry];
  if (options.processMetrics !== false) collectDefaultMetrics({ register: registry, prefix: "rdzv_" });
  const { stats } = options;
  if (stats !== undefined) storeMetrics(registry, stats);
  if (options.retention !== undefined) retentionMetrics(registry, options.retention);
  const joined = new Counter({
    name: "rdzv_rendezvous_nodes_joined_total",
    help: "Nodes that joined a round (tickets published, or new PyTorch participants)",
    registers,
  });
  const completed = new Counter({
    name: "rdzv_rendezvous_rounds_completed_total",
    help: "Rounds that completed",
    registers,
  });
  const lost = new Counter({
    name: "rdzv_rendezvous_nodes_lost_total",
    help: "Nodes found dead: connection dropped or keep-alives stopped",
    registers,
  });
  const left = new Counter({
    name: "rdzv_rendezvous_nodes_left_total",
    help: "Nodes that left a round (shutdown, join timeout, or re-joining the next round); reason: rejoined, left, dead or other",
    labelNames: ["reason"],
    registers,
  });
  const closed = new Counter({
    name: "rdzv_rendezvous_closed_total",
    help: "Rendezvous runs closed",
    registers,
  });
  const latency = new Histogram({
    name: "rdzv_rendezvous_latency_seconds",
    help: "From the first node joining a round to the round completing, as the server saw it",
    buckets: LATENCY_BUCKETS,
    registers,
  });
  const onEvent = (e: TimelineEvent): void => {
    if (e.type === "joined") joined.inc();
    else if (e.type === "nodeLost") lost.inc();
    else if (e.type === "left") left.inc({ reason: leftReason(e.reason) });
    else if (e.type === "closed") closed.inc();
    else if (e.type === "completed") {
      completed.inc();
      if (e.elapsedMs !== undefined) latency.observe(e.elapsedMs / 1000);
    }
  };
  options.monitor.on("event", onEvent);
  const authFailures = new Counter({
    name: "rdzv_dashboard_auth_failures_total",
    help: "Dashboard requests with a wrong auth token",
    registers,
  });
  const authThrottled = new Counter({
    name: "rdzv_dashboard_auth_throttled_total",
    help: "Dashboard requests refused unchecked (429): too many wrong tokens from their address",
    registers,
  });
  return {
    registry,
    dashboardAuth: { failed: () => authFailures.inc(), throttled: () => authThrottled.inc() },
    async scrape() {
      return { body: await registry.metrics(), contentType: registry.contentType };
    },
    close() {
      options.monitor.off("event", onEvent);
    },
  };
}

/** The reasons a member's gone marker holds (rendezvous/round.ts); other text a client wrote is "other". */
const GONE_REASONS = new Set<string>(Object.values(GoneReason));

/**
 * The `reason` label of a left node: one of the known reasons, else "other". The marker's text comes from
 * whoever writes the key, so taking it as the label would make one series per distinct text.
 */
function leftReason(text: string | undefined): string {
  if (text === undefined) return GoneReason.Left;
  return GONE_REASONS.has(text) ? text : "other";
}

/** Counters over run retention's `stats()`, read at scrape time. */
function retentionMetrics(registry: Registry, stats: () => RunRetentionStats): void {
  scrapedCounter(
    registry,
    "rdzv_runs_expired_total",
    "Rendezvous runs deleted by --run-ttl: none of their keys was written for the TTL",
    () => stats().runsExpired,
  );
  scrapedCounter(
    registry,
    "rdzv_run_keys_expired_total",
    "Keys deleted by --run-ttl: those of runs that expired, and keys that came back to an ended run",
    () => stats().keysDeleted,
  );
}

/** A counter that follows `read()` at scrape time (advancing by the delta since the last). */
function scrapedCounter(registry: Registry, name: string, help: string, read: () => number): void {
  let seen = 0;
  new Counter({
    name,
    help,
    registers: [registry],
    collect() {
      const v = read();
      if (v > seen) this.inc(v - seen);
      seen = v;
    },
  });
}

/** Gauges and counters over `stats()`, read at scrape time (counters advance by the delta since the last). */
function storeMetrics(registry: Registry, stats: () => ServerStats): void {
  const registers = [registry];
  let snapshot: ServerStats | undefined;
  let taken = 0;
  // One stats() per scrape, whichever metric collects first.
  const current = (): ServerStats => {
    const now = Date.now();
    if (snapshot === undefined || now - taken > 100) {
      snapshot = stats();
      taken = now;
    }
    return snapshot;
  };
  const gauge = (name: string, help: string, read: (s: ServerStats) => number): void => {
    new Gauge({
      name,
      help,
      registers,
      collect() {
        this.set(read(current()));
      },
    });
  };
  gauge("rdzv_store_connections", "Open store connections", (s) => s.connections);
  gauge(
    "rdzv_store_waiters",
    "Blocked callers: pending WAIT and BARRIER calls (and other engine waiters)",
    (s) => s.waiters,
  );
  gauge("rdzv_store_keys", "Keys in the store (queues excluded)", (s) => s.keys);
  const counter = (name: string, help: string, read: (s: ServerStats) => number): void =>
    scrapedCounter(registry, name, help, () => read(current()));
  counter("rdzv_store_connections_accepted_total", "Store connections accepted", (s) => s.connectionsTotal);
  counter("rdzv_store_protocol_errors_total", "Connections closed for bad input", (s) => s.protocolErrors);
  counter("rdzv_store_auth_failures_total", "AUTH requests with a wrong token", (s) => s.authFailures);
  counter(
    "rdzv_store_auth_throttled_total",
    "AUTH requests refused unchecked: too many wrong tokens from their address",
    (s) => s.authThrottled,
  );
  counter(
    "rdzv_store_per_address_rejected_total",
    "Connections closed at once: their address had maxConnectionsPerAddress open",
    (s) => s.perAddressRejected,
  );
  counter(
    "rdzv_store_rejected_connections_total",
    "Connections closed at once: maxConnections were open, or the server was closing",
    (s) => s.rejected,
  );
  counter("rdzv_store_reaped_connections_total", "Connections closed by a timeout", (s) => s.reaped);
  counter(
    "rdzv_store_full_refusals_total",
    "Writes refused because the store was full (--max-store-bytes); each closed its connection",
    (s) => s.storeFull,
  );
  gauge(
    "rdzv_store_bytes",
    "Bytes of the store's keys and values as --max-store-bytes counts them (0 without that limit)",
    (s) => s.storeBytes ?? 0,
  );
  const seenOps = new Map<string, number>();
  new Counter({
    name: "rdzv_store_operations_total",
    help: "Store requests handled, by command",
    labelNames: ["op"],
    registers,
    collect() {
      for (const [op, v] of Object.entries(current().opsByType)) {
        const before = seenOps.get(op) ?? 0;
        if (v > before) this.inc({ op }, v - before);
        seenOps.set(op, v);
      }
    },
  });
}
