/**
 * `RendezvousMonitor` watches a store's key changes and turns them into a timeline per run (joined,
 * completed, node lost, left, closed) and keep-alive timing, for the dashboard, `/metrics` and library
 * users. It sees every change as the server applies it, so events carry the server's clock and arrive in
 * the order the store took them. rdzv runs: from their keys' creation; PyTorch runs: from the difference
 * between successive decoded states.
 *
 * Decoding PyTorch's state costs the server time in proportion to its size (12 ms for 1,000 nodes, 73 ms for
 * 10,000), and torchrun's agents write it on every heartbeat (each node every 5 s by default): 1,000 nodes
 * made 200 writes a second, 2.4 s of decoding a second. So decodes share a budget: after one that took
 * C ms (at least 1 ms), the next waits `TORCH_BUSY_FACTOR` x C, and writes meanwhile are only remembered,
 * the latest per run, to be decoded in turn (events then carry the time of the write decoded). A run's
 * timeline then shows the changes between the states decoded; a node that joined and left between two of
 * them is not seen.
 */

import { EventEmitter } from "node:events";
import type { Logger } from "../log.js";
import { decodeOutcome, memberSlots, type RoundOutcome } from "../rendezvous/round.js";
import type { KvEngine } from "../store/kv-engine.js";
import { userKeyOf, WIRE_KEY_PREFIX } from "./key-reader.js";
import type { KeepAliveTimes } from "./rdzv-inspect.js";
import { MAX_DESCRIPTOR_BYTES, parseRdzvKey, parseTorchKey, type RdzvKey, runListKey } from "./run-keys.js";
import type { TimelineEvent } from "./run-view.js";
import { diffTorchStates } from "./torch-diff.js";
import { readTorchState, type TorchRendezvousState } from "./torch-state.js";

/** Options of `RendezvousMonitor`. */
export interface RendezvousMonitorOptions {
  /** Clock, epoch ms (default `Date.now`). */
  now?: () => number;
  /** Events kept per run, oldest dropped first (default 1000). */
  maxEventsPerRun?: number;
  /** Runs tracked, least recently changed dropped first (default 1000). */
  maxRuns?: number;
  /**
   * Events kept for all runs together (default 100 000): past it, the least recently changed runs lose
   * their oldest events first. With `maxEventsPerRun` it bounds the monitor's memory however many runs,
   * slots and rounds clients write (see `MAX_TRACKED_SLOTS` for keep-alive timing).
   */
  maxEventsTotal?: number;
  /** Where a key the monitor could not follow is reported (default: nowhere). */
  logger?: Logger;
}

/** Events of `RendezvousMonitor`. */
export interface RendezvousMonitorEvents {
  /** A timeline event of some run. */
  event: [TimelineEvent];
  /**
   * Some key of run `runId` changed (written, or a run-list key deleted: the run or a leave marker went);
   * `keepAliveOnly` when it was a keep-alive counter.
   */
  changed: [string, boolean];
}

interface RunTrack {
  readonly events: TimelineEvent[];
  closed: boolean;
  /** rdzv: when the first ticket of each round was seen; PyTorch: key "torch". */
  readonly roundStart: Map<number | "torch", { round: number; at: number }>;
  readonly beats: Map<string, { at: number; intervalMs?: number }>;
  readonly nodes: Map<string, { id: string; addr: string }>;
  /** rdzv: the span of each decided round seen (0 for closed): tickets at or beyond it never joined. */
  readonly spans: Map<number, number>;
  /** rdzv: completions held back until their members' descriptors were seen (see `#outcome`). */
  readonly held: Map<number, { event: TimelineEvent; missing: Set<number>; timer: NodeJS.Timeout }>;
  torch?: TorchRendezvousState;
}

/** How long a completion waits for member descriptors still in flight before it is shown anyway. */
const HOLD_MS = 2000;

/**
 * Members whose descriptors completions may wait for, all runs together: a round with more (or arriving
 * while others wait for that many) completes on the timeline at once.
 */
const MAX_HELD_MEMBERS = 100_000;

