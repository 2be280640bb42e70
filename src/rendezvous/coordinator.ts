/**
 * The coordinator of a round: one node per round (the first to join, or whoever takes over when it dies)
 * watches joins, leaves and keep-alives, feeds what it sees to the pure `decideRound`, and writes the
 * outcome. It sleeps on the store until something that could change the decision happens: the join that
 * would reach min or max, the previous round draining, a last-call or keep-alive deadline.
 */

import { RendezvousStateError } from "../errors.js";
import type { Logger } from "../log.js";
import { throwIfAborted } from "./abort.js";
import type { RendezvousBackend } from "./backend.js";
import {
  assignStickyRanks,
  decideRound,
  GoneReason,
  LivenessTracker,
  memberSlots,
  type RoundDecision,
  type RoundOutcome,
  rankOf,
} from "./round.js";

/** What `coordinateRound` needs. */
export interface CoordinatorInput {
  readonly backend: RendezvousBackend;
  readonly round: number;
  /** The coordinator's own slot. */
  readonly slot: number;
  readonly settings: {
    readonly minNodes: number;
    readonly maxNodes: number;
    readonly lastCallTimeoutMs: number;
    readonly keepAliveIntervalMs: number;
    readonly keepAliveMaxAttempts: number;
    readonly stickyRanks: boolean;
  };
  /** Give up coordinating at this time (the caller's join deadline). */
  readonly deadline: number;
  readonly signal: AbortSignal;
  readonly logger: Logger;
  readonly onLost: (lost: { round: number; slot: number; reason: GoneReason }) => void;
  /**
   * This node's bootstrap address should it be rank 0: then it goes into the outcome, so that no member
   * waits for rank 0 to publish it (see `RoundOutcome.master`).
   */
  readonly master?: () => Promise<{ addr: string; port: number }>;
}

/**
 * What `coordinateRound` resolves when the coordinator finds its own slot marked gone: another node
 * counted it dead (its keep-alives lagged, its etcd lease expired, its connection dropped for a moment),
 * so no outcome will count it, and it must take a new ticket. Someone else takes over the coordination.
 */
export const OWN_SLOT_GONE = "own slot gone";

/**
 * Coordinates `round` until it is decided (by this node or another), the deadline passes (then resolves
 * `undefined`) or the coordinator's own slot is marked gone (`OWN_SLOT_GONE`). Round trips count here,
 * since the coordinator's are the critical path of the whole round and every one of them queues behind
 * the other nodes' requests at the store: each pass reads the ticket count and the leave markers of the
 * slots it knows of in one round trip.
 */
