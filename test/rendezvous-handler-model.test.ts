/**
 * Model test of the dynamic rendezvous handler, end to end (the pure state machine has a model test of its
 * own, test/rendezvous-model.test.ts): fast-check drives 2-6 real handlers over one in-memory store
 * through random schedules of joins, re-joins, crashes, graceful leaves, closing and the passage of time,
 * records every round each node reports, and checks PyTorch's guarantees on the record:
 *
 * - consistency: all reports of a round agree on the world size; ranks are unique and in 0..W-1; no node
 *   reports a round twice, or a round older than one it reported; min <= W <= max;
 * - exclusivity: a round completes only after every member of the previous round left or was declared
 *   dead (one live round at a time);
 * - only the errors a schedule can cause (timeouts, closed, graceful exit after shutdown, connection
 *   errors of crashed nodes);
 * - progress: once the schedule ends, the live nodes, acting as agents (re-rendezvous when their round
 *   ends), converge on one round holding exactly them, when min <= live <= max and nobody closed the run.
 */

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { setTimeout as delay } from "node:timers/promises";
import fc from "fast-check";
import { memoryCluster, Testbed, type TestNode } from "./helpers/rendezvous-suite.js";

const TIMING = {
  keepAliveIntervalMs: 25,
  keepAliveMaxAttempts: 4,
  lastCallTimeoutMs: 80,
  joinTimeoutMs: 30_000,
} as const;
const CONVERGE_MS = 8000;

type Status = "idle" | "joining" | "member" | "crashed" | "shut";

interface Report {
  readonly node: number;
  readonly round: number;
  readonly rank: number;
  readonly worldSize: number;
  readonly at: number;
}

interface NodeState {
  readonly index: number;
  readonly node: TestNode;
  status: Status;
  /** Round this node is a member of (status "member"). */
  round: number | undefined;
  /** Re-rendezvous whenever its round ends, as an agent does. */
  agent: boolean;
  pending: Promise<void> | undefined;
}

/** The system under test and everything it reported. */
class World {
  readonly nodes: NodeState[] = [];
  readonly reports: Report[] = [];
  /** When each member left its round: `${node}/${round}` -> time (re-join call, shutdown or crash). */
  readonly departures = new Map<string, number>();
  /** When some node declared a slot dead: `${round}/${slot}` -> earliest time. */
  readonly lost = new Map<string, number>();
  readonly problems: string[] = [];
  closedAt: number | undefined;
  readonly #bed: Testbed;

  constructor(
    bed: Testbed,
    readonly minNodes: number,
    readonly maxNodes: number,
  ) {
    this.#bed = bed;
  }

  static async create(count: number, minNodes: number, maxNodes: number, agents: boolean[]): Promise<World> {
    const world = new World(new Testbed(await memoryCluster(), "model"), minNodes, maxNodes);
    for (let index = 0; index < count; index++) {
      const node = await world.#bed.node({ ...TIMING, minNodes, maxNodes });
      node.handler.on("nodeLost", ({ round, slot }) => {
        const key = `${round}/${slot}`;
        if (!world.lost.has(key)) world.lost.set(key, Date.now());
      });
      // A node can report a round while it shuts down (its call completed first); it leaves that round
      // when the shutdown marks it gone, which `left` reports.
      node.handler.on("left", ({ round }) => {
        const key = `${index}/${round}`;
        if (!world.departures.has(key)) world.departures.set(key, Date.now());
      });
      world.nodes.push({
        index,
        node,
        status: "idle",
        round: undefined,
        agent: agents[index] ?? false,
        pending: undefined,
      });
    }
    return world;
  }

  get live(): NodeState[] {
    return this.nodes.filter((n) => n.status !== "crashed" && n.status !== "shut");
  }

