/**
 * The pure core of the dynamic rendezvous: how a round is decided. No I/O and no clock of its own, so it
 * can be model-tested (see round.test.ts and test/rendezvous-model.test.ts).
 *
 * A run is a sequence of rounds 0, 1, 2, ... Joining round `r` means taking a ticket: an atomic counter
 * hands out slots 0, 1, 2, ... in arrival order. A round is decided exactly once (a compare-and-set on its
 * outcome key): either `complete`, naming its members as "slots [0, span) except `excluded`", or `closed`.
 * The members' ranks are their slot order. Nothing else is ever rewritten, so joins never contend with
 * each other and the outcome stays a few bytes long whatever the round's size.
 *
 * Round r+1 may complete only after round r is drained: every member of r has left (to re-join) or is
 * known dead. That is PyTorch's exclusivity rule: there is never more than one live completed round.
 */

import { RendezvousStateError } from "../errors.js";

/** Timing and size settings the decision needs. */
export interface RoundSettings {
  readonly minNodes: number;
  readonly maxNodes: number;
  readonly lastCallTimeoutMs: number;
}

/**
 * The largest span an outcome may name (2^24 slots). A round never takes more tickets than nodes join it;
 * an outcome naming more is corrupt (or forged by some store client), and reading it would make every
 * reader loop over its slots.
 */
export const MAX_SPAN = 2 ** 24;

/** Why a slot stopped taking part. */
export const GoneReason = {
  /** The member joined the next round (its workers restarted). */
  Rejoined: "rejoined",
  /** The node left on purpose (`shutdown()`), or gave up after its join timeout. */
  Left: "left",
  /** The node died: its connection dropped, or its keep-alives stopped. */
  Dead: "dead",
} as const;
export type GoneReason = (typeof GoneReason)[keyof typeof GoneReason];

/** The decision of a round. */
export type RoundOutcome =
  | {
      readonly kind: "complete";
      readonly round: number;
      /** Members are the slots in [0, span) that are not excluded, ranked in slot order. */
      readonly span: number;
      /** Slots below `span` that are not members (gone before the round completed), ascending. */
      readonly excluded: readonly number[];
      /** When sticky ranks are on: rank of each member in slot order (a permutation of 0..W-1). */
      readonly ranks?: readonly number[];
      /**
       * Where rank 0's workers bootstrap (PyTorch's MASTER_ADDR / MASTER_PORT), when the coordinator that
       * decided the round is its rank 0 and put it here: then nobody waits for rank 0 to publish it.
       */
      readonly master?: { readonly addr: string; readonly port: number };
    }
  | { readonly kind: "closed"; readonly round: number };

/** What the round's coordinator knows when it decides. */
export interface RoundView {
  readonly now: number;
  /** Tickets taken in this round so far. */
  readonly tickets: number;
  /** Slots below `tickets` known gone. */
  readonly gone: ReadonlySet<number>;
  /** The previous round, when there was one that completed. */
  readonly previous?: { readonly drained: boolean };
  /** When the live count last reached `minNodes` (coordinator-local; undefined when below). */
  readonly minReachedAt?: number;
}

/** What the coordinator should do next. */
export type RoundDecision =
  | {
      readonly kind: "complete";
      readonly span: number;
      readonly excluded: readonly number[];
      readonly size: number;
    }
  | {
      readonly kind: "wait";
      /** Re-decide at this time even if nothing changes (last-call expiry). */
      readonly wakeAt?: number;
      /** When the live count reached min (to carry into the next view). */
      readonly minReachedAt?: number;
      /** Human-readable reason, for logs and timeouts. */
      readonly reason: string;
    };

/** The members a round would have now: the first `maxNodes` live slots in ticket order. */
export function selectMembers(
  tickets: number,
  gone: ReadonlySet<number>,
  maxNodes: number,
): { span: number; excluded: number[]; size: number } {
  const excluded: number[] = [];
  let size = 0;
  let slot = 0;
  for (; slot < tickets && size < maxNodes; slot++) {
    if (gone.has(slot)) excluded.push(slot);
    else size++;
  }
  return { span: slot, excluded, size };
}

