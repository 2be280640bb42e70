/**
 * The dynamic rendezvous with every node in a Node process of its own (test/fixtures/rendezvous-node.ts),
 * on loopback, over rdzv's TCP store server (in this process, port 0): a round forms with consistent
 * ranks; a SIGKILLed node's survivors re-form without it; a late node waits and enters the next round;
 * `setClosed()` from one node is seen by all.
 */

import assert from "node:assert/strict";
import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import { once } from "node:events";
import { createInterface } from "node:readline";
import { afterEach, beforeEach, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { createTCPStoreServer, type TCPStoreServer } from "../src/store/tcp/server.js";

const FIXTURE = fileURLToPath(new URL("./fixtures/rendezvous-node.js", import.meta.url));
/** Generous: the machine running the suite may be busy (no timing is asserted). */
const EVENT_TIMEOUT_MS = 30_000;

interface NodeEvent {
  event: string;
  round?: number;
  rank?: number;
  worldSize?: number;
  code?: string;
  value?: boolean;
}

/** A node process and the events it printed. */
class NodeProc {
  readonly events: NodeEvent[] = [];
  readonly #waiters: (() => void)[] = [];
  stderr = "";

  constructor(readonly child: ChildProcessWithoutNullStreams) {
    createInterface({ input: child.stdout }).on("line", (line) => {
      this.events.push(JSON.parse(line) as NodeEvent);
      for (const w of this.#waiters.splice(0)) w();
    });
    child.stderr.on("data", (d: Buffer) => {
      this.stderr += d.toString();
    });
    // A node that dies fails the wait at once (with its stderr), not at the timeout.
    child.once("exit", () => {
      for (const w of this.#waiters.splice(0)) w();
    });
  }

  send(command: string): void {
    this.child.stdin.write(`${command}\n`);
  }

  /** The first event (from index `from` on) that `match` accepts. */
  async next(match: (e: NodeEvent) => boolean, what: string, from = 0): Promise<NodeEvent> {
    const deadline = Date.now() + EVENT_TIMEOUT_MS;
    for (;;) {
      const found = this.events.slice(from).find(match);
      if (found !== undefined) return found;
      const left = deadline - Date.now();
      if (left <= 0 || this.child.exitCode !== null || this.child.signalCode !== null) {
        assert.fail(
          `node ${this.child.pid}: no ${what} (events ${JSON.stringify(this.events)}) ${this.stderr}`,
        );
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  completed(round: number): Promise<NodeEvent> {
    return this.next((e) => e.event === "completed" && e.round === round, `completed round ${round}`);
  }
}

let server: TCPStoreServer;
let procs: NodeProc[] = [];
let run = 0;

function startNodes(count: number, minNodes: number, maxNodes: number, lastCallS = 0.3): NodeProc[] {
  const env = {
    ...process.env,
    RDZV_LAST_CALL: String(lastCallS),
    RDZV_ENDPOINT: `127.0.0.1:${server.port}`,
    RDZV_RUN_ID: `mp-${run}`,
    RDZV_MIN: String(minNodes),
    RDZV_MAX: String(maxNodes),
  };
  const started = Array.from(
    { length: count },
    () => new NodeProc(spawn(process.execPath, [FIXTURE], { env })),
  );
  procs.push(...started);
  return started;
}

/** Checks that `events` are one round's: same round and world size, ranks exactly 0..W-1. */
function assertRound(events: readonly NodeEvent[], round: number, worldSize: number): void {
  for (const e of events) {
    assert.equal(e.round, round);
    assert.equal(e.worldSize, worldSize);
  }
  const ranks = events.map((e) => e.rank!).sort((a, b) => a - b);
  assert.deepEqual(
    ranks,
    Array.from({ length: worldSize }, (_, i) => i),
  );
}

describe("dynamic rendezvous across processes (rdzv's TCP store on loopback)", () => {
  beforeEach(async () => {
    run++;
    server = await createTCPStoreServer({ host: "127.0.0.1", port: 0 });
  });

  afterEach(async () => {
    await Promise.all(
      procs.map(async (p) => {
        if (p.child.exitCode !== null || p.child.signalCode !== null) return;
        const exited = once(p.child, "exit");
        p.child.kill("SIGKILL");
        await exited;
      }),
    );
    procs = [];
    await server.close();
  });

  it("forms one round of N processes with ranks 0..N-1", async () => {
    const nodes = startNodes(4, 4, 4);
    const events = await Promise.all(nodes.map((n) => n.completed(0)));
    assertRound(events, 0, 4);
  });

  it("re-forms without a SIGKILLed process of a completed round", async () => {
    // min < 4, so a last call shorter than the processes' start-up spread on a busy machine would
    // complete round 0 without the slowest; 8 s covers that (round 0 completes at max = 4 at once).
    const nodes = startNodes(4, 2, 4, 8);
    const first = await Promise.all(nodes.map((n) => n.completed(0)));
    assertRound(first, 0, 4);
    const [victim, ...survivors] = nodes;
    victim!.child.kill("SIGKILL");
    const second = await Promise.all(survivors.map((n) => n.completed(1)));
    assertRound(second, 1, 3);
  });

  it("lets a late process wait and enter the next round", async () => {
    // Round 1 completes at max = 3 at once; the long last call only keeps a slow node from missing it.
    const early = startNodes(2, 2, 3, 8);
    assertRound(await Promise.all(early.map((n) => n.completed(0))), 0, 2);
    const [late] = startNodes(1, 2, 3, 8);
    const next = await Promise.all([...early, late!].map((n) => n.completed(1)));
    assertRound(next, 1, 3);
    assert.equal(
      late!.events.filter((e) => e.event === "completed")[0]!.round,
      1,
      "the late node skipped no round",
    );
  });

  it("makes setClosed() from one process seen by all", async () => {
    const nodes = startNodes(3, 3, 3);
    assertRound(await Promise.all(nodes.map((n) => n.completed(0))), 0, 3);
    nodes[0]!.send("close");
    await nodes[0]!.next((e) => e.event === "closed", "closed");
    for (const n of nodes) {
      const from = n.events.length;
      n.send("isClosed");
      const answer = await n.next((e) => e.event === "isClosed", "isClosed answer", from);
      assert.equal(answer.value, true);
      n.send("next");
      const error = await n.next((e) => e.event === "error", "an error from nextRendezvous", from);
      assert.equal(error.code, "RDZV_CLOSED");
    }
  });
});
