/** The pure round rules: decideRound, member selection and ranks, sticky ranks, the outcome codec, liveness. */

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { ErrorCode } from "../errors.js";
import {
  assignStickyRanks,
  decideRound,
  decodeOutcome,
  encodeOutcome,
  LivenessTracker,
  memberSlots,
  type RoundOutcome,
  type RoundSettings,
  type RoundView,
  rankOf,
  selectMembers,
  slotAt,
} from "./round.js";

const isStateError = (err: unknown): boolean => (err as { code?: string }).code === ErrorCode.State;

/** Settings with 1 <= min <= max. */
const settingsArb: fc.Arbitrary<RoundSettings> = fc
  .record({
    minNodes: fc.integer({ min: 1, max: 6 }),
    extra: fc.integer({ min: 0, max: 4 }),
    lastCallTimeoutMs: fc.integer({ min: 0, max: 1000 }),
  })
  .map(({ minNodes, extra, lastCallTimeoutMs }) => ({
    minNodes,
    maxNodes: minNodes + extra,
    lastCallTimeoutMs,
  }));

/** A view: tickets, a subset of them gone, maybe a previous round, a clock and maybe a min-reached time. */
const viewArb: fc.Arbitrary<RoundView> = fc
  .record({
    tickets: fc.integer({ min: 0, max: 14 }),
    goneBits: fc.array(fc.boolean(), { minLength: 14, maxLength: 14 }),
    previous: fc.option(fc.boolean(), { nil: undefined }),
    now: fc.integer({ min: 0, max: 10_000 }),
    minAgo: fc.option(fc.integer({ min: 0, max: 2000 }), { nil: undefined }),
  })
  .map(({ tickets, goneBits, previous, now, minAgo }) => {
    const gone = new Set(goneBits.flatMap((g, slot) => (g && slot < tickets ? [slot] : [])));
    return {
      now,
      tickets,
      gone,
      ...(previous === undefined ? {} : { previous: { drained: previous } }),
      ...(minAgo === undefined ? {} : { minReachedAt: now - minAgo }),
    };
  });

const liveCount = (view: RoundView): number => view.tickets - view.gone.size;

/** A complete outcome built the way the coordinator builds one, optionally with sticky ranks. */
const completeArb: fc.Arbitrary<Extract<RoundOutcome, { kind: "complete" }>> = fc
  .record({
    round: fc.nat({ max: 1_000_000 }),
    tickets: fc.integer({ min: 1, max: 20 }),
    goneBits: fc.array(fc.boolean(), { minLength: 20, maxLength: 20 }),
    maxNodes: fc.integer({ min: 1, max: 20 }),
    sticky: fc.boolean(),
    seed: fc.array(fc.option(fc.integer({ min: -1, max: 22 }), { nil: undefined }), { maxLength: 20 }),
    master: fc.option(
      fc
        .tuple(fc.constantFrom("10.0.0.1", "::1", "host-a"), fc.integer({ min: 1, max: 65_535 }))
        .map(([addr, port]) => ({ addr, port })),
      { nil: undefined },
    ),
  })
  .map(({ round, tickets, goneBits, maxNodes, sticky, seed, master }) => {
    const gone = new Set(goneBits.flatMap((g, slot) => (g && slot < tickets ? [slot] : [])));
    const { span, excluded, size } = selectMembers(tickets, gone, maxNodes);
    const base = {
      kind: "complete" as const,
      round,
      span,
      excluded,
      ...(master === undefined ? {} : { master }),
    };
    if (!sticky) return base;
    return { ...base, ranks: assignStickyRanks(Array.from({ length: size }, (_, i) => seed[i])) };
  });

const outcomeArb: fc.Arbitrary<RoundOutcome> = fc.oneof(
  completeArb,
  fc.nat({ max: 1_000_000 }).map((round) => ({ kind: "closed" as const, round })),
);

/** Asserts that the members of `outcome` have ranks 0..W-1, each once, and nobody else has a rank. */
function assertDenseRanks(outcome: RoundOutcome): void {
  const members = memberSlots(outcome);
  const seen = new Set<number>();
  for (const slot of members) {
    const place = rankOf(outcome, slot);
    assert.ok(place !== undefined, `member slot ${slot} has no rank`);
    assert.equal(place.worldSize, members.length);
    assert.ok(
      place.rank >= 0 && place.rank < members.length,
      `rank ${place.rank} out of 0..${members.length - 1}`,
    );
    assert.ok(!seen.has(place.rank), `rank ${place.rank} given twice`);
    seen.add(place.rank);
  }
  if (outcome.kind !== "complete") return;
  for (const slot of outcome.excluded) assert.equal(rankOf(outcome, slot), undefined);
  for (let slot = outcome.span; slot < outcome.span + 3; slot++)
    assert.equal(rankOf(outcome, slot), undefined);
}