/**
 * Slots whose keep-alive timing and descriptor the monitor keeps, all runs together (10,000 nodes over
 * two rounds take 20,000 each): past it, the least recently changed runs forget their oldest slots
 * first, which then show no keep-alive age and are named by slot. Without it a client writing `hb/<n>`
 * for ever new n grew the monitor without bound (2 million slots: 211 MB).
 */
export const MAX_TRACKED_SLOTS = 200_000;

/** Rounds whose start (first ticket) and span a run keeps; rdzv only ever needs the last two or three. */
const MAX_ROUNDS_KEPT = 16;

/**
 * After a decode of PyTorch's state that took C ms (C >= 1), the next waits this many times C: decoding takes
 * at most a tenth of the server's time however often and however many runs write big states.
 */
export const TORCH_BUSY_FACTOR = 9;

/** Longest node id or address a timeline event keeps, in UTF-16 units (longer ones end in "..."). */
const MAX_NAME_CHARS = 256;

/** Watches key changes; see the file comment. */
export class RendezvousMonitor extends EventEmitter<RendezvousMonitorEvents> implements KeepAliveTimes {
  readonly #now: () => number;
  readonly #maxEvents: number;
  readonly #maxRuns: number;
  readonly #maxEventsTotal: number;
  readonly #runs = new Map<string, RunTrack>();
  /** Events, slots (beats and descriptors) and held members kept, all runs together. */
  #eventCount = 0;
  #slotCount = 0;
  #heldCount = 0;
  readonly #logger: Logger | undefined;
  /** The most recently touched run (already last in `#runs`): keep-alives hit the same run in bursts. */
  #latest: string | undefined;
  /** PyTorch states written while decoding waits (see the file comment): the latest per run, oldest run first. */
  readonly #torchPending = new Map<string, { value: Uint8Array; at: number }>();
  /** Set while decoding waits; it decodes the next pending state. */
  #torchTimer: NodeJS.Timeout | undefined;

  constructor(options: RendezvousMonitorOptions = {}) {
    super();
    this.#now = options.now ?? Date.now;
    this.#maxEvents = options.maxEventsPerRun ?? 1000;
    this.#maxRuns = options.maxRuns ?? 1000;
    this.#maxEventsTotal = options.maxEventsTotal ?? 100_000;
    this.#logger = options.logger;
  }

