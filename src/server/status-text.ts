/**
 * `rdzv status` as text: one block per run, readable at a glance (state, round, counts, then a table of
 * nodes with rank, slot, address, status and keep-alive), and the poll-based keep-alive clock that
 * `--watch` uses to turn counters into ages.
 */

import type { NodeView, RunView, TimelineEvent } from "./run-view.js";

/** Dead after this many missed keep-alives (PyTorch's default `keep_alive_max_attempt`). */
const MISSED_KEEP_ALIVES = 3;

/**
 * Remembers when each node's keep-alive counter was last seen to move between polls, so that a watching
 * `rdzv status` shows ages (to within one poll interval) where a single read only sees counters.
 */
export class PolledKeepAlives {
  readonly #seen = new Map<string, { count: number; at: number; intervalMs?: number }>();

  /** Records the counters of `views` read at `now`, and fills in their ages. Mutates `views`. */
  stamp(views: RunView[], now: number): void {
    const alive = new Set<string>();
    for (const view of views) {
      for (const node of [...view.participants, ...view.waiting]) {
        if (node.keepAlives === undefined || node.slot === undefined) continue;
        const key = `${view.runId}\0${view.round}\0${node.id}`;
        alive.add(key);
        const last = this.#seen.get(key);
        let entry = last;
        if (last === undefined) entry = { count: node.keepAlives, at: now };
        else if (last.count !== node.keepAlives) {
          // Moved since the last poll: it moved at most one poll ago, and about once per interval.
          const moves = Math.max(1, node.keepAlives - last.count);
          entry = { count: node.keepAlives, at: now, intervalMs: (now - last.at) / moves };
        }
        this.#seen.set(key, entry!);
        if (last === undefined) continue;
        node.lastKeepAliveAt = entry!.at;
        if (entry!.intervalMs !== undefined && node.status === "alive") {
          node.expiresAt = entry!.at + MISSED_KEEP_ALIVES * entry!.intervalMs;
        }
      }
    }
    for (const key of this.#seen.keys()) if (!alive.has(key)) this.#seen.delete(key);
  }
}

function secs(ms: number): string {
  const s = Math.abs(ms) / 1000;
  return `${s < 10 ? s.toFixed(1) : s.toFixed(0)} s`;
}

function keepAlive(n: NodeView, now: number): string {
  const parts: string[] = [];
  if (n.lastKeepAliveAt !== undefined) parts.push(`${secs(now - n.lastKeepAliveAt)} ago`);
  else if (n.keepAlives !== undefined) parts.push(`count ${n.keepAlives}`);
  if (n.expiresAt !== undefined) {
    const left = n.expiresAt - now;
    parts.push(left >= 0 ? `(dead in ${secs(left)})` : `(overdue ${secs(left)})`);
  }
  return parts.join(" ");
}

/** A table of `nodes`, columns padded to their widest cell. */
function table(nodes: NodeView[], now: number, withRank: boolean, indent: string): string[] {
  // PyTorch's nodes have no slots (tickets are rdzv's): no column for them.
  const withSlot = nodes.some((n) => n.slot !== undefined);
  const head = [
    ...(withRank ? ["RANK"] : []),
    ...(withSlot ? ["SLOT"] : []),
    "NODE",
    "ADDRESS",
    "PID",
    "STATUS",
    "KEEP-ALIVE",
  ];
  const rows = nodes.map((n) => [
    ...(withRank ? [n.rank === undefined ? "-" : String(n.rank)] : []),
    ...(withSlot ? [n.slot === undefined ? "-" : String(n.slot)] : []),
    n.id,
    n.addr || "-",
    n.pid === undefined ? "-" : String(n.pid),
    n.status,
    keepAlive(n, now) || "-",
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) =>
    `${indent}${cells.map((c, i) => c.padEnd(widths[i]!)).join("  ")}`.trimEnd();
  return [line(head), ...rows.map(line)];
}

/** "1 participant", "2 participants". */
function counted(n: number, noun: string): string {
  return `${n} ${noun}${n === 1 ? "" : "s"}`;
}

/** One run as text. */
export function formatRun(view: RunView, now: number, timeline: TimelineEvent[] = []): string {
  const counts = [counted(view.participants.length, "participant")];
  if (view.waiting.length > 0) counts.push(`${view.waiting.length} waiting`);
  if (view.redundant.length > 0) counts.push(counted(view.redundant.length, "spare"));
  if (view.capped === true) counts.push("capped: see the notes");
  const head = [`run ${view.runId} (${view.source})`, view.state, `round ${view.round}`, counts.join(", ")];
  if (view.coordinator !== undefined) head.push(`coordinator slot ${view.coordinator}`);
  if (view.lastCallEndsAt !== undefined) {
    const left = view.lastCallEndsAt - now;
    head.push(left >= 0 ? `last call ends in ${secs(left)}` : `last call ended ${secs(left)} ago`);
  }
  const lines = [head.join("  ")];
  if (view.participants.length > 0)
    lines.push(...table(view.participants, now, view.state === "complete", "  "));
  if (view.waiting.length > 0) lines.push("  waiting:", ...table(view.waiting, now, false, "    "));
  if (view.redundant.length > 0) lines.push("  spares:", ...table(view.redundant, now, false, "    "));
  for (const note of view.notes) lines.push(`  note: ${note}`);
  if (timeline.length > 0) {
    lines.push("  timeline:");
    for (const e of timeline.slice(-20)) lines.push(`    ${describeEvent(e)}`);
  }
  return `${lines.join("\n")}\n`;
}

/** One timeline event as a line. */
export function describeEvent(e: TimelineEvent): string {
  const time = new Date(e.at).toISOString().slice(11, 23);
  const who =
    e.node === undefined ? "" : ` ${e.node.id}${e.node.slot === undefined ? "" : ` (slot ${e.node.slot})`}`;
  let extra = "";
  if (e.type === "completed")
    extra = ` world size ${e.worldSize}${e.elapsedMs === undefined ? "" : ` after ${secs(e.elapsedMs)}`}`;
  else if (e.type === "left" && e.reason !== undefined && e.reason !== "left") extra = ` (${e.reason})`;
  return `${time}  round ${e.round < 0 ? "-" : e.round}  ${e.type}${who}${extra}`;
}

/** Every run as text, or a line saying there is none. */
export function formatRuns(
  views: RunView[],
  now: number,
  timelines: Record<string, TimelineEvent[]> = {},
): string {
  if (views.length === 0) return "no rendezvous runs in this store\n";
  return views.map((v) => formatRun(v, now, timelines[v.runId])).join("\n");
}
