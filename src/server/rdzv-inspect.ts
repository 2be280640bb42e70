/**
 * Reads one run of rdzv's dynamic rendezvous out of its keys (layout: src/backends/store-backend.ts) into
 * a `RunView`: the open round and the last decided one, their tickets, descriptors, keep-alive counters
 * and leave markers. Read-only: it never writes (no `add(open, 0)` as the backend does), so inspecting a
 * store changes nothing in it.
 */

import type { NodeDescriptor } from "../rendezvous/backend.js";
import { decodeOutcome, type RoundOutcome } from "../rendezvous/round.js";
import type { CallOptions } from "../store/store.js";
import type { KeyReader } from "./key-reader.js";
import { type LeaveMarkers, MAX_DESCRIPTOR_BYTES, rdzvKey, rdzvRoundKey } from "./run-keys.js";
import { type NodeStatus, type NodeView, RunState, type RunSummary, type RunView } from "./run-view.js";

/** When the inspector saw a slot's keep-alive counter move (the dashboard's key-change monitor knows). */
export interface KeepAliveTimes {
  /** Last time the counter moved, and the interval between its last two moves, if seen. */
  keepAlive(runId: string, round: number, slot: number): { at: number; intervalMs?: number } | undefined;
}

/** Options of `inspectRdzvRun`. */
export interface InspectOptions extends CallOptions {
  /** Keep-alive timing, when known (omitted by `rdzv status`, which only sees counters). */
  keepAlives?: KeepAliveTimes;
  /** Most slots read per round (default 20 000); more are counted in a note. */
  maxSlots?: number;
  /**
   * Read only the leave markers of each slot, not descriptors and keep-alives: states and counts are
   * right, nodes are named by slot. A tenth of the work at 10,000 nodes; for run lists.
   */
  markersOnly?: boolean;
}

/** PyTorch's default `keep_alive_max_attempt`: a node counts as dead after this many missed keep-alives. */
const MISSED_KEEP_ALIVES = 3;

interface RoundKeys {
  tickets: number;
  lead: number | undefined;
  ended: boolean;
  slots: SlotKeys[];
}

interface SlotKeys {
  slot: number;
  node: NodeDescriptor | undefined;
  keepAlives: number | undefined;
  gone: string | undefined;
}

const text = (v: Uint8Array | undefined): string | undefined =>
  v === undefined ? undefined : Buffer.from(v).toString("utf8");

/**
 * Longest values read as a counter or a leave marker: rdzv writes a few bytes there, any client can write
 * megabytes, and a view reads thousands of them (descriptors: `MAX_DESCRIPTOR_BYTES`).
 */
const MAX_COUNTER_BYTES = 64;
const MAX_MARKER_BYTES = 64;

/** A leave marker's text; a marker too long to be rdzv's reads as "other" (a dead node). */
const marker = (v: Uint8Array | undefined): string | undefined =>
  v !== undefined && v.length > MAX_MARKER_BYTES ? "other" : text(v);

function int(v: Uint8Array | undefined): number | undefined {
  if (v !== undefined && v.length > MAX_COUNTER_BYTES) return undefined;
  const t = text(v)?.trim();
  const n = t !== undefined && /^-?\d+$/.test(t) ? Number(t) : undefined;
  return Number.isSafeInteger(n) ? n : undefined;
}

/**
 * The summary of run `runId` (state, round and counts, as `summarize(inspectRdzvRun(...))` gives) from a
 * few keys and `markers`, the run's leave markers (from a key listing or the dashboard's run index, see
 * `RunKeys`): no key is read per slot, so the cost does not depend on the tickets counters (which any store
 * client can set to 1e9). `undefined` when the store holds no such run.
 */
export async function summarizeRdzvRun(
  reader: KeyReader,
  runId: string,
  markers: LeaveMarkers | undefined,
  options: CallOptions = {},
): Promise<RunSummary | undefined> {
  const call: CallOptions = options.signal === undefined ? {} : { signal: options.signal };
  const [open, closed] = await reader.read([rdzvKey(runId, "open"), rdzvKey(runId, "closed")], call);
  if (open === undefined && closed === undefined) return undefined;
  const { openRound, last, stopped } = await findOpenRound(reader, runId, int(open) ?? 0, [], call);
  const summary: RunSummary = {
    runId,
    source: "rdzv",
    state: RunState.Idle,
    round: openRound,
    participants: 0,
    waiting: 0,
  };
  if (closed !== undefined || last?.kind === "closed") {
    summary.state = RunState.Closed;
    summary.round = last?.round ?? openRound;
    return summary;
  }
  if (stopped) {
    summary.state = RunState.Unknown;
    return summary;
  }
  const count = async (round: number) => {
    const key = (path: string) => rdzvRoundKey(runId, round, path);
    const [tickets, ended] = await reader.read([key("tickets"), key("ended")], call);
    const n = Math.max(0, int(tickets) ?? 0);
    const gone = (markers?.get(round) ?? []).filter((s) => s < n).length;
    return { tickets: n, live: n - gone, ended: ended !== undefined };
  };
  const current = await count(openRound);
  if (last?.kind === "complete") {
    const done = await count(last.round);
    if (!done.ended || current.live === 0) {
      summary.state = RunState.Complete;
      summary.round = last.round;
      summary.participants = last.span - last.excluded.length;
      summary.waiting = current.live;
      return summary;
    }
  }
  summary.participants = current.tickets;
  if (current.live > 0) summary.state = RunState.Joining;
  return summary;
}

