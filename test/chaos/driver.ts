/**
 * The chaos soak's driver: starts a backend and `nodes` node processes (test/chaos/node.ts), then until
 * the time is up alternates a burst of random faults (SIGKILL, SIGKILL and restart, SIGSTOP for a while
 * then SIGCONT, start of a node that was killed) with a settle phase, in which it waits until the healthy
 * nodes form a round. Randomness comes from one seed, so a failing soak's fault schedule can be replayed
 * (timing still varies). Returns the `SoakRecord` for the checker.
 */

import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { setTimeout as delay } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import type { ChaosBackend } from "./backends.js";
import { FaultKind, type NodeEvent, type Settle, type SoakParams, type SoakRecord } from "./record.js";

const NODE_SCRIPT = fileURLToPath(new URL("./node.js", import.meta.url));
/** How long a node process may take to start (to report `joining`) before the soak gives up. */
const START_TIMEOUT_MS = 120_000;

/** A small seeded PRNG (mulberry32): the same seed gives the same fault schedule. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Options of `runSoak`. */
export interface SoakOptions extends Omit<SoakParams, "backend" | "config"> {
  readonly backend: ChaosBackend;
  /** Timing config of the nodes' rendezvous (PyTorch keys); see `DEFAULT_CHAOS_CONFIG`. */
  readonly config?: Readonly<Record<string, number>>;
  /** Progress lines (one per burst). */
  readonly log?: (line: string) => void;
}

/**
 * Rendezvous timing of the soak's nodes: keep-alives every 0.5 s, dead after 4 missed (2 s), which a
 * busy 2-core machine never misses by accident; a short last call; a join timeout above the settle deadline.
 */
export const DEFAULT_CHAOS_CONFIG = {
  keep_alive_interval: 0.5,
  keep_alive_max_attempt: 4,
  last_call_timeout: 0.3,
  join_timeout: 60,
} as const;

/** `restarting`: killed, a new incarnation is about to start (no other fault may pick it). */
type SlotState = "down" | "running" | "stopped" | "restarting";

interface Slot {
  readonly index: number;
  incarnation: number;
  state: SlotState;
  id: string;
  child: ChildProcessWithoutNullStreams | undefined;
}

