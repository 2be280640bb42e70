/**
 * The coordinator of a round: one node per round (the first to join, or whoever takes over when it dies)
 * watches joins, leaves and keep-alives, feeds what it sees to the pure `decideRound`, and writes the
 * outcome. It sleeps on the store until something that could change the decision happens: the join that
 * would reach min or max, the previous round draining, a last-call or keep-alive deadline.
 */

import type { Logger } from "../log.js";
import type { RendezvousBackend } from "./backend.js";
import {
  assignStickyRanks,
  decideRound,
  GoneReason,
  LivenessTracker,
  memberSlots,
  type RoundDecision,
  type RoundOutcome,
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
}

const range = (n: number): number[] => Array.from({ length: n }, (_, i) => i);

/**
 * Coordinates `round` until it is decided (by this node or another) or the deadline passes (then
 * resolves `undefined`).
 */
export async function coordinateRound(input: CoordinatorInput): Promise<RoundOutcome | undefined> {
  const { backend, round, settings, signal } = input;
  const deadAfterMs = settings.keepAliveIntervalMs * settings.keepAliveMaxAttempts;
  const liveness = new LivenessTracker(deadAfterMs);
  const state = await backend.getState({ signal });
  // Decided already (its outcome exists): read it. A zero timeout would not do, since a remote store may
  // time out a call before its reply comes back even when the key is there.
  if (state.openRound !== round) {
    return backend.waitOutcome(round, { timeoutMs: Math.max(input.deadline - Date.now(), 1000), signal });
  }
  const previous = state.last?.kind === "complete" ? memberSlots(state.last) : undefined;
  let minReachedAt: number | undefined;
  let nextLivenessCheck = Date.now() + settings.keepAliveIntervalMs;
  for (;;) {
    const now = Date.now();
    const checkLiveness = now >= nextLivenessCheck;
    if (checkLiveness) nextLivenessCheck = now + settings.keepAliveIntervalMs;
    const tickets = await backend.ticketCount(round, { signal });
    const gone = await observeGone(input, liveness, round, range(tickets), checkLiveness, false);
    let pending: number[] = [];
    if (previous !== undefined) {
      const prevGone = await observeGone(input, liveness, round - 1, previous, checkLiveness, true);
      pending = previous.filter((s) => !prevGone.has(s));
    }
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
      return backend.setState(outcome, round, { signal });
    }
    minReachedAt = decision.minReachedAt;
    const until = Math.min(decision.wakeAt ?? Number.POSITIVE_INFINITY, nextLivenessCheck, input.deadline);
    const timeoutMs = Math.max(0, until - Date.now());
    const live = tickets - gone.size;
    const needed = live < settings.minNodes ? settings.minNodes : settings.maxNodes;
    const targetSlot = tickets + Math.max(needed - live, 1) - 1;
    const decided = await sleepUntilChange(input, targetSlot, pending, timeoutMs);
    if (decided !== undefined) return decided;
    if (Date.now() >= input.deadline) return undefined;
  }
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
  const { backend, signal } = input;
  const reasons = await backend.goneSlots(round, slots, { signal });
  const gone = new Set(slots.filter((_, i) => reasons[i] !== undefined));
  if (!checkLiveness) return gone;
  const candidates = slots.filter((s) => !gone.has(s) && !(round === input.round && s === input.slot));
  const counters = await backend.keepAliveCounters(round, candidates, { signal });
  const now = Date.now();
  for (const [i, slot] of candidates.entries()) {
    if (!liveness.observe(`${round}/${slot}`, counters[i]!, now)) continue;
    const reason = await backend.markGone(round, slot, GoneReason.Dead, endsRound, { signal });
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
  const base = { kind: "complete" as const, round: input.round, span, excluded };
  if (!input.settings.stickyRanks) return base;
  const slots = memberSlots(base);
  const nodes = await input.backend.nodes(input.round, slots, { signal: input.signal });
  return { ...base, ranks: assignStickyRanks(nodes.map((n) => n.prevRank)) };
}

/**
 * Sleeps until the round is decided elsewhere (returns the outcome), the join of `targetSlot` is
 * published, every `pending` member of the previous round is gone, or `timeoutMs` passes.
 */
async function sleepUntilChange(
  input: CoordinatorInput,
  targetSlot: number,
  pending: readonly number[],
  timeoutMs: number,
): Promise<RoundOutcome | undefined> {
  const { backend, round } = input;
  const stop = new AbortController();
  const signal = AbortSignal.any([stop.signal, input.signal]);
  const wakes: Promise<RoundOutcome | undefined>[] = [
    backend.waitOutcome(round, { timeoutMs, signal }),
    backend.waitJoined(round, targetSlot, { timeoutMs, signal }).then(() => undefined),
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
