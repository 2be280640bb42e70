/**
 * What a chaos soak records (test/chaos/driver.ts writes it, test/chaos/checker.ts judges it): every
 * node's reports, every fault the driver injected, and every settle phase. Times are epoch ms of this
 * machine's clock, which every process shares.
 */

/** One report line of a node (see test/chaos/node.ts). */
export interface NodeEvent {
  readonly ev: "start" | "joining" | "completed" | "members" | "ended" | "error" | "stall";
  /** The node incarnation: `n<slot>.<incarnation>`, unique over the soak. */
  readonly id: string;
  readonly t: number;
  readonly round?: number;
  readonly rank?: number;
  readonly worldSize?: number;
  readonly members?: readonly string[];
  readonly code?: string;
  readonly message?: string;
  readonly fatal?: boolean;
  readonly pid?: number;
  /** Of a `stall`: when the node's event loop last ran before it (`t` is when it ran again). */
  readonly from?: number;
}

/** Kinds of faults (and recoveries) the driver injects. */
export const FaultKind = {
  /** A node process is started (a new incarnation). */
  Spawn: "spawn",
  /** SIGKILL. */
  Kill: "kill",
  /** SIGSTOP: the process hangs, its connections stay open. */
  Stop: "stop",
  /** SIGCONT after a SIGSTOP. */
  Resume: "resume",
} as const;
export type FaultKind = (typeof FaultKind)[keyof typeof FaultKind];

/** One action of the driver on a node process. */
export interface FaultEvent {
  readonly kind: FaultKind;
  readonly id: string;
  readonly t: number;
}

/**
 * A settle phase: after a burst of faults (and their recoveries), the driver waits until the healthy
 * nodes (running, not stopped) form a round, when there are at least `minNodes` of them.
 */
export interface Settle {
  /** When every healthy node ran its rendezvous loop after the burst; the deadline counts from here. */
  readonly from: number;
  /** Healthy nodes that did not even start within the driver's start timeout (the soak stops). */
  readonly notStarted?: readonly string[];
  readonly healthy: readonly string[];
  /** Whether a round of min(|healthy|, maxNodes) healthy nodes must form. */
  readonly expectRound: boolean;
  /** When the healthy nodes were seen in one completed round (undefined: not within the deadline). */
  readonly settledAt?: number;
  /** That round. */
  readonly round?: number;
}

/** The soak's parameters, as recorded. */
export interface SoakParams {
  readonly backend: string;
  readonly seed: number;
  readonly durationMs: number;
  readonly nodes: number;
  readonly minNodes: number;
  readonly maxNodes: number;
  /** How long a round of the healthy nodes may take to form after a burst. */
  readonly settleDeadlineMs: number;
  /** Rendezvous config the nodes used (PyTorch key names). */
  readonly config: Readonly<Record<string, string | number | boolean>>;
}

/** Everything one soak recorded. */
export interface SoakRecord {
  readonly params: SoakParams;
  readonly startedAt: number;
  readonly endedAt: number;
  readonly events: readonly NodeEvent[];
  readonly faults: readonly FaultEvent[];
  readonly settles: readonly Settle[];
  /** Lines a node printed that are not reports (should be none), and the end of each node's stderr. */
  readonly noise: readonly string[];
}

/**
 * The record as one line per report, fault and settle phase, in time order, with times in ms from the
 * soak's start: what a failing run prints, so that a CI log alone shows what happened.
 */
export function timeline(record: SoakRecord): string[] {
  const t0 = record.startedAt;
  const at = (t: number) => String(t - t0).padStart(7);
  const lines: { t: number; text: string }[] = [
    ...record.events.map((e) => {
      const fields = [
        e.round === undefined ? "" : `round ${e.round}`,
        e.rank === undefined ? "" : `rank ${e.rank}/${e.worldSize}`,
        e.members === undefined ? "" : `members ${e.members.join(",")}`,
        e.code === undefined ? "" : `${e.code} ${e.message ?? ""}`,
        e.from === undefined ? "" : `ran nothing for ${e.t - e.from} ms`,
      ];
      return { t: e.t, text: `${e.id} ${e.ev} ${fields.filter((f) => f !== "").join(" ")}` };
    }),
    ...record.faults.map((f) => ({ t: f.t, text: `driver: ${f.kind} ${f.id}` })),
    ...record.settles.map((s) => ({
      t: s.from,
      text: `driver: settle, healthy ${s.healthy.join(",")}: ${
        s.settledAt === undefined ? "no round" : `round ${s.round} at ${s.settledAt - t0}`
      }`,
    })),
  ];
  return lines.sort((a, b) => a.t - b.t).map((l) => `${at(l.t)} ${l.text.trimEnd()}`);
}