describe("decideRound", () => {
  const settings: RoundSettings = { minNodes: 2, maxNodes: 4, lastCallTimeoutMs: 100 };
  const view = (tickets: number, extra: Partial<RoundView> = {}): RoundView => ({
    now: 1000,
    tickets,
    gone: new Set(),
    ...extra,
  });

  it("completes at once with maxNodes live nodes", () => {
    assert.deepEqual(decideRound(view(4), settings), { kind: "complete", span: 4, excluded: [], size: 4 });
  });

  it("takes the first maxNodes live slots and leaves later tickets out", () => {
    const decision = decideRound(view(7, { gone: new Set([1, 2]) }), settings);
    assert.deepEqual(decision, { kind: "complete", span: 6, excluded: [1, 2], size: 4 });
  });

  it("waits below minNodes", () => {
    const decision = decideRound(view(3, { gone: new Set([0, 2]) }), settings);
    assert.equal(decision.kind, "wait");
    assert.equal(decision.kind === "wait" && decision.wakeAt, undefined);
  });

  it("starts the last call when min is reached and completes when it expires", () => {
    const first = decideRound(view(2), settings);
    assert.deepEqual(first, {
      kind: "wait",
      wakeAt: 1100,
      minReachedAt: 1000,
      reason: "last call: 2 nodes joined, waiting for more",
    });
    const early = decideRound(view(3, { now: 1099, minReachedAt: 1000 }), settings);
    assert.equal(early.kind, "wait");
    assert.equal(early.kind === "wait" && early.wakeAt, 1100);
    assert.deepEqual(decideRound(view(3, { now: 1100, minReachedAt: 1000 }), settings), {
      kind: "complete",
      span: 3,
      excluded: [],
      size: 3,
    });
  });

  it("completes a re-rendezvous at min at once once the previous round drained", () => {
    const decision = decideRound(view(2, { previous: { drained: true } }), settings);
    assert.deepEqual(decision, { kind: "complete", span: 2, excluded: [], size: 2 });
  });

  it("never completes while the previous round still runs, even at max", () => {
    const decision = decideRound(view(9, { previous: { drained: false }, minReachedAt: 0 }), settings);
    assert.equal(decision.kind, "wait");
  });

  it("holds its rules for any view (property)", () => {
    fc.assert(
      fc.property(viewArb, settingsArb, (v, s) => {
        const decision = decideRound(v, s);
        const live = liveCount(v);
        if (v.previous?.drained === false) {
          assert.equal(decision.kind, "wait");
          return;
        }
        if (live < s.minNodes) {
          assert.equal(decision.kind, "wait");
          return;
        }
        if (live >= s.maxNodes || v.previous?.drained === true) {
          assert.equal(decision.kind, "complete");
        }
        if (decision.kind === "complete") {
          assert.ok(decision.size >= s.minNodes && decision.size <= s.maxNodes);
          assert.equal(decision.size, Math.min(live, s.maxNodes));
          assert.ok(decision.span <= v.tickets);
          assert.equal(decision.span - decision.excluded.length, decision.size);
          for (const e of decision.excluded) assert.ok(v.gone.has(e) && e < decision.span);
          assert.deepEqual(
            [...decision.excluded],
            [...decision.excluded].sort((a, b) => a - b),
          );
          if (v.previous === undefined && live < s.maxNodes) {
            assert.ok(
              v.now >= (v.minReachedAt ?? v.now) + s.lastCallTimeoutMs,
              "completed before the last call",
            );
          }
        } else {
          // Only a first round between min and max waits for its last call, and it says until when.
          assert.equal(v.previous, undefined);
          assert.ok(live < s.maxNodes);
          const since = v.minReachedAt ?? v.now;
          assert.equal(decision.minReachedAt, since);
          assert.equal(decision.wakeAt, since + s.lastCallTimeoutMs);
          assert.ok(v.now < since + s.lastCallTimeoutMs);
        }
      }),
    );
  });

  it("a coordinator that follows wakeAt completes exactly when the last call expires (property)", () => {
    fc.assert(
      fc.property(settingsArb, fc.integer({ min: 0, max: 10_000 }), (s, start) => {
        fc.pre(s.minNodes < s.maxNodes);
        let now = start;
        let minReachedAt: number | undefined;
        for (let step = 0; step < 3; step++) {
          const v = {
            now,
            tickets: s.minNodes,
            gone: new Set<number>(),
            ...(minReachedAt === undefined ? {} : { minReachedAt }),
          };
          const d = decideRound(v, s);
          if (d.kind === "complete") {
            assert.equal(now, start + s.lastCallTimeoutMs);
            return;
          }
          minReachedAt = d.minReachedAt;
          now = d.wakeAt ?? now;
        }
        assert.fail("never completed");
      }),
    );
  });
});