  /** Starts nextRendezvous() on an idle node or a member (a member first leaves its round). */
  rendezvous(n: NodeState): void {
    if (n.status === "member") this.departures.set(`${n.index}/${n.round}`, Date.now());
    n.status = "joining";
    n.round = undefined;
    const run = n.node.next().then(
      (info) => {
        this.reports.push({
          node: n.index,
          round: info.round,
          rank: info.rank,
          worldSize: info.worldSize,
          at: Date.now(),
        });
        if (n.status !== "joining") return;
        n.status = "member";
        n.round = info.round;
        if (n.agent) this.#watch(n, info.round);
      },
      (err: unknown) => {
        this.#expectError(n, err);
        if (n.status === "joining") n.status = "idle";
      },
    );
    n.pending = run;
  }

  /** As an agent: waits for the end of `round`, then re-rendezvous. */
  #watch(n: NodeState, round: number): void {
    const loop = async (): Promise<void> => {
      while (n.status === "member" && n.round === round) {
        const ended = await n.node.handler.waitForRoundEnd({ timeoutMs: 200 }).catch(async () => {
          await delay(TIMING.keepAliveIntervalMs);
          return false;
        });
        if (ended && n.status === "member" && n.round === round) this.rendezvous(n);
      }
    };
    void loop();
  }

  async crash(n: NodeState): Promise<void> {
    if (n.status === "member") this.departures.set(`${n.index}/${n.round}`, Date.now());
    n.status = "crashed";
    await n.node.crash();
  }

  async leave(n: NodeState): Promise<void> {
    if (n.status === "member") this.departures.set(`${n.index}/${n.round}`, Date.now());
    n.status = "shut";
    const clean = await n.node.handler.shutdown();
    if (!clean) this.problems.push(`node ${n.index}: shutdown was not clean`);
  }

  async close(n: NodeState): Promise<void> {
    this.closedAt ??= Date.now();
    await n.node.handler.setClosed();
  }

  #expectError(n: NodeState, err: unknown): void {
    const code = (err as { code?: string }).code;
    const ok =
      (code === "RDZV_CLOSED" && this.closedAt !== undefined) ||
      (code === "RDZV_GRACEFUL_EXIT" && n.status === "shut") ||
      (code === "RDZV_CONNECTION" && n.status === "crashed");
    if (!ok) this.problems.push(`node ${n.index} (${n.status}): unexpected ${String(err)}`);
  }

  /** Makes every live node an agent and waits until they all are members of one round of exactly them. */
  async converge(): Promise<void> {
    const live = this.live;
    for (const n of live) {
      n.agent = true;
      if (n.status === "idle") this.rendezvous(n);
      else if (n.status === "member") this.#watch(n, n.round!);
    }
    const deadline = Date.now() + CONVERGE_MS;
    for (;;) {
      const rounds = new Set(live.map((n) => (n.status === "member" ? n.round : undefined)));
      const [round] = rounds;
      if (rounds.size === 1 && round !== undefined) {
        const worldSize = this.reports.find((r) => r.round === round)!.worldSize;
        if (worldSize === live.length) return;
      }
      if (Date.now() > deadline) {
        const state = live.map((n) => `${n.index}:${n.status}${n.round ?? ""}`).join(" ");
        const store = await this.#dumpStore();
        assert.fail(
          `the ${live.length} live nodes did not converge within ${CONVERGE_MS} ms: ${state}\n${store}`,
        );
      }
      await delay(20);
    }
  }

  /** The rendezvous keys and values, for failure messages. */
  async #dumpStore(): Promise<string> {
    const store = this.#bed.cluster.observer;
    const keys = (await store.listKeys()).filter((k) => !k.includes("/hb/")).sort();
    const values = await store.multiGet(keys);
    return keys.map((k, i) => `${k}=${Buffer.from(values[i]!).toString()}`).join("\n");
  }

  async dispose(): Promise<void> {
    for (const n of this.nodes) {
      n.agent = false;
      if (n.status !== "crashed") n.status = "shut";
    }
    await this.#bed.close();
    await Promise.all(this.nodes.map((n) => n.pending));
  }

  /** Checks the record; throws with every violation found. */
  check(): void {
    const problems = [...this.problems, ...this.#consistency(), ...this.#exclusivity()];
    assert.deepEqual(problems, [], problems.join("\n"));
  }

  *#consistency(): Generator<string> {
    const byRound = groupBy(this.reports, (r) => r.round);
    for (const [round, reports] of byRound) {
      const worldSize = reports[0]!.worldSize;
      if (reports.some((r) => r.worldSize !== worldSize))
        yield `round ${round}: members disagree on the world size`;
      if (worldSize < this.minNodes || worldSize > this.maxNodes) {
        yield `round ${round}: world size ${worldSize} outside ${this.minNodes}..${this.maxNodes}`;
      }
      if (reports.length > worldSize)
        yield `round ${round}: ${reports.length} members for world size ${worldSize}`;
      const ranks = new Set(reports.map((r) => r.rank));
      if (ranks.size !== reports.length) yield `round ${round}: a rank was given twice`;
      if (reports.some((r) => r.rank < 0 || r.rank >= worldSize))
        yield `round ${round}: a rank outside 0..W-1`;
      const nodes = new Set(reports.map((r) => r.node));
      if (nodes.size !== reports.length) yield `round ${round}: a node got two ranks`;
    }
    for (const [node, reports] of groupBy(this.reports, (r) => r.node)) {
      for (let i = 1; i < reports.length; i++) {
        if (reports[i]!.round <= reports[i - 1]!.round)
          yield `node ${node}: round ${reports[i]!.round} after ${reports[i - 1]!.round}`;
      }
    }
  }

  /** Every member of round r-1 left or was declared dead before anyone completed round r. */
  *#exclusivity(): Generator<string> {
    const byRound = groupBy(this.reports, (r) => r.round);
    for (const [round, reports] of byRound) {
      const previous = byRound.get(round - 1);
      if (previous === undefined) continue;
      const completedAt = Math.min(...reports.map((r) => r.at));
      for (const member of previous) {
        const left = this.departures.get(`${member.node}/${round - 1}`);
        const slot = this.nodes[member.node]!.node.joined.find((j) => j.round === round - 1)?.slot;
        const lost = this.lost.get(`${round - 1}/${slot}`);
        const goneAt = Math.min(left ?? Number.POSITIVE_INFINITY, lost ?? Number.POSITIVE_INFINITY);
        if (goneAt > completedAt) {
          yield `round ${round} completed at ${completedAt} while node ${member.node} of round ${round - 1} was still in it`;
        }
      }
    }
  }
}