  /**
   * Follows `engine`'s changes (keys carrying `keyPrefix`, "/" on a TCP store server; `byteKeys`: the
   * engine holds UTF-8 bytes as byte strings, as a TCP store server's does). Returns a function that stops
   * following.
   */
  attach(engine: KvEngine, keyPrefix = WIRE_KEY_PREFIX, byteKeys = true): () => void {
    // It runs inside the store's write path: whatever a key holds, it must not fail the write.
    const off = engine.onChange((key, oldValue, newValue) => {
      if (!key.startsWith(keyPrefix)) return;
      try {
        // A TCP store server's keys are byte strings: a run id past ASCII is read as its client wrote it.
        const user = userKeyOf(key, keyPrefix, byteKeys);
        if (user !== undefined) this.observe(user, oldValue, newValue);
      } catch (err) {
        this.#logger?.warn("rendezvous monitor: ignoring a key it could not follow", {
          key: key.slice(0, 200),
          error: err instanceof Error ? err.message : String(err),
        });
      }
    });
    return () => {
      off();
      clearTimeout(this.#torchTimer);
      this.#torchTimer = undefined;
      this.#torchPending.clear();
    };
  }

  /** Feeds one change of user key `key` (`undefined` values: created / deleted). */
  observe(key: string, oldValue: Uint8Array | undefined, newValue: Uint8Array | undefined): void {
    if (newValue === undefined) {
      // No event, but the run list changed (a run or a leave marker went: run retention, a client's
      // delete), and the dashboard pushes it on "changed".
      const k = runListKey(key);
      if (k !== undefined) this.emit("changed", k.runId, false);
      return;
    }
    if (key.startsWith("rdzv/")) {
      const k = parseRdzvKey(key);
      if (k !== undefined) this.#rdzv(k, oldValue === undefined, newValue);
      return;
    }
    const torchRun = parseTorchKey(key);
    if (torchRun !== undefined) this.#torchWritten(torchRun, newValue);
  }

  /** The timeline of `runId` (oldest first); empty when unseen. */
  timeline(runId: string): TimelineEvent[] {
    return [...(this.#runs.get(runId)?.events ?? [])];
  }

  /** The runs tracked (see `maxRuns`), the most recently changed first. */
  recentRuns(): string[] {
    return [...this.#runs.keys()].reverse();
  }

  keepAlive(runId: string, round: number, slot: number): { at: number; intervalMs?: number } | undefined {
    return this.#runs.get(runId)?.beats.get(`${round}/${slot}`);
  }

  #track(runId: string): RunTrack {
    let t = this.#runs.get(runId);
    if (t !== undefined && runId === this.#latest) return t;
    this.#latest = runId;
    if (t === undefined) {
      t = {
        events: [],
        closed: false,
        roundStart: new Map(),
        beats: new Map(),
        nodes: new Map(),
        spans: new Map(),
        held: new Map(),
      };
    } else this.#runs.delete(runId);
    this.#runs.set(runId, t);
    if (this.#runs.size > this.#maxRuns) {
      const [oldest, dropped] = this.#runs.entries().next().value!;
      this.#runs.delete(oldest);
      this.#forget(dropped);
    }
    return t;
  }

  #push(t: RunTrack, e: TimelineEvent): void {
    t.events.push(e);
    this.#eventCount++;
    if (t.events.length > this.#maxEvents) {
      t.events.shift();
      this.#eventCount--;
    }
    if (this.#eventCount > this.#maxEventsTotal) this.#trim();
    this.emit("event", e);
  }

  /** Drops what `t` kept from the totals (it is no longer tracked). */
  #forget(t: RunTrack): void {
    this.#eventCount -= t.events.length;
    this.#slotCount -= t.beats.size + t.nodes.size;
    for (const round of [...t.held.keys()]) this.#release(t, round, false);
  }

  /**
   * Brings the totals back within bounds, to 90% of them so that this runs once in many additions: the
   * least recently changed runs lose their oldest entries first.
   */
  #trim(): void {
    const events = Math.floor(this.#maxEventsTotal * 0.9);
    const slots = Math.floor(MAX_TRACKED_SLOTS * 0.9);
    for (const t of this.#runs.values()) {
      if (this.#eventCount > events && t.events.length > 0) {
        const drop = Math.min(t.events.length, this.#eventCount - events);
        t.events.splice(0, drop);
        this.#eventCount -= drop;
      }
      for (const map of [t.beats, t.nodes] as Map<string, unknown>[]) {
        for (const key of map.keys()) {
          if (this.#slotCount <= slots) break;
          map.delete(key);
          this.#slotCount--;
        }
      }
      if (this.#eventCount <= events && this.#slotCount <= slots) return;
    }
  }

  /** Sets `map[key]`, counting a new slot entry. */
  #setSlot<V>(map: Map<string, V>, key: string, value: V): void {
    if (!map.has(key)) {
      this.#slotCount++;
      map.set(key, value);
      if (this.#slotCount > MAX_TRACKED_SLOTS) this.#trim();
    } else map.set(key, value);
  }

  #rdzv(k: RdzvKey, created: boolean, value: Uint8Array): void {
    const t = this.#track(k.runId);
    const at = this.#now();
    const text = valueText(k.kind, value);
    const base = { at, runId: k.runId };
    if (k.kind === "hb") {
      const id = `${k.round}/${k.slot}`;
      const last = t.beats.get(id);
      this.#setSlot(t.beats, id, last === undefined ? { at } : { at, intervalMs: at - last.at });
    } else if (k.kind === "tickets") {
      if (!t.roundStart.has(k.round)) setBounded(t.roundStart, k.round, { round: k.round, at });
    } else if (k.kind === "node" && created && k.slot < (t.spans.get(k.round) ?? Number.POSITIVE_INFINITY)) {
      // (A ticket beyond a decided round's span was taken too late and is left behind: not a join.)
      const node = nodeOf(text, k.slot);
      this.#setSlot(t.nodes, `${k.round}/${k.slot}`, node);
      this.#push(t, { ...base, round: k.round, type: "joined", node: { ...node, slot: k.slot } });
      const held = t.held.get(k.round);
      if (held?.missing.delete(k.slot)) {
        this.#heldCount--;
        if (held.missing.size === 0) {
          held.event.at = Math.max(held.event.at, at);
          this.#release(t, k.round);
        }
      }
    } else if (k.kind === "gone" && created) {
      this.#release(t, k.round);
      const node = t.nodes.get(`${k.round}/${k.slot}`) ?? { id: `slot ${k.slot}`, addr: "" };
      const type = text === "dead" ? "nodeLost" : "left";
      this.#push(t, { ...base, round: k.round, type, node: { ...node, slot: k.slot }, reason: text });
    } else if (k.kind === "outcome" && created) {
      this.#outcome(t, k.runId, k.round, text, at);
    } else if (k.kind === "closed" && created && !t.closed) {
      t.closed = true;
      this.#push(t, { ...base, round: -1, type: "closed" });
    }
    this.emit("changed", k.runId, k.kind === "hb");
  }

  /**
   * A complete outcome can reach the store before the descriptor of the member whose ticket completed the
   * round (the coordinator counts tickets; the descriptor follows the ticket on another connection). The
   * completion is then held until those descriptors arrive (or `HOLD_MS`), so that the timeline shows
   * every member joining before the round completes.
   */
  #outcome(t: RunTrack, runId: string, round: number, text: string, at: number): void {
    let outcome: RoundOutcome;
    try {
      outcome = decodeOutcome(text);
    } catch {
      return;
    }
    setBounded(t.spans, round, outcome.kind === "complete" ? outcome.span : 0);
    if (outcome.kind === "closed") {
      if (t.closed) return;
      t.closed = true;
      this.#push(t, { at, runId, round, type: "closed" });
      return;
    }
    const worldSize = outcome.span - outcome.excluded.length;
    const start = t.roundStart.get(round);
    const event: TimelineEvent = { at, runId, round, type: "completed", worldSize };
    if (start !== undefined) event.elapsedMs = at - start.at;
    // Completions still held show first: a new outcome is later news than theirs.
    for (const r of [...t.held.keys()]) this.#release(t, r);
    const missing =
      this.#heldCount + worldSize > MAX_HELD_MEMBERS
        ? new Set<number>()
        : new Set(memberSlots(outcome).filter((s) => !t.nodes.has(`${round}/${s}`)));
    if (missing.size === 0) this.#push(t, event);
    else {
      const timer = setTimeout(() => this.#release(t, round), HOLD_MS);
      timer.unref();
      t.held.set(round, { event, missing, timer });
      this.#heldCount += missing.size;
    }
    // Rounds before the previous one are drained (exclusivity): forget their slots.
    for (const key of [...t.beats.keys(), ...t.nodes.keys()]) {
      if (Number(key.slice(0, key.indexOf("/"))) < round - 1) {
        if (t.beats.delete(key)) this.#slotCount--;
        if (t.nodes.delete(key)) this.#slotCount--;
      }
    }
    for (const r of t.roundStart.keys()) if (typeof r === "number" && r < round) t.roundStart.delete(r);
    for (const r of t.spans.keys()) if (r < round - 1) t.spans.delete(r);
  }

  /** Shows the held completion of `round`, if any (`show` false: a dropped run's, only forgotten). */
  #release(t: RunTrack, round: number, show = true): void {
    const held = t.held.get(round);
    if (held === undefined) return;
    clearTimeout(held.timer);
    t.held.delete(round);
    this.#heldCount -= held.missing.size;
    if (show) this.#push(t, held.event);
  }

  /** A PyTorch state written: decoded now, or remembered until decoding's turn comes (file comment). */
  #torchWritten(runId: string, value: Uint8Array): void {
    const at = this.#now();
    if (this.#torchTimer === undefined) {
      this.#decodeTorch(runId, value, at);
      return;
    }
    this.#torchPending.set(runId, { value, at });
    // A client making up run ids cannot grow this: past maxRuns the oldest run's state is forgotten.
    if (this.#torchPending.size > this.#maxRuns)
      this.#torchPending.delete(this.#torchPending.keys().next().value!);
  }

  #decodeTorch(runId: string, value: Uint8Array, at: number): void {
    const started = performance.now();
    try {
      this.#torch(runId, value, at);
    } catch (err) {
      this.#logger?.warn("rendezvous monitor: ignoring a PyTorch state it could not follow", {
        runId: runId.slice(0, 200),
        error: err instanceof Error ? err.message : String(err),
      });
    }
    const tookMs = performance.now() - started;
    // A quick decode needs no pause, but states remembered meanwhile still get their turn.
    const waitMs = tookMs < 1 ? 0 : tookMs * TORCH_BUSY_FACTOR;
    if (waitMs === 0 && this.#torchPending.size === 0) return;
    this.#torchTimer = setTimeout(() => {
      this.#torchTimer = undefined;
      const next = this.#torchPending.entries().next().value;
      if (next === undefined) return;
      this.#torchPending.delete(next[0]);
      this.#decodeTorch(next[0], next[1].value, next[1].at);
    }, waitMs);
    this.#torchTimer.unref();
  }

  #torch(runId: string, value: Uint8Array, at: number): void {
    const reading = readTorchState(value);
    if (reading.format !== "pytorch") return;
    const t = this.#track(runId);
    const next = reading.state;
    // A round starts when its first node is seen joining (PyTorch bumps the round when a new one forms).
    if (next.participants.length > 0 && !next.complete && t.roundStart.get("torch")?.round !== next.round) {
      t.roundStart.set("torch", { round: next.round, at });
    }
    const start = t.roundStart.get("torch");
    for (const e of diffTorchStates(runId, t.torch, next, at)) {
      if (e.type === "completed" && start !== undefined && start.round === next.round)
        e.elapsedMs = at - start.at;
      if (e.type === "closed") t.closed = true;
      if (e.node?.addr !== undefined) e.node = { ...e.node, id: name(e.node.id), addr: name(e.node.addr) };
      this.#push(t, e);
    }
    t.torch = next;
    this.emit("changed", runId, false);
  }
}