export async function coordinateRound(
  input: CoordinatorInput,
): Promise<RoundOutcome | typeof OWN_SLOT_GONE | undefined> {
  const { backend, round, settings, signal } = input;
  const deadAfterMs = settings.keepAliveIntervalMs * settings.keepAliveMaxAttempts;
  const liveness = new LivenessTracker(deadAfterMs);
  // This node joined `round` while it was open, so round - 1 is decided: its members must drain first.
  // Quick calls go without the signal (see `throwIfAborted`); blocking ones take it.
  const [last, firstCount] = await Promise.all([
    round > 0 ? previousOutcome(input) : undefined,
    backend.ticketCount(round),
  ]);
  if (last === null) return undefined;
  const previous = last?.kind === "complete" ? previousMembers(last, settings.maxNodes) : undefined;
  let minReachedAt: number | undefined;
  let nextLivenessCheck = Date.now() + settings.keepAliveIntervalMs;
  /**
   * Slots known to exist (published), whose markers are read together with the count. Any store client
   * can write the ticket counter: only the slots the decision looks at are read (see `readNewSlots`).
   */
  let known = Math.min(firstCount, settings.maxNodes);
  for (;;) {
    const now = Date.now();
    const checkLiveness = now >= nextLivenessCheck;
    if (checkLiveness) nextLivenessCheck = now + settings.keepAliveIntervalMs;
    throwIfAborted(signal);
    const [counted, goneKnown, prevGone] = await Promise.all([
      backend.ticketCount(round),
      observeGone(input, liveness, round, range(known), checkLiveness, false),
      previous === undefined
        ? undefined
        : observeGone(input, liveness, round - 1, previous, checkLiveness, true),
    ]);
    const { tickets, gone, total } = await readNewSlots(
      input,
      liveness,
      known,
      counted,
      goneKnown,
      checkLiveness,
    );
    if (gone.has(input.slot)) return OWN_SLOT_GONE;
    const pending = previous === undefined ? [] : previous.filter((s) => !prevGone!.has(s));
    const decision: RoundDecision = decideRound(
      {
        now,
        tickets,
        gone,
        ...(previous === undefined ? {} : { previous: { drained: pending.length === 0 } }),
        ...(minReachedAt === undefined ? {} : { minReachedAt }),
      },
      settings,
    );
    if (decision.kind === "complete") {
      const outcome = await buildOutcome(input, decision.span, decision.excluded);
      return backend.setState(outcome, round);
    }
    minReachedAt = decision.minReachedAt;
    const until = Math.min(decision.wakeAt ?? Number.POSITIVE_INFINITY, nextLivenessCheck, input.deadline);
    const timeoutMs = Math.max(0, until - Date.now());
    const live = tickets - gone.size;
    // With maxNodes live slots (the previous round still draining) no join changes the decision: wake on
    // the next ticket past those taken, as before `readNewSlots`, and read no more slots for it. Waiting
    // for the first slot not read instead woke at once for every spare holding a ticket, one pass each
    // reading the markers of all slots before it.
    const full = live >= settings.maxNodes;
    const needed = live < settings.minNodes ? settings.minNodes : settings.maxNodes;
    const targetSlot = full ? total : tickets + Math.max(needed - live, 1) - 1;
    const woke = await sleepUntilChange(input, targetSlot, pending, timeoutMs);
    if (woke === "joined") known = full ? tickets : targetSlot + 1;
    else if (woke !== undefined) return woke;
    else known = tickets;
    if (Date.now() >= input.deadline) return undefined;
  }
}

/**
 * The outcome of round `input.round - 1`, or null when it is still undecided at the deadline. It should
 * be decided already (joiners only take tickets in the round after the last decided one), but deciding
 * `round` without it would skip the drain of the round before: never two completed rounds at once
 * matters more than this coordinator's progress, so it keeps waiting rather than going on without.
 */
async function previousOutcome(input: CoordinatorInput): Promise<RoundOutcome | null> {
  const { backend, round, signal, deadline } = input;
  for (;;) {
    const timeoutMs = Math.min(10_000, Math.max(0, deadline - Date.now()));
    const outcome = await backend.waitOutcome(round - 1, { timeoutMs, signal });
    if (outcome !== undefined) return outcome;
    if (Date.now() >= deadline) return null;
    input.logger.warn("the previous round is still undecided; waiting for it", { round });
  }
}

/**
 * Reads the markers of slots from `known` on, as far as the decision looks: `selectMembers` stops at the
 * first `maxNodes` live slots, so slots past them are spares whatever their state. Returns the slots read
 * (`tickets`, at most the ticket count), the gone ones among them, and the ticket count (`total`, at least
 * `known`). One round trip (two with liveness) when no newly read slot is gone, as before; one more per
 * batch of `maxNodes` while they are. A ticket counter a store client set far ahead thus costs reads of
 * `maxNodes` slots, not of every number below it.
 */
async function readNewSlots(
  input: CoordinatorInput,
  liveness: LivenessTracker,
  known: number,
  counted: number,
  goneKnown: Set<number>,
  checkLiveness: boolean,
): Promise<{ tickets: number; gone: Set<number>; total: number }> {
  const total = Math.max(counted, known);
  let tickets = known;
  let gone = goneKnown;
  while (tickets < total && tickets - gone.size < input.settings.maxNodes) {
    const next = Math.min(total, tickets + input.settings.maxNodes - (tickets - gone.size));
    gone = union(
      gone,
      await observeGone(input, liveness, input.round, range(next, tickets), checkLiveness, false),
    );
    tickets = next;
  }
  return { tickets, gone, total };
}

/**
 * The members of the previous round, whose drain this round waits for (their markers are read on every
 * pass). A round has at most `maxNodes` members: an outcome naming more (up to `MAX_SPAN`) was written by
 * some other store client, and reading it would have every pass read millions of markers.
 */