function groupBy<T, K>(items: readonly T[], key: (item: T) => K): Map<K, T[]> {
  const map = new Map<K, T[]>();
  for (const item of items) {
    const k = key(item);
    const list = map.get(k);
    if (list === undefined) map.set(k, [item]);
    else list.push(item);
  }
  return map;
}

type Cmd = fc.AsyncCommand<World, World>;

/** A command on node `i` (modulo the node count), applicable in some states only. */
abstract class NodeCommand implements Cmd {
  constructor(readonly i: number) {}
  protected pick(w: World): NodeState {
    return w.nodes[this.i % w.nodes.length]!;
  }
  abstract check(w: Readonly<World>): boolean;
  abstract run(w: World): Promise<void>;
  abstract toString(): string;
}

class Join extends NodeCommand {
  check(w: Readonly<World>): boolean {
    const n = this.pick(w as World);
    return n.status === "idle" || n.status === "member";
  }
  async run(w: World): Promise<void> {
    const n = this.pick(w);
    if (n.status === "idle" || n.status === "member") w.rendezvous(n);
  }
  toString(): string {
    return `join(${this.i})`;
  }
}

class Crash extends NodeCommand {
  check(w: Readonly<World>): boolean {
    const n = this.pick(w as World);
    return n.status !== "crashed" && n.status !== "shut";
  }
  async run(w: World): Promise<void> {
    await w.crash(this.pick(w));
  }
  toString(): string {
    return `crash(${this.i})`;
  }
}

