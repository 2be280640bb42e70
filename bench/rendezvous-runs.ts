/**
 * One measured run each of bench/rendezvous.ts: rdzv's rendezvous of N nodes from a common start, rdzv's
 * recovery after a node is killed, and PyTorch's own rendezvous of N nodes.
 */

import { type BenchService, benchBackend } from "./rendezvous-backends.js";
import {
  forkWorker,
  type NodeWorker,
  type ServerStatsLine,
  spawnPy,
  tcpCounters,
} from "./rendezvous-procs.js";
import type { FromWorker, Placement } from "./rendezvous-worker.js";

const HOST = "127.0.0.1";
const SETUP_TIMEOUT_MS = 180_000;

type Done = Extract<FromWorker, { type: "done" }>;

/** Splits `n` into `parts` near-equal counts. */
export function split(n: number, parts: number): number[] {
  const p = Math.max(1, Math.min(parts, n));
  return Array.from({ length: p }, (_, i) => Math.floor(n / p) + (i < n % p ? 1 : 0));
}

/** Checks that `placements` are exactly ranks 0..worldSize-1 of one round; returns a problem or undefined. */
function checkPlacements(
  placements: readonly Placement[],
  worldSize: number,
  round: number,
): string | undefined {
  if (placements.length !== worldSize) return `${placements.length} of ${worldSize} nodes completed`;
  const ranks = new Set<number>();
  for (const p of placements) {
    if (p.worldSize !== worldSize || p.round !== round)
      return `a node got round ${p.round} of size ${p.worldSize}`;
    ranks.add(p.rank);
  }
  if (ranks.size !== worldSize || Math.max(...ranks) !== worldSize - 1) return "ranks are not 0..N-1";
  return undefined;
}

function summarize(dones: readonly Done[], t0: number) {
  const placements = dones.flatMap((d) => d.placements);
  const errors = dones.flatMap((d) => d.errors);
  return {
    placements,
    errors,
    elapsedMs: Math.max(...dones.map((d) => d.last)) - t0,
    firstMs: Math.min(...dones.map((d) => d.first)) - t0,
    signalSkewMs: Math.max(...dones.map((d) => d.signalled)) - t0,
    clientConnections: dones.reduce((s, d) => s + d.connections, 0),
  };
}

/** Result of one rdzv scale run. */
export interface OurRun {
  n: number;
  /** Common start to the last node's return from `nextRendezvous()`. */
  elapsedMs: number;
  /** Common start to the first node's return. */
  firstMs: number;
  /** Slowest worker's time to connect its stores (not measured in `elapsedMs`). */
  connectMs: number;
  /** Most connections the server had open at once. */
  peakConnections: number;
  /** Connections the clients held after the round. */
  clientConnections: number;
  /** Start to the last ticket taken / to the outcome written, as the server saw them. */
  lastTicketMs: number;
  decidedMs: number;
  /** Store requests the server handled during the round, per node. */
  requestsPerNode: number;
  /** Growth of this network namespace's ListenOverflows and TCPSynRetrans counters during the round. */
  listenOverflows: number;
  synRetrans: number;
  server: ServerStatsLine;
  problem?: string;
}

const totalOps = (s: ServerStatsLine): number => Object.values(s.opsByType).reduce((a, b) => a + b, 0);

/** Server-side view of a run: request count, round timeline, TCP counter growth since `before`. */
async function observeServer(
  server: BenchService,
  round: string,
  t0: number,
  before: Record<string, number>,
  opsBefore: number,
) {
  const after = tcpCounters();
  const stats = await server.stats();
  const t = (await server.timeline())[round];
  return {
    stats,
    ops: totalOps(stats) - opsBefore,
    lastTicketMs: t === undefined ? Number.NaN : t.lastTicketAt - t0,
    decidedMs: t?.outcomeAt === undefined ? Number.NaN : t.outcomeAt - t0,
    firstGoneMs: t?.firstGoneAt === undefined ? Number.NaN : t.firstGoneAt - t0,
    listenOverflows: (after.ListenOverflows ?? 0) - (before.ListenOverflows ?? 0),
    synRetrans: (after.TCPSynRetrans ?? 0) - (before.TCPSynRetrans ?? 0),
  };
}