describe("selectMembers / rankOf / memberSlots", () => {
  it("slotAt(i) is the i-th member slot (property)", () => {
    fc.assert(
      fc.property(completeArb, (outcome) => {
        const slots = memberSlots(outcome);
        assert.deepEqual(
          slots.map((_, i) => slotAt(outcome, i)),
          slots,
        );
      }),
    );
  });

  it("gives members dense unique ranks in slot order and no rank to anyone else (property)", () => {
    fc.assert(
      fc.property(completeArb, (outcome) => {
        assertDenseRanks(outcome);
        const slots = memberSlots(outcome);
        assert.equal(slots.length, outcome.span - outcome.excluded.length);
        if (outcome.ranks === undefined) {
          for (const [i, slot] of slots.entries()) assert.equal(rankOf(outcome, slot)?.rank, i);
        } else {
          for (const [i, slot] of slots.entries())
            assert.equal(rankOf(outcome, slot)?.rank, outcome.ranks[i]);
        }
      }),
    );
  });

  it("selects at most maxNodes live slots, all live, the earliest ones (property)", () => {
    fc.assert(
      fc.property(viewArb, fc.integer({ min: 1, max: 10 }), (v, maxNodes) => {
        const { span, excluded, size } = selectMembers(v.tickets, v.gone, maxNodes);
        assert.equal(size, Math.min(liveCount(v), maxNodes));
        const members = memberSlots({ kind: "complete", round: 0, span, excluded });
        assert.equal(members.length, size);
        for (const m of members) assert.ok(!v.gone.has(m));
        for (let slot = 0; slot < span; slot++) assert.equal(v.gone.has(slot), excluded.includes(slot));
        // Nobody live was skipped in favour of a later ticket.
        if (size === maxNodes && span > 0) assert.ok(!v.gone.has(span - 1));
      }),
    );
  });

  it("has no members in a closed outcome", () => {
    const closed: RoundOutcome = { kind: "closed", round: 3 };
    assert.deepEqual(memberSlots(closed), []);
    assert.equal(rankOf(closed, 0), undefined);
  });
});

describe("assignStickyRanks", () => {
  it("keeps valid previous ranks and fills the rest in slot order", () => {
    assert.deepEqual(assignStickyRanks([2, undefined, 0]), [2, 1, 0]);
    assert.deepEqual(assignStickyRanks([1, 1, 7, -1]), [1, 0, 2, 3]);
    assert.deepEqual(assignStickyRanks([]), []);
  });

  it("returns a permutation that keeps every first valid claim (property)", () => {
    fc.assert(
      fc.property(
        fc.array(fc.option(fc.integer({ min: -2, max: 12 }), { nil: undefined }), { maxLength: 12 }),
        (prev) => {
          const ranks = assignStickyRanks(prev);
          assert.equal(ranks.length, prev.length);
          assert.deepEqual(
            [...ranks].sort((a, b) => a - b),
            prev.map((_, i) => i),
          );
          const claimed = new Set<number>();
          prev.forEach((p, i) => {
            if (p === undefined || p < 0 || p >= prev.length || claimed.has(p)) return;
            claimed.add(p);
            assert.equal(ranks[i], p, `slot ${i} lost its previous rank ${p}`);
          });
        },
      ),
    );
  });
});

