/**
 * Node process of bench/rendezvous.ts: hosts `count` dynamic rendezvous handlers, each with a TCPStore
 * client of its own, and drives them on the parent's IPC messages (forked with an IPC channel):
 *
 * - `setup`: connect the stores (`connectConcurrency` at a time) and create the handlers; answers `ready`.
 * - `go`: every handler calls `nextRendezvous()` at once; answers `done` with the first and last completion
 *   times (`Date.now()`, comparable across processes on one machine), ranks and errors.
 * - `watch`: every handler waits for its round to end (`waitForRoundEnd`) and re-joins; answers `watching`
 *   once the waits are issued, then `done` when all re-joined.
 * - `exit`: exits at once (the server sees every connection drop).
 */

import type { DynamicRendezvousHandler } from "../src/rendezvous/dynamic-handler.js";
import { type BenchNode, benchBackend } from "./rendezvous-backends.js";

/** Messages from the parent. */
export type ToWorker =
  | {
      type: "setup";
      /** Name in BENCH_BACKENDS. */
      backend: string;
      endpoint: string;
      runId: string;
      count: number;
      minNodes: number;
      maxNodes: number;
      connectConcurrency: number;
    }
  | { type: "go" }
  | { type: "watch"; timeoutMs: number }
  | { type: "exit" };

/** One handler's place in a completed round. */
export interface Placement {
  round: number;
  rank: number;
  worldSize: number;
}

/** Messages to the parent. */
export type FromWorker =
  | { type: "ready"; connectMs: number }
  | { type: "watching" }
  | {
      type: "done";
      /** When the worker received the signal. */
      signalled: number;
      /** When `waitForRoundEnd` resolved, first and last (watch only). */
      endSeen?: { first: number; last: number };
      first: number;
      last: number;
      placements: Placement[];
      errors: string[];
      /** Connections the clients hold after the round: main ones plus open wait connections. */
      connections: number;
    };

let nodes: BenchNode[] = [];
let handlers: DynamicRendezvousHandler[] = [];

function send(message: FromWorker): void {
  process.send?.(message);
}

async function setup(m: Extract<ToWorker, { type: "setup" }>): Promise<void> {
  const started = Date.now();
  const backend = benchBackend(m.backend);
  nodes = new Array<BenchNode>(m.count);
  let next = 0;
  const lane = async (): Promise<void> => {
    for (let i = next++; i < m.count; i = next++) {
      nodes[i] = await backend.createNode(m.endpoint, m.runId, {
        minNodes: m.minNodes,
        maxNodes: m.maxNodes,
      });
    }
  };
  await Promise.all(Array.from({ length: Math.min(m.connectConcurrency, m.count) }, lane));
  handlers = nodes.map((n) => n.handler);
  send({ type: "ready", connectMs: Date.now() - started });
}

function connections(): number {
  return nodes.reduce((sum, n) => sum + n.connections(), 0);
}

/** Runs `step` for every handler at once and reports when the last one finished. */
async function runAll(
  signalled: number,
  step: (h: DynamicRendezvousHandler, ends: number[]) => Promise<Placement>,
): Promise<void> {
  const placements: Placement[] = [];
  const errors: string[] = [];
  const ends: number[] = [];
  let first = Number.POSITIVE_INFINITY;
  let last = 0;
  await Promise.all(
    handlers.map((h) =>
      step(h, ends).then(
        (p) => {
          const now = Date.now();
          first = Math.min(first, now);
          last = Math.max(last, now);
          placements.push(p);
        },
        (err: unknown) => {
          errors.push(err instanceof Error ? `${err.name}: ${err.message}` : String(err));
        },
      ),
    ),
  );
  const endSeen = ends.length === 0 ? {} : { endSeen: { first: Math.min(...ends), last: Math.max(...ends) } };
  send({ type: "done", signalled, ...endSeen, first, last, placements, errors, connections: connections() });
}

async function rendezvous(h: DynamicRendezvousHandler): Promise<Placement> {
  const info = await h.nextRendezvous();
  return { round: info.round, rank: info.rank, worldSize: info.worldSize };
}

process.on("message", (m: ToWorker) => {
  switch (m.type) {
    case "setup":
      void setup(m);
      break;
    case "go":
      void runAll(Date.now(), rendezvous);
      break;
    case "watch": {
      const signalled = Date.now();
      void runAll(signalled, async (h, ends) => {
        if (!(await h.waitForRoundEnd({ timeoutMs: m.timeoutMs }))) throw new Error("the round did not end");
        ends.push(Date.now());
        return rendezvous(h);
      });
      // The WAITs are on the wire within a few event-loop turns; give them time to park on the server.
      setTimeout(() => send({ type: "watching" }), 300);
      break;
    }
    case "exit":
      process.exit(0);
  }
});
process.on("disconnect", () => process.exit(0));
