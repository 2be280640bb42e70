/**
 * Rendezvous nodes as child processes (test/fixtures/agent-node.ts: a c10d handler looping
 * nextRendezvous / waitForRoundEnd like an agent, 2 s keep-alives), for the dashboard, status and browser tests that need
 * a node they can SIGKILL. Every process is killed when its handle closes and when this process exits.
 */

import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";

const FIXTURE = fileURLToPath(new URL("../fixtures/agent-node.js", import.meta.url));
const live = new Set<ChildProcessWithoutNullStreams>();
process.on("exit", () => {
  for (const child of live) child.kill("SIGKILL");
});

/** One line the fixture printed. */
export type NodeEvent = { event: string } & Record<string, unknown>;

/** A running node process. */
export class NodeProc implements AsyncDisposable {
  readonly events: NodeEvent[] = [];
  readonly child: ChildProcessWithoutNullStreams;
  #stderr = "";
  #waiters: (() => void)[] = [];
  readonly exited: Promise<void>;

  constructor(endpoint: string, runId: string, minNodes: number, maxNodes: number) {
    this.child = spawn(process.execPath, [FIXTURE], {
      env: {
        ...process.env,
        RDZV_ENDPOINT: endpoint,
        RDZV_RUN_ID: runId,
        RDZV_MIN: String(minNodes),
        RDZV_MAX: String(maxNodes),
      },
    });
    live.add(this.child);
    this.exited = new Promise((resolve) => this.child.on("exit", () => resolve()));
    void this.exited.then(() => live.delete(this.child));
    let pending = "";
    this.child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
      pending += chunk;
      for (let nl = pending.indexOf("\n"); nl >= 0; nl = pending.indexOf("\n")) {
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        if (line.startsWith("{")) this.events.push(JSON.parse(line) as NodeEvent);
      }
      for (const wake of this.#waiters.splice(0)) wake();
    });
    this.child.stderr.setEncoding("utf8").on("data", (c: string) => {
      this.#stderr = (this.#stderr + c).slice(-4000);
    });
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  /** Resolves with the first event matching `match` (already printed or later); rejects after `timeoutMs`. */
  async waitFor(match: (e: NodeEvent) => boolean, timeoutMs = 60_000): Promise<NodeEvent> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.events.find(match);
      if (found !== undefined) return found;
      if (Date.now() > deadline || this.child.exitCode !== null) {
        throw new Error(
          `node ${this.pid}: no matching event in ${JSON.stringify(this.events)}\n${this.#stderr}`,
        );
      }
      await new Promise<void>((resolve) => {
        this.#waiters.push(resolve);
        setTimeout(resolve, 200).unref();
      });
    }
  }

  /** SIGKILLs it (no goodbye: its connection drops) and waits for the exit. */
  async kill(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill("SIGKILL");
    await this.exited;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.kill();
  }
}

/** Starts `count` nodes of run `runId` against the store at `endpoint`. */
export function startNodes(
  count: number,
  endpoint: string,
  runId: string,
  minNodes: number,
  maxNodes: number,
): NodeProc[] {
  return Array.from({ length: count }, () => new NodeProc(endpoint, runId, minNodes, maxNodes));
}