/**
 * Decides a round, PyTorch's rules plus one: complete at once with `maxNodes` live nodes; with at least
 * `minNodes`, complete after the last call (`lastCallTimeoutMs` since the count reached min), or at once
 * when this is a re-rendezvous whose previous round is drained (everyone who could come is here: the
 * survivors of the previous round joined before they let it drain, and waiting nodes joined before them).
 * Never complete while the previous round still runs.
 */
export function decideRound(view: RoundView, settings: RoundSettings): RoundDecision {
  const { span, excluded, size } = selectMembers(view.tickets, view.gone, settings.maxNodes);
  if (view.previous !== undefined && !view.previous.drained) {
    return { kind: "wait", reason: "the previous round is still running" };
  }
  if (size >= settings.maxNodes) return { kind: "complete", span, excluded, size };
  if (size < settings.minNodes) {
    return { kind: "wait", reason: `${size} of at least ${settings.minNodes} nodes joined` };
  }
  if (view.previous !== undefined) return { kind: "complete", span, excluded, size };
  const minReachedAt = view.minReachedAt ?? view.now;
  const wakeAt = minReachedAt + settings.lastCallTimeoutMs;
  if (view.now >= wakeAt) return { kind: "complete", span, excluded, size };
  return { kind: "wait", wakeAt, minReachedAt, reason: `last call: ${size} nodes joined, waiting for more` };
}

/** A member's rank and the world size under a complete outcome, or undefined when `slot` is not a member. */
export function rankOf(outcome: RoundOutcome, slot: number): { rank: number; worldSize: number } | undefined {
  if (outcome.kind !== "complete" || slot >= outcome.span) return undefined;
  let below = 0;
  for (const e of outcome.excluded) {
    if (e === slot) return undefined;
    if (e < slot) below++;
  }
  const index = slot - below;
  const worldSize = outcome.span - outcome.excluded.length;
  return { rank: outcome.ranks?.[index] ?? index, worldSize };
}

/**
 * The slot of the member at `index` (0-based, in slot order) of a complete outcome, without listing every
 * member: O(excluded), so that each of 10,000 nodes can call it.
 */
export function slotAt(outcome: Extract<RoundOutcome, { kind: "complete" }>, index: number): number {
  let slot = index;
  for (const e of outcome.excluded) {
    if (e > slot) break;
    slot++;
  }
  return slot;
}

/** The slots of a complete outcome's members, in slot order. */
export function memberSlots(outcome: RoundOutcome): number[] {
  if (outcome.kind !== "complete") return [];
  const excluded = new Set(outcome.excluded);
  const slots: number[] = [];
  for (let s = 0; s < outcome.span; s++) if (!excluded.has(s)) slots.push(s);
  return slots;
}

/**
 * Sticky ranks: given the previous rank of each member (in slot order; undefined for newcomers), assigns
 * ranks 0..W-1 so that every member whose previous rank is still in range and not claimed twice keeps it;
 * the others take the free ranks in slot order.
 */
export function assignStickyRanks(previousRanks: readonly (number | undefined)[]): number[] {
  const worldSize = previousRanks.length;
  const taken = new Set<number>();
  const ranks: (number | undefined)[] = previousRanks.map((prev) => {
    if (prev === undefined || prev < 0 || prev >= worldSize || taken.has(prev)) return undefined;
    taken.add(prev);
    return prev;
  });
  let next = 0;
  return ranks.map((rank) => {
    if (rank !== undefined) return rank;
    while (taken.has(next)) next++;
    taken.add(next);
    return next;
  });
}