/** Runs one soak; always stops every process it started. */
export async function runSoak(options: SoakOptions): Promise<SoakRecord> {
  const random = seededRandom(options.seed);
  const config = { ...DEFAULT_CHAOS_CONFIG, ...options.config };
  const events: NodeEvent[] = [];
  const faults: { kind: FaultKind; id: string; t: number }[] = [];
  const settles: Settle[] = [];
  const noise: string[] = [];
  const startedAt = Date.now();
  const base = await options.backend.start();
  const nodeParams = JSON.stringify({
    ...base,
    runId: `chaos-${options.seed}`,
    minNodes: options.minNodes,
    maxNodes: options.maxNodes,
    localAddr: "127.0.0.1",
    config: { ...base.config, ...config },
  });
  const slots: Slot[] = Array.from({ length: options.nodes }, (_, index) => ({
    index,
    incarnation: 0,
    state: "down" as SlotState,
    id: "",
    child: undefined,
  }));
  const fault = (kind: FaultKind, slot: Slot): void => {
    faults.push({ kind, id: slot.id, t: Date.now() });
  };

  const spawnNode = (slot: Slot): void => {
    slot.incarnation++;
    slot.id = `n${slot.index}.${slot.incarnation}`;
    const child = spawn(process.execPath, [NODE_SCRIPT], {
      env: { ...process.env, CHAOS_ID: slot.id, CHAOS_PARAMS: nodeParams },
      stdio: ["pipe", "pipe", "pipe"],
    });
    const id = slot.id;
    createInterface({ input: child.stdout }).on("line", (line) => {
      try {
        events.push(JSON.parse(line) as NodeEvent);
      } catch {
        noise.push(`${id} stdout: ${line.slice(0, 300)}`);
      }
    });
    let stderr = "";
    child.stderr.setEncoding("utf8").on("data", (c: string) => (stderr = (stderr + c).slice(-2000)));
    child.on("exit", (code, signal) => {
      if (signal === "SIGKILL") return;
      noise.push(`${id} exited ${code ?? signal}: ${stderr}`);
      if (slot.child === child) {
        slot.child = undefined;
        slot.state = "down";
        fault(FaultKind.Kill, slot); // not injected, but it is gone all the same
      }
    });
    slot.child = child;
    slot.state = "running";
    fault(FaultKind.Spawn, slot);
  };

  const kill = (slot: Slot): void => {
    slot.child?.kill("SIGKILL");
    slot.child = undefined;
    slot.state = "down";
    fault(FaultKind.Kill, slot);
  };

  /** One random fault; resolves when its recovery (restart, SIGCONT) is done. */
  const injectOne = async (): Promise<void> => {
    const running = slots.filter((s) => s.state === "running");
    const down = slots.filter((s) => s.state === "down");
    const pick = <T>(list: readonly T[]): T => list[Math.floor(random() * list.length)]!;
    const roll = random();
    if (down.length > 0 && (running.length <= options.minNodes || roll < 0.3)) {
      spawnNode(pick(down));
      return;
    }
    if (running.length === 0) return;
    const slot = pick(running);
    if (roll < 0.5) {
      kill(slot); // stays down until a later burst starts it
    } else if (roll < 0.75) {
      kill(slot);
      slot.state = "restarting";
      await delay(Math.floor(random() * 1500));
      spawnNode(slot);
    } else {
      slot.child?.kill("SIGSTOP");
      slot.state = "stopped";
      fault(FaultKind.Stop, slot);
      await delay(500 + Math.floor(random() * 5500));
      if (slot.state === "stopped") {
        slot.child?.kill("SIGCONT");
        slot.state = "running";
        fault(FaultKind.Resume, slot);
      }
    }
  };

  const settle = async (): Promise<Settle> => {
    const healthy = slots.filter((s) => s.state === "running").map((s) => s.id);
    // The deadline counts from when every healthy node runs its rendezvous loop: how long a process
    // takes to start on a busy machine is not the rendezvous's business.
    const startBy = Date.now() + START_TIMEOUT_MS;
    let notStarted = healthy;
    while (notStarted.length > 0 && Date.now() < startBy) {
      await delay(50);
      const joining = new Set(events.filter((e) => e.ev === "joining").map((e) => e.id));
      notStarted = notStarted.filter((id) => !joining.has(id));
    }
    const from = Date.now();
    const expectRound = healthy.length >= options.minNodes;
    if (notStarted.length > 0) return { from, healthy, expectRound, notStarted };
    if (!expectRound) {
      await delay(1000);
      return { from, healthy, expectRound };
    }
    const size = Math.min(healthy.length, options.maxNodes);
    while (Date.now() - from < options.settleDeadlineMs) {
      const round = formedRound(events, healthy, size);
      if (round !== undefined) return { from, healthy, expectRound, settledAt: Date.now(), round };
      await delay(50);
    }
    return { from, healthy, expectRound };
  };

  try {
    for (const slot of slots) spawnNode(slot);
    settles.push(await settle());
    let burst = 0;
    while (Date.now() - startedAt < options.durationMs) {
      burst++;
      const count = 1 + Math.floor(random() * 3);
      const pending: Promise<void>[] = [];
      for (let i = 0; i < count; i++) {
        pending.push(injectOne());
        await delay(Math.floor(random() * 800));
      }
      await Promise.all(pending);
      const s = await settle();
      settles.push(s);
      const took = s.settledAt === undefined ? "no round" : `round ${s.round} in ${s.settledAt - s.from} ms`;
      options.log?.(`burst ${burst}: ${count} fault(s), ${s.healthy.length} healthy -> ${took}`);
      // The checker reports it; stop early.
      if (s.settledAt === undefined && (s.expectRound || s.notStarted !== undefined)) break;
      await delay(Math.floor(random() * 1000));
    }
  } finally {
    for (const slot of slots) if (slot.child !== undefined) slot.child.kill("SIGKILL");
    await delay(200); // let the last lines of stdout arrive
    await options.backend.stop();
  }
  const { backend, log, ...rest } = options;
  return {
    params: { ...rest, backend: backend.name, config },
    startedAt,
    endedAt: Date.now(),
    events,
    faults,
    settles,
    noise,
  };
}

/**
 * The round the healthy nodes formed, if they did: `size` of them report the same round of world size
 * `size` as their latest event (nothing after it), so no node outside `healthy` can be in it. Reports
 * that leave a node where it was do not count as later events: members lists, stalls, log lines, and
 * errors inside a round (a failed exchange or a failed wait for the round's end, which the node retries
 * as a member).
 */
export function formedRound(
  events: readonly NodeEvent[],
  healthy: readonly string[],
  size: number,
): number | undefined {
  const latest = new Map<string, NodeEvent>();
  const wanted = new Set(healthy);
  for (const e of events) {
    if (wanted.has(e.id) && movesNode(e)) latest.set(e.id, e);
  }
  const byRound = new Map<number, number>();
  for (const e of latest.values()) {
    if (e.ev === "completed" && e.worldSize === size) byRound.set(e.round!, (byRound.get(e.round!) ?? 0) + 1);
  }
  for (const [round, n] of byRound) if (n === size) return round;
  return undefined;
}

/** Whether a report says the node went somewhere: it set out to join, completed, left, or failed to join. */
function movesNode(e: NodeEvent): boolean {
  switch (e.ev) {
    case "members":
    case "stall":
    case "log":
      return false;
    case "error":
      return e.round === undefined;
    default:
      return true;
  }
}