function previousMembers(outcome: Extract<RoundOutcome, { kind: "complete" }>, maxNodes: number): number[] {
  const size = outcome.span - outcome.excluded.length;
  if (size > maxNodes) {
    throw new RendezvousStateError(
      `the outcome of round ${outcome.round} names ${size} members, more than the ${maxNodes} nodes a ` +
        "round can have here: every node of a run must be given the same maximum (--nnodes MIN:MAX), " +
        "else the rendezvous state was written by another store client",
    );
  }
  return memberSlots(outcome);
}

/** Slots `from`..`to - 1` (`range(n)`: 0..n-1). */
function range(to: number, from = 0): number[] {
  return Array.from({ length: Math.max(0, to - from) }, (_, i) => from + i);
}

function union(a: ReadonlySet<number>, b: ReadonlySet<number>): Set<number> {
  return new Set([...a, ...b]);
}

/**
 * Gone slots of `round` among `slots`: those marked gone, plus (when `checkLiveness`) those whose
 * keep-alives stopped, which it marks dead so that everyone agrees.
 */
async function observeGone(
  input: CoordinatorInput,
  liveness: LivenessTracker,
  round: number,
  slots: readonly number[],
  checkLiveness: boolean,
  endsRound: boolean,
): Promise<Set<number>> {
  const { backend } = input;
  const reasons = await backend.goneSlots(round, slots);
  const gone = new Set(slots.filter((_, i) => reasons[i] !== undefined));
  if (!checkLiveness) return gone;
  const candidates = slots.filter((s) => !gone.has(s) && !(round === input.round && s === input.slot));
  const counters = await backend.keepAliveCounters(round, candidates);
  const now = Date.now();
  for (const [i, slot] of candidates.entries()) {
    if (!liveness.observe(`${round}/${slot}`, counters[i]!, now)) continue;
    const reason = await backend.markGone(round, slot, GoneReason.Dead, endsRound);
    input.logger.info("node lost: keep-alives stopped", { round, slot });
    input.onLost({ round, slot, reason });
    gone.add(slot);
  }
  return gone;
}

async function buildOutcome(
  input: CoordinatorInput,
  span: number,
  excluded: readonly number[],
): Promise<RoundOutcome> {
  let outcome: Extract<RoundOutcome, { kind: "complete" }> = {
    kind: "complete",
    round: input.round,
    span,
    excluded,
  };
  if (input.settings.stickyRanks) {
    const slots = memberSlots(outcome);
    const nodes = await input.backend.nodes(input.round, slots, { signal: input.signal });
    outcome = { ...outcome, ranks: assignStickyRanks(nodes.map((n) => n.prevRank)) };
  }
  if (input.master !== undefined && rankOf(outcome, input.slot)?.rank === 0) {
    outcome = { ...outcome, master: await input.master() };
  }
  return outcome;
}

/**
 * Sleeps until the round is decided elsewhere (returns the outcome), the join of `targetSlot` is
 * published (returns "joined"), every `pending` member of the previous round is gone, or `timeoutMs`
 * passes (both: undefined).
 */
async function sleepUntilChange(
  input: CoordinatorInput,
  targetSlot: number,
  pending: readonly number[],
  timeoutMs: number,
): Promise<RoundOutcome | "joined" | undefined> {
  const { backend, round } = input;
  const stop = new AbortController();
  const signal = AbortSignal.any([stop.signal, input.signal]);
  const wakes: Promise<RoundOutcome | "joined" | undefined>[] = [
    backend.waitOutcome(round, { timeoutMs, signal }),
    backend
      .waitJoined(round, targetSlot, { timeoutMs, signal })
      .then((joined) => (joined ? "joined" : undefined)),
  ];
  if (pending.length > 0) {
    wakes.push(backend.waitAllGone(round - 1, pending, { timeoutMs, signal }).then(() => undefined));
  }
  try {
    return await Promise.race(wakes);
  } finally {
    stop.abort();
    // The losers reject with AbortedError once cancelled; nothing waits for them.
    for (const w of wakes) w.catch(() => undefined);
  }
}