class Leave extends NodeCommand {
  check(w: Readonly<World>): boolean {
    const n = this.pick(w as World);
    return n.status !== "crashed" && n.status !== "shut";
  }
  async run(w: World): Promise<void> {
    await w.leave(this.pick(w));
  }
  toString(): string {
    return `leave(${this.i})`;
  }
}

class Close extends NodeCommand {
  check(w: Readonly<World>): boolean {
    const n = this.pick(w as World);
    return w.closedAt === undefined && n.status !== "crashed" && n.status !== "shut";
  }
  async run(w: World): Promise<void> {
    await w.close(this.pick(w));
  }
  toString(): string {
    return `close(${this.i})`;
  }
}

class Wait implements Cmd {
  constructor(readonly ms: number) {}
  check(): boolean {
    return true;
  }
  async run(): Promise<void> {
    await delay(this.ms);
  }
  toString(): string {
    return `wait(${this.ms})`;
  }
}

const node = fc.nat(5);
const commands = fc.commands(
  [
    fc.oneof(
      { weight: 24, arbitrary: node.map((i): Cmd => new Join(i)) },
      { weight: 18, arbitrary: fc.integer({ min: 0, max: 100 }).map((ms): Cmd => new Wait(ms)) },
      { weight: 3, arbitrary: node.map((i): Cmd => new Crash(i)) },
      { weight: 3, arbitrary: node.map((i): Cmd => new Leave(i)) },
      { weight: 1, arbitrary: node.map((i): Cmd => new Close(i)) },
    ),
  ],
  { maxCommands: 24, size: "+1" },
);

const scenario = fc
  .record({
    count: fc.integer({ min: 2, max: 6 }),
    min: fc.integer({ min: 1, max: 4 }),
    extra: fc.integer({ min: 0, max: 3 }),
    agents: fc.array(fc.boolean(), { minLength: 6, maxLength: 6 }),
  })
  .map(({ count, min, extra, agents }) => {
    const minNodes = Math.min(min, count);
    return { count, minNodes, maxNodes: minNodes + extra, agents };
  });

describe("dynamic rendezvous model (fast-check schedules over MemoryStore)", () => {
  it("keeps rounds consistent and exclusive, and converges once the schedule ends", async () => {
    await fc.assert(
      fc.asyncProperty(scenario, commands, async ({ count, minNodes, maxNodes, agents }, cmds) => {
        const world = await World.create(count, minNodes, maxNodes, agents);
        let live = 0;
        let converged = false;
        try {
          await fc.asyncModelRun(() => ({ model: world, real: world }), cmds);
          live = world.live.length;
          converged = world.closedAt === undefined && live >= minNodes && live <= maxNodes;
          if (converged) await world.converge();
          else await delay(TIMING.lastCallTimeoutMs * 2);
        } finally {
          await world.dispose();
        }
        world.check();
        if (process.env.RDZV_MODEL_DEBUG) {
          const rounds = new Set(world.reports.map((r) => r.round)).size;
          const summary = `n=${count} min=${minNodes} max=${maxNodes} reports=${world.reports.length} rounds=${rounds}`;
          console.log(`${summary} live=${live} converged=${converged} lost=${world.lost.size} ${cmds}`);
        }
      }),
      {
        numRuns: Number(process.env.RDZV_MODEL_RUNS ?? 25),
        endOnFailure: true,
        includeErrorInReport: true,
        ...(process.env.RDZV_MODEL_SEED === undefined
          ? {}
          : { seed: Number(process.env.RDZV_MODEL_SEED), path: process.env.RDZV_MODEL_PATH ?? "0" }),
      },
    );
  });
});