export interface RunOptions {
  /** Name in BENCH_BACKENDS (bench/rendezvous-backends.ts). */
  backend: string;
  workers: number;
  cpuProfDir: string | undefined;
  timeoutMs: number;
  connectConcurrency: number;
}

async function startWorkers(
  counts: readonly number[],
  endpoint: string,
  runId: string,
  settings: { minNodes: number; maxNodes: number },
  opts: RunOptions,
): Promise<{ workers: NodeWorker[]; connectMs: number }> {
  const workers = counts.map(() => forkWorker(opts.cpuProfDir));
  workers.forEach((w, i) => {
    w.send({
      type: "setup",
      backend: opts.backend,
      endpoint,
      runId,
      count: counts[i]!,
      ...settings,
      connectConcurrency: opts.connectConcurrency,
    });
  });
  const ready = await Promise.all(workers.map((w) => w.next("ready", SETUP_TIMEOUT_MS)));
  return { workers, connectMs: Math.max(...ready.map((r) => r.connectMs)) };
}

/** N nodes with min = max = N: from the common start signal until every node returned. */
export async function runOurs(n: number, rep: number, opts: RunOptions): Promise<OurRun> {
  const server = await benchBackend(opts.backend).startService(opts.cpuProfDir);
  let workers: NodeWorker[] = [];
  try {
    const runId = `scale-${n}-${rep}`;
    const settings = { minNodes: n, maxNodes: n };
    const started = await startWorkers(split(n, opts.workers), server.endpoint, runId, settings, opts);
    workers = started.workers;
    const opsBefore = totalOps(await server.stats());
    const before = tcpCounters();
    const t0 = Date.now();
    for (const w of workers) w.send({ type: "go" });
    let dones: Done[] | undefined;
    let failure: string | undefined;
    try {
      dones = await Promise.all(workers.map((w) => w.next("done", opts.timeoutMs)));
    } catch (err) {
      failure = String(err);
    }
    const seen = await observeServer(server, `${runId}/r0`, t0, before, opsBefore);
    const s = dones === undefined ? undefined : summarize(dones, t0);
    let problem = failure;
    if (s !== undefined) {
      problem =
        s.errors.length > 0
          ? `${s.errors.length} errors, first: ${s.errors[0]}`
          : checkPlacements(s.placements, n, 0);
    }
    return {
      n,
      elapsedMs: s?.elapsedMs ?? Number.NaN,
      firstMs: s?.firstMs ?? Number.NaN,
      connectMs: started.connectMs,
      peakConnections: seen.stats.peakConnections,
      clientConnections: s?.clientConnections ?? Number.NaN,
      lastTicketMs: seen.lastTicketMs,
      decidedMs: seen.decidedMs,
      requestsPerNode: seen.ops / n,
      listenOverflows: seen.listenOverflows,
      synRetrans: seen.synRetrans,
      server: seen.stats,
      ...(problem === undefined ? {} : { problem }),
    };
  } finally {
    await Promise.all(workers.map((w) => w.close()));
    await server.close();
  }
}

/** Result of one recovery run. */
export interface RecoveryRun {
  /** Kill to the last survivor's return from the next `nextRendezvous()`. */
  elapsedMs: number;
  /** Kill to the last survivor's `waitForRoundEnd()` resolving. */
  detectMs: number;
  /** Kill to the server marking the dead node gone (its connection dropped). */
  goneMs: number;
  /** Kill to round 1's outcome. */
  decidedMs: number;
  /** The first round (all nodes, completes at max). */
  firstRoundMs: number;
  problem?: string;
}

/**
 * `nodes` nodes (min `minNodes`, max `nodes`, other settings default) complete a round; one of them, alone
 * in its process, is SIGKILLed; the survivors learn it through `waitForRoundEnd()` and re-join.
 */
