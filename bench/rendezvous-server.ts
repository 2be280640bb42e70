/**
 * Bench-only store server for bench/rendezvous.ts (rdzv has no server CLI the bench could drive yet):
 * rdzv's `createTCPStoreServer` on a free loopback port, in a process of its own.
 *
 *   node dist/bench/rendezvous-server.js [--max-connections 65536]
 *
 * Prints one JSON line `{ "port", "pid" }` once listening, then answers each "stats" line on stdin with a
 * JSON line: `server.stats()` plus `peakConnections` (the most open at once since the start or the last
 * "reset") and `problems` (warnings and errors logged); each "timeline" line with a JSON line of when
 * (`Date.now()`) each rendezvous round took its first and last ticket and got its outcome, read off the
 * engine's key changes (`rdzv/<run>/r<R>/...`, see src/backends/store-backend.ts). Exits when stdin closes (so `--cpu-prof` gets to write its profile).
 */

import { createInterface } from "node:readline";
import type { Logger } from "../src/log.js";
import { createTCPStoreServer } from "../src/store/tcp/server.js";
import { intFlag } from "./args.js";

/** What the server saw of one round of one run. */
export interface RoundTimeline {
  tickets: number;
  firstTicketAt: number;
  lastTicketAt: number;
  /** Descriptors published (`node/<slot>`), and when the last one was. */
  nodes: number;
  lastNodeAt: number;
  outcomeAt?: number;
  /** Slots marked gone, and when the first was. */
  gone: number;
  firstGoneAt?: number;
}

const ROUND_KEY = /^\/rdzv\/(.+\/r\d+)\/(tickets|outcome|node\/\d+|gone\/\d+)$/;

function observe(timeline: Map<string, RoundTimeline>, key: string, value: Uint8Array | undefined): void {
  const m = ROUND_KEY.exec(key);
  if (m === null) return;
  const now = Date.now();
  let t = timeline.get(m[1]!);
  if (t === undefined) {
    t = { tickets: 0, firstTicketAt: 0, lastTicketAt: 0, nodes: 0, lastNodeAt: 0, gone: 0 };
    timeline.set(m[1]!, t);
  }
  const what = m[2]!;
  if (what === "tickets") {
    // ADD 0 (a ticket count read) also rewrites the counter: only a higher value is a new ticket.
    const tickets = Number(Buffer.from(value ?? new Uint8Array()).toString());
    if (tickets <= t.tickets) return;
    if (t.tickets === 0) t.firstTicketAt = now;
    t.tickets = tickets;
    t.lastTicketAt = now;
  } else if (what === "outcome") {
    t.outcomeAt ??= now;
  } else if (what.startsWith("node/")) {
    t.nodes++;
    t.lastNodeAt = now;
  } else {
    if (t.gone++ === 0) t.firstGoneAt = now;
  }
}

async function main(): Promise<void> {
  // Warnings and errors (rejected connections, accept failures such as EMFILE) are counted, and the first
  // few printed to stderr.
  let problems = 0;
  const report = (message: string, fields?: Record<string, unknown>): void => {
    if (problems++ < 5)
      process.stderr.write(`rendezvous-server: ${message} ${JSON.stringify(fields ?? {})}\n`);
  };
  const logger: Logger = { debug() {}, info() {}, warn: report, error: report };
  const server = await createTCPStoreServer({
    host: "127.0.0.1",
    port: 0,
    limits: { maxConnections: intFlag("--max-connections", 65_536) },
    logger,
  });
  let open = 0;
  let peak = 0;
  const timeline = new Map<string, RoundTimeline>();
  server.engine.onChange((key, _old, value) => observe(timeline, key, value));
  server.on("connection", () => {
    open++;
    if (open > peak) peak = open;
  });
  server.on("disconnect", () => {
    open--;
  });
  process.stdout.write(`${JSON.stringify({ port: server.port, pid: process.pid })}\n`);
  for await (const line of createInterface({ input: process.stdin })) {
    if (line === "stats") {
      process.stdout.write(`${JSON.stringify({ ...server.stats(), peakConnections: peak, problems })}\n`);
    } else if (line === "timeline") {
      process.stdout.write(`${JSON.stringify(Object.fromEntries(timeline))}\n`);
    } else if (line === "reset") {
      peak = open;
      process.stdout.write(`${JSON.stringify({ ok: true })}\n`);
    }
  }
  await server.close();
  process.exit(0);
}

await main();