/** Longest leave marker kept as its text (rdzv's are "dead", "left", "rejoined"); longer ones read "other". */
const MAX_MARKER_BYTES = 64;

/**
 * The text the monitor reads of a value of `kind`: only descriptors, markers and outcomes are read. A
 * descriptor too long to be rdzv's is "" (its node shows by slot) and a marker too long is "other", so
 * that no megabytes a client writes land in a timeline.
 */
function valueText(kind: RdzvKey["kind"], value: Uint8Array): string {
  if (kind !== "node" && kind !== "gone" && kind !== "outcome") return "";
  if (kind === "node" && value.length > MAX_DESCRIPTOR_BYTES) return "";
  if (kind === "gone" && value.length > MAX_MARKER_BYTES) return "other";
  return Buffer.from(value).toString("utf8");
}

/** `map[key] = value`, dropping the first-inserted keys past `MAX_ROUNDS_KEPT`. */
function setBounded<K, V>(map: Map<K, V>, key: K, value: V): void {
  map.set(key, value);
  for (const k of map.keys()) {
    if (map.size <= MAX_ROUNDS_KEPT) break;
    map.delete(k);
  }
}

/** `text` cut to `MAX_NAME_CHARS`, as a copy (a slice would keep the whole string alive). */
function name(text: string): string {
  if (text.length <= MAX_NAME_CHARS) return text;
  const cut = Buffer.from(text.slice(0, MAX_NAME_CHARS - 3), "utf16le").toString("utf16le");
  return `${cut}...`;
}

function nodeOf(json: string, slot: number): { id: string; addr: string } {
  try {
    const d = JSON.parse(json) as { id?: unknown; addr?: unknown };
    if (typeof d.id === "string")
      return { id: name(d.id), addr: typeof d.addr === "string" ? name(d.addr) : "" };
  } catch {
    // a descriptor that is not JSON: shown by slot
  }
  return { id: `slot ${slot}`, addr: "" };
}