describe("encodeOutcome / decodeOutcome", () => {
  it("round-trips every outcome (property)", () => {
    fc.assert(
      fc.property(outcomeArb, (outcome) => {
        assert.deepEqual(decodeOutcome(encodeOutcome(outcome)), outcome);
      }),
    );
  });

  it("rejects corrupt input with code RDZV_STATE", () => {
    const corrupt = [
      "",
      "not json",
      "null",
      "[]",
      "7",
      '"x"',
      "{}",
      '{"r":-1,"s":1,"x":[]}',
      '{"r":1.5,"s":1,"x":[]}',
      '{"r":"0","s":1,"x":[]}',
      '{"r":0}',
      '{"r":0,"s":-1,"x":[]}',
      '{"r":0,"s":2}',
      '{"r":0,"s":2,"x":"1"}',
      '{"r":0,"s":2,"x":[2]}',
      '{"r":0,"s":2,"x":[-1]}',
      '{"r":0,"s":2,"x":[0.5]}',
      '{"r":0,"s":2,"x":[],"k":[0]}',
      '{"r":0,"s":2,"x":[],"k":"01"}',
      '{"r":0,"s":2,"x":[],"k":[0,"1"]}',
      // Duplicate or unordered exclusions would give ranks outside 0..W-1.
      '{"r":0,"s":3,"x":[1,1]}',
      '{"r":0,"s":4,"x":[2,1]}',
      // Sticky ranks must be a permutation of 0..W-1.
      '{"r":0,"s":2,"x":[],"k":[0,0]}',
      '{"r":0,"s":2,"x":[],"k":[1,2]}',
      '{"r":0,"s":2,"x":[],"k":[-1,0]}',
      // The bootstrap address must be [non-empty host, port 1..65535].
      '{"r":0,"s":1,"x":[],"m":["h"]}',
      '{"r":0,"s":1,"x":[],"m":["",80]}',
      '{"r":0,"s":1,"x":[],"m":["h",0]}',
      '{"r":0,"s":1,"x":[],"m":["h",65536]}',
      '{"r":0,"s":1,"x":[],"m":["h","80"]}',
      '{"r":0,"s":1,"x":[],"m":{"addr":"h","port":80}}',
    ];
    for (const text of corrupt) {
      assert.throws(() => decodeOutcome(text), isStateError, `accepted ${text}`);
    }
  });

  it("either rejects with RDZV_STATE or yields an outcome with dense ranks, for any input (property)", () => {
    const jsonish = fc.oneof(
      fc.string(),
      fc.json(),
      fc
        .record({
          r: fc.oneof(fc.integer({ min: -2, max: 5 }), fc.constant("0")),
          s: fc.integer({ min: -1, max: 6 }),
          x: fc.array(fc.integer({ min: -1, max: 7 }), { maxLength: 6 }),
          k: fc.option(fc.array(fc.integer({ min: -1, max: 7 }), { maxLength: 6 }), { nil: undefined }),
        })
        .map((o) => JSON.stringify(o)),
    );
    fc.assert(
      fc.property(jsonish, (text) => {
        let outcome: RoundOutcome;
        try {
          outcome = decodeOutcome(text);
        } catch (err) {
          assert.ok(isStateError(err), `threw ${String(err)}`);
          return;
        }
        assertDenseRanks(outcome);
      }),
      { numRuns: 2000 },
    );
  });
});

describe("LivenessTracker", () => {
  it("declares an id dead once its counter stood still for deadAfterMs", () => {
    const t = new LivenessTracker(100);
    assert.equal(t.observe("a", "1", 0), false);
    assert.equal(t.observe("a", "1", 99), false);
    assert.equal(t.observe("a", "1", 100), true);
    assert.equal(t.observe("a", "1", 500), true);
  });

  it("restarts the clock whenever the counter moves", () => {
    const t = new LivenessTracker(100);
    t.observe("a", "1", 0);
    assert.equal(t.observe("a", "2", 90), false);
    assert.equal(t.observe("a", "2", 180), false);
    assert.equal(t.observe("a", "2", 190), true);
  });

  it("treats a counter that was never written as standing still", () => {
    const t = new LivenessTracker(50);
    assert.equal(t.observe("a", "", 0), false);
    assert.equal(t.observe("a", "", 60), true);
  });

  it("reports the earliest deadline and forgets ids", () => {
    const t = new LivenessTracker(100);
    assert.equal(t.nextDeadline(), undefined);
    t.observe("a", "1", 50);
    t.observe("b", "1", 10);
    assert.equal(t.nextDeadline(), 110);
    t.forget("b");
    assert.equal(t.nextDeadline(), 150);
    assert.equal(t.observe("b", "1", 500), false, "a forgotten id starts over");
  });

  it("tracks ids independently (property)", () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.record({ id: fc.constantFrom("a", "b", "c"), value: fc.constantFrom("1", "2"), dt: fc.nat(60) }),
          {
            maxLength: 40,
          },
        ),
        (steps) => {
          const t = new LivenessTracker(100);
          const model = new Map<string, { value: string; since: number }>();
          let now = 0;
          for (const { id, value, dt } of steps) {
            now += dt;
            const last = model.get(id);
            const expected = last !== undefined && last.value === value && now - last.since >= 100;
            if (last === undefined || last.value !== value) model.set(id, { value, since: now });
            assert.equal(t.observe(id, value, now), expected);
          }
        },
      ),
    );
  });
});