/** Reads run `runId`; `undefined` when the store holds no such rdzv run. */
export async function inspectRdzvRun(
  reader: KeyReader,
  runId: string,
  options: InspectOptions = {},
): Promise<RunView | undefined> {
  const call: CallOptions = options.signal === undefined ? {} : { signal: options.signal };
  const [open, closed] = await reader.read([rdzvKey(runId, "open"), rdzvKey(runId, "closed")], call);
  if (open === undefined && closed === undefined) return undefined;
  const notes: string[] = [];
  const { openRound, last, stopped } = await findOpenRound(reader, runId, int(open) ?? 0, notes, call);
  const maxSlots = options.maxSlots ?? 20_000;
  const view: RunView = {
    runId,
    source: "rdzv",
    state: RunState.Idle,
    round: openRound,
    participants: [],
    waiting: [],
    redundant: [],
    notes,
  };
  if (closed !== undefined || last?.kind === "closed") {
    view.state = RunState.Closed;
    view.round = last?.round ?? openRound;
    return view;
  }
  if (stopped) {
    view.state = RunState.Unknown;
    view.capped = true;
    return view;
  }
  const full = options.markersOnly !== true;
  const current = await readRound(reader, runId, openRound, maxSlots, full, notes, call);
  if (current.lead !== undefined) view.coordinator = current.lead;
  const toView = (round: number) => (s: SlotKeys) => nodeView(runId, round, s, options.keepAlives);
  if (last?.kind === "complete") {
    const done = await readRound(reader, runId, last.round, maxSlots, full, notes, call);
    const live = current.slots.some((s) => s.gone === undefined);
    if (done.ended) {
      const lost = done.slots.filter((s) => s.gone === "dead" || s.gone === "left");
      const who = lost.map((s) => `slot ${s.slot} ${s.gone}`).join(", ");
      notes.push(`round ${last.round} ended${who === "" ? "" : ` (${who})`}; round ${openRound} re-forms`);
    }
    // Until someone joins the next round, the ended round's members are still the ones to look at.
    if (!done.ended || !live) {
      view.state = RunState.Complete;
      view.round = last.round;
      view.participants = members(last, done, maxSlots).map(toView(last.round));
      if (last.span > maxSlots) {
        view.capped = true;
        notes.push(
          `round ${last.round}: showing the members among the first ${maxSlots} of ${last.span} slots (capped)`,
        );
      }
      if (current.slots.length < current.tickets) view.capped = true;
      view.waiting = current.slots.filter((s) => s.gone === undefined).map(toView(openRound));
      return view;
    }
  }
  if (current.slots.length < current.tickets) view.capped = true;
  view.participants = current.slots.map(toView(openRound));
  if (current.slots.some((s) => s.gone === undefined)) {
    view.state = RunState.Joining;
    notes.push(
      "rdzv's coordinator keeps min/max nodes and the last-call timer to itself: joining includes the last call",
    );
  }
  return view;
}

/**
 * Most decided rounds read past the open-round hint. rdzv moves the hint as each round is decided, so
 * readers step past a round or two; a longer walk means a forged or stale hint (any client can set it).
 */
export const MAX_ROUNDS_WALKED = 1024;

/**
 * Steps from the open-round hint past decided rounds, as `StoreRendezvousBackend.getState` does, for
 * `MAX_ROUNDS_WALKED` rounds at most (`stopped` then). Only the last decided round's outcome is decoded.
 */