export async function runRecovery(
  nodes: number,
  minNodes: number,
  rep: number,
  opts: RunOptions,
): Promise<RecoveryRun> {
  const server = await benchBackend(opts.backend).startService(opts.cpuProfDir);
  const all: NodeWorker[] = [];
  const nan = Number.NaN;
  try {
    const settings = { minNodes, maxNodes: nodes };
    const runId = `recovery-${rep}`;
    const victim = await startWorkers([1], server.endpoint, runId, settings, {
      ...opts,
      cpuProfDir: undefined,
    });
    all.push(...victim.workers);
    const counts = split(nodes - 1, opts.workers);
    const survivors = (await startWorkers(counts, server.endpoint, runId, settings, opts)).workers;
    all.push(...survivors);
    const t0 = Date.now();
    for (const w of all) w.send({ type: "go" });
    const first = summarize(await Promise.all(all.map((w) => w.next("done", opts.timeoutMs))), t0);
    const firstProblem = first.errors[0] ?? checkPlacements(first.placements, nodes, 0);
    if (firstProblem !== undefined) {
      const problem = `first round: ${firstProblem}`;
      return {
        elapsedMs: nan,
        detectMs: nan,
        goneMs: nan,
        decidedMs: nan,
        firstRoundMs: first.elapsedMs,
        problem,
      };
    }
    for (const w of survivors) w.send({ type: "watch", timeoutMs: 60_000 });
    await Promise.all(survivors.map((w) => w.next("watching", 10_000)));
    const tKill = Date.now();
    victim.workers[0]!.kill();
    const dones = await Promise.all(survivors.map((w) => w.next("done", opts.timeoutMs)));
    const s = summarize(dones, tKill);
    const detectMs = Math.max(...dones.map((d) => d.endSeen?.last ?? nan)) - tKill;
    const r0 = await observeServer(server, `${runId}/r0`, tKill, {}, 0);
    const r1 = await observeServer(server, `${runId}/r1`, tKill, {}, 0);
    const problem =
      s.errors.length > 0
        ? `${s.errors.length} errors, first: ${s.errors[0]}`
        : checkPlacements(s.placements, nodes - 1, 1);
    return {
      elapsedMs: s.elapsedMs,
      detectMs,
      goneMs: r0.firstGoneMs,
      decidedMs: r1.decidedMs,
      firstRoundMs: first.elapsedMs,
      ...(problem === undefined ? {} : { problem }),
    };
  } finally {
    await Promise.all(all.map((w) => w.close()));
    await server.close();
  }
}

/** Result of one PyTorch run; `elapsedMs` undefined when it timed out. */
export interface TorchRun {
  n: number;
  elapsedMs: number | undefined;
  completed: number;
  problem?: string;
}

/** PyTorch's handler over PyTorch's TCPStore: N nodes as threads of `procs` processes. */
export async function runTorch(
  python: string,
  n: number,
  rep: number,
  procs: number,
  timeoutS: number,
): Promise<TorchRun> {
  const master = spawnPy(python, ["master"]);
  const nodes: ReturnType<typeof spawnPy>[] = [];
  try {
    const { port } = (await master.next(60_000, "torch master")) as { port: number };
    for (const count of split(n, procs)) {
      nodes.push(
        spawnPy(python, [
          "nodes",
          HOST,
          String(port),
          `torch-${n}-${rep}`,
          String(n),
          String(count),
          String(timeoutS),
        ]),
      );
    }
    await Promise.all(nodes.map((p) => p.next(SETUP_TIMEOUT_MS, "torch nodes ready")));
    const t0 = Date.now();
    for (const p of nodes) p.writeLine("go");
    const dones = (await Promise.all(
      nodes.map((p) => p.next(timeoutS * 1000 + 30_000, "torch nodes done")),
    )) as {
      last: number | null;
      ranks: number[];
      errors: string[];
      unfinished: number;
    }[];
    const completed = dones.reduce((s, d) => s + d.ranks.length, 0);
    const errors = dones.flatMap((d) => d.errors);
    if (completed < n) {
      const problem = errors.length > 0 ? `errors: ${errors[0]}` : `timed out: ${completed} of ${n} returned`;
      return { n, elapsedMs: undefined, completed, problem };
    }
    const ranks = new Set(dones.flatMap((d) => d.ranks));
    const elapsedMs = Math.max(...dones.map((d) => d.last ?? Number.NaN)) - t0;
    return { n, elapsedMs, completed, ...(ranks.size === n ? {} : { problem: "ranks are not 0..N-1" }) };
  } catch (err) {
    // A PyTorch set-up that never gets ready (too many threads and clients) is a result, not a crash.
    return {
      n,
      elapsedMs: undefined,
      completed: 0,
      problem: String(err instanceof Error ? err.message : err),
    };
  } finally {
    await Promise.all([master.kill(), ...nodes.map((p) => p.kill())]);
  }
}