/** Encodes an outcome compactly (JSON of short fields). */
export function encodeOutcome(outcome: RoundOutcome): string {
  if (outcome.kind === "closed") return JSON.stringify({ c: 1, r: outcome.round });
  const o: Record<string, unknown> = { r: outcome.round, s: outcome.span, x: outcome.excluded };
  if (outcome.ranks !== undefined) o.k = outcome.ranks;
  if (outcome.master !== undefined) o.m = [outcome.master.addr, outcome.master.port];
  return JSON.stringify(o);
}

/** Decodes an outcome; throws `RendezvousStateError` on anything malformed. */
export function decodeOutcome(text: string): RoundOutcome {
  let o: unknown;
  try {
    o = JSON.parse(text);
  } catch (err) {
    throw new RendezvousStateError(`corrupt round outcome ${JSON.stringify(text.slice(0, 80))}`, {
      cause: err,
    });
  }
  const bad = (): never => {
    throw new RendezvousStateError(`corrupt round outcome ${JSON.stringify(text.slice(0, 80))}`);
  };
  if (typeof o !== "object" || o === null) return bad();
  const rec = o as Record<string, unknown>;
  const round = rec.r;
  if (!Number.isSafeInteger(round) || (round as number) < 0) return bad();
  if (rec.c === 1) return { kind: "closed", round: round as number };
  const span = rec.s;
  const excluded = rec.x;
  if (!Number.isSafeInteger(span) || (span as number) < 0 || (span as number) > MAX_SPAN) return bad();
  if (!Array.isArray(excluded)) return bad();
  // Strictly ascending exclusions below span: a duplicate or out-of-order one would make rankOf hand out
  // ranks outside 0..W-1.
  const ascending = excluded.every(
    (e, i) => Number.isSafeInteger(e) && e >= 0 && e < (span as number) && (i === 0 || e > excluded[i - 1]),
  );
  if (!ascending) return bad();
  const base = { kind: "complete" as const, round: round as number, span: span as number, excluded };
  const master = rec.m === undefined ? undefined : decodeMaster(rec.m);
  if (master === null) return bad();
  const withMaster = master === undefined ? base : { ...base, master };
  if (rec.k === undefined) return withMaster;
  const ranks = rec.k;
  const size = (span as number) - excluded.length;
  if (!Array.isArray(ranks) || ranks.length !== size || !isPermutation(ranks)) return bad();
  return { ...withMaster, ranks };
}

/** `[addr, port]` as the outcome's `master`, or null when malformed. */
function decodeMaster(m: unknown): { addr: string; port: number } | null {
  if (!Array.isArray(m) || m.length !== 2) return null;
  const [addr, port] = m as unknown[];
  if (typeof addr !== "string" || addr === "" || !Number.isInteger(port)) return null;
  if ((port as number) < 1 || (port as number) > 65_535) return null;
  return { addr, port: port as number };
}

/** True when `values` holds each of 0..length-1 exactly once. */
function isPermutation(values: readonly unknown[]): boolean {
  const seen = new Set<number>();
  for (const v of values) {
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0 || v >= values.length || seen.has(v))
      return false;
    seen.add(v);
  }
  return true;
}

/**
 * Tracks keep-alive counters as the coordinator sees them and declares a slot dead when its counter has
 * not moved for `deadAfterMs` on the coordinator's own clock (so node clocks never need to agree).
 */
export class LivenessTracker {
  private readonly seen = new Map<string, { value: string; since: number }>();

  constructor(private readonly deadAfterMs: number) {}

  /** Records `value` for `id` at `now`; returns true when `id` counts as dead. */
  observe(id: string, value: string, now: number): boolean {
    const last = this.seen.get(id);
    if (last === undefined || last.value !== value) {
      this.seen.set(id, { value, since: now });
      return false;
    }
    return now - last.since >= this.deadAfterMs;
  }

  /** Earliest time at which a tracked id could be declared dead. */
  nextDeadline(): number | undefined {
    let min: number | undefined;
    for (const { since } of this.seen.values()) {
      const t = since + this.deadAfterMs;
      if (min === undefined || t < min) min = t;
    }
    return min;
  }

  forget(id: string): void {
    this.seen.delete(id);
  }
}
