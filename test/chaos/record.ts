/**
 * What a chaos soak records (test/chaos/driver.ts writes it, test/chaos/checker.ts judges it): every
 * node's reports, every fault the driver injected, and every settle phase. Times are epoch ms of this
 * machine's clock, which every process shares.
 */

/** One report line of a node (see test/chaos/node.ts). */
export interface NodeEvent {
  readonly ev: "start" | "joining" | "completed" | "members" | "ended" | "error" | "stall" | "log";
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
  /** Of a `log`: the handler's log level (the text is in `message`). */
  readonly level?: string;
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
  return entries(record).map((l) => l.text);
}

/**
 * The part of the timeline a failure is read from, short enough for the tail of a CI log: from the end
 * of the settle phase before the first failed one (so the failing burst's faults and everything after
 * them); for a violation naming rounds, from 5 s before the first of them completed to 5 s after the last
 * did; else the whole soak. At most `maxLines`: the first and the last half, with the count left out.
 */
export function failureExcerpt(record: SoakRecord, violations: readonly string[], maxLines = 150): string[] {
  let from = record.startedAt;
  let to = Number.POSITIVE_INFINITY;
  const failed = record.settles.findIndex(
    (s) => (s.expectRound && s.settledAt === undefined) || (s.notStarted?.length ?? 0) > 0,
  );
  const rounds = violations.flatMap((v) => [...v.matchAll(/round (\d+)/g)].map((m) => Number(m[1])));
  if (failed > 0) {
    const before = record.settles[failed - 1]!;
    from = before.settledAt ?? before.from;
  } else if (failed < 0 && rounds.length > 0) {
    const completions = record.events.filter((e) => e.ev === "completed" && rounds.includes(e.round!));
    if (completions.length > 0) {
      from = Math.min(...completions.map((e) => e.t)) - 5000;
      to = Math.max(...completions.map((e) => e.t)) + 5000;
    }
  }
  const lines = entries(record)
    .filter((l) => l.t >= from && l.t <= to)
    .map((l) => l.text);
  if (lines.length <= maxLines) return lines;
  const half = Math.floor(maxLines / 2);
  return [...lines.slice(0, half), `(${lines.length - 2 * half} lines left out)`, ...lines.slice(-half)];
}

function entries(record: SoakRecord): { t: number; text: string }[] {
  const t0 = record.startedAt;
  const at = (t: number) => String(t - t0).padStart(7);
  const lines: { t: number; text: string }[] = [
    ...record.events.map((e) => {
      const fields = [
        e.round === undefined ? "" : `round ${e.round}`,
        e.rank === undefined ? "" : `rank ${e.rank}/${e.worldSize}`,
        e.members === undefined ? "" : `members ${e.members.join(",")}`,
        e.code === undefined ? "" : `${e.code} ${e.message ?? ""}`,
        e.level === undefined ? "" : `${e.level}: ${e.message ?? ""}`,
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
  return lines.sort((a, b) => a.t - b.t).map((l) => ({ t: l.t, text: `${at(l.t)} ${l.text.trimEnd()}` }));
}