async function findOpenRound(
  reader: KeyReader,
  runId: string,
  hint: number,
  notes: string[],
  call: CallOptions,
): Promise<{ openRound: number; last: RoundOutcome | undefined; stopped: boolean }> {
  const from = Math.max(0, hint - 1);
  let round = from;
  let lastValue: Uint8Array | undefined;
  let stopped = false;
  for (let found = false; !found; ) {
    if (round - from >= MAX_ROUNDS_WALKED) {
      stopped = true;
      notes.push(
        `rounds ${from} to ${round - 1} are decided and the open-round hint says ${hint}: stopped reading ` +
          `after ${MAX_ROUNDS_WALKED} rounds (capped; a hint this stale was not written by rdzv)`,
      );
      break;
    }
    const keys = [0, 1, 2, 3].map((i) => rdzvRoundKey(runId, round + i, "outcome"));
    for (const value of await reader.read(keys, call)) {
      if (value === undefined) {
        found = true;
        break;
      }
      lastValue = value;
      round++;
    }
  }
  if (lastValue === undefined) return { openRound: round, last: undefined, stopped };
  try {
    return { openRound: round, last: decodeOutcome(text(lastValue)!), stopped };
  } catch (err) {
    notes.push(`round ${round - 1}: ${err instanceof Error ? err.message : String(err)}`);
    return { openRound: round, last: undefined, stopped };
  }
}

async function readRound(
  reader: KeyReader,
  runId: string,
  round: number,
  maxSlots: number,
  full: boolean,
  notes: string[],
  call: CallOptions,
): Promise<RoundKeys> {
  const key = (path: string) => rdzvRoundKey(runId, round, path);
  const [tickets, lead, ended] = await reader.read([key("tickets"), key("lead"), key("ended")], call);
  const count = Math.max(0, int(tickets) ?? 0);
  const shown = Math.min(count, maxSlots);
  if (shown < count) notes.push(`round ${round}: showing ${shown} of ${count} tickets (capped)`);
  const paths = [];
  for (let s = 0; s < shown; s++) {
    if (full) paths.push(key(`node/${s}`), key(`hb/${s}`));
    paths.push(key(`gone/${s}`));
  }
  const values = await reader.read(paths, call);
  const slots: SlotKeys[] = [];
  const per = full ? 3 : 1;
  for (let s = 0; s < shown; s++) {
    const at = per * s;
    slots.push({
      slot: s,
      node: full ? descriptor(values[at]) : undefined,
      keepAlives: full ? int(values[at + 1]) : undefined,
      gone: marker(values[at + per - 1]),
    });
  }
  return { tickets: count, lead: int(lead), ended: ended !== undefined, slots };
}

/** A slot's descriptor; undefined when missing, not rdzv's JSON, or longer than `MAX_DESCRIPTOR_BYTES`. */
function descriptor(value: Uint8Array | undefined): NodeDescriptor | undefined {
  if (value === undefined || value.length > MAX_DESCRIPTOR_BYTES) return undefined;
  try {
    const d = JSON.parse(text(value)!) as NodeDescriptor;
    return typeof d.id === "string" && typeof d.addr === "string" ? d : undefined;
  } catch {
    return undefined;
  }
}

/** The members of a complete round (slot order) among its first `maxSlots` slots, with their ranks. */
function members(outcome: RoundOutcome, round: RoundKeys, maxSlots: number): SlotKeys[] {
  if (outcome.kind !== "complete") return [];
  const bySlot = new Map(round.slots.map((s) => [s.slot, s]));
  const excluded = new Set(outcome.excluded);
  const out: (SlotKeys & { rank: number })[] = [];
  // A member's index is its slot less the excluded slots below it (as rankOf counts, in one pass).
  let index = 0;
  for (let s = 0; s < Math.min(outcome.span, maxSlots); s++) {
    if (excluded.has(s)) continue;
    const keys = bySlot.get(s) ?? { slot: s, node: undefined, keepAlives: undefined, gone: undefined };
    out.push({ ...keys, rank: outcome.ranks?.[index] ?? index });
    index++;
  }
  return out;
}

function nodeView(
  runId: string,
  round: number,
  s: SlotKeys & { rank?: number },
  times: KeepAliveTimes | undefined,
): NodeView {
  const view: NodeView = {
    id: s.node?.id ?? `slot ${s.slot}`,
    addr: s.node?.addr ?? "",
    slot: s.slot,
    status: status(s.gone),
  };
  if (s.node !== undefined) view.pid = s.node.pid;
  if (s.rank !== undefined) view.rank = s.rank;
  if (s.keepAlives !== undefined) view.keepAlives = s.keepAlives;
  const seen = times?.keepAlive(runId, round, s.slot);
  if (seen !== undefined) {
    view.lastKeepAliveAt = seen.at;
    if (seen.intervalMs !== undefined && view.status === "alive") {
      view.expiresAt = seen.at + MISSED_KEEP_ALIVES * seen.intervalMs;
    }
  }
  return view;
}

function status(gone: string | undefined): NodeStatus {
  if (gone === undefined) return "alive";
  return gone === "rejoined" || gone === "left" ? gone : "dead";
}
