/**
 * The chaos checker on hand-written histories: a sound one passes, and each broken property is found.
 */

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { checkSoak } from "./checker.js";
import { formedRound } from "./driver.js";
import {
  type FaultEvent,
  failureExcerpt,
  type NodeEvent,
  type Settle,
  type SoakRecord,
  timeline,
} from "./record.js";

const PARAMS = {
  backend: "test",
  seed: 1,
  durationMs: 1000,
  nodes: 3,
  minNodes: 2,
  maxNodes: 3,
  settleDeadlineMs: 1000,
  config: {},
};

/** `completed` + `members` reports of one round whose members are `ids` (rank = index), at time `t`. */
function round(r: number, ids: readonly string[], t: number): NodeEvent[] {
  return ids.flatMap((id, rank) => [
    { ev: "joining", id, t: t - 50 } as const,
    { ev: "completed", id, round: r, rank, worldSize: ids.length, t } as const,
    { ev: "members", id, round: r, members: ids, t: t + 1 } as const,
  ]);
}

function record(
  events: NodeEvent[],
  faults: FaultEvent[] = [],
  settles: Settle[] = [],
  noise: string[] = [],
): SoakRecord {
  return { params: PARAMS, startedAt: 0, endedAt: 10_000, events, faults, settles, noise };
}

function violations(rec: SoakRecord): readonly string[] {
  return checkSoak(rec).violations;
}

describe("chaos checker", () => {
  it("accepts a sound history: a member killed, the survivors re-form after it", () => {
    const events = [...round(0, ["a", "b", "c"], 100), ...round(1, ["a", "b"], 300)];
    const faults: FaultEvent[] = [{ kind: "kill", id: "c", t: 200 }];
    const settles: Settle[] = [
      { from: 200, healthy: ["a", "b"], expectRound: true, settledAt: 300, round: 1 },
    ];
    const verdict = checkSoak(record(events, faults, settles));
    assert.deepEqual(verdict.violations, []);
    assert.equal(verdict.stats.rounds, 2);
    assert.equal(verdict.stats.completions, 5);
    assert.deepEqual(verdict.stats.faults, { kill: 1 });
  });

  it("finds duplicate ranks, a world size out of bounds and disagreeing world sizes", () => {
    const dup = round(0, ["a", "b"], 100).map((e) => (e.ev === "completed" ? { ...e, rank: 0 } : e));
    assert.ok(violations(record(dup)).some((v) => v.includes("duplicate ranks")));
    assert.ok(violations(record(round(0, ["a"], 100))).some((v) => v.includes("outside 2..3")));
    const sizes = round(0, ["a", "b"], 100).map((e) =>
      e.id === "b" && e.ev === "completed" ? { ...e, worldSize: 3 } : e,
    );
    assert.ok(violations(record(sizes)).some((v) => v.includes("world sizes")));
  });

  it("finds a node that believes a membership the others do not", () => {
    const events = round(0, ["a", "b"], 100).map((e) =>
      e.id === "b" && e.ev === "members" ? { ...e, members: ["a", "c"] } : e,
    );
    assert.ok(violations(record(events)).some((v) => v.includes("b believes a,c")));
  });

  it("finds two completed rounds at once, but exempts a member that was hung", () => {
    // c never left round 0 when round 1 completed without it.
    const events = [...round(0, ["a", "b", "c"], 100), ...round(1, ["a", "b"], 300)];
    const found = violations(record(events));
    assert.ok(found.some((v) => v.includes("round 1 completed while c was still a member of round 0")));
    const hung: FaultEvent[] = [
      { kind: "stop", id: "c", t: 150 },
      { kind: "resume", id: "c", t: 400 },
    ];
    assert.deepEqual(violations(record(events, hung)), []);
  });

  it("exempts a rank 0 hung before it learned of its round, which re-formed without it meanwhile", () => {
    // Round 0: c is rank 0, stopped right after it set out to join; a and b give up on round 0 (no
    // bootstrap info) and form round 1; c resumes and only then reports round 0.
    const events: NodeEvent[] = [
      { ev: "joining", id: "c", t: 90 },
      ...round(1, ["a", "b"], 3000),
      { ev: "completed", id: "c", round: 0, rank: 0, worldSize: 3, t: 5002 },
      { ev: "joining", id: "c", t: 5004 },
    ];
    const stopped: FaultEvent[] = [
      { kind: "stop", id: "c", t: 95 },
      { kind: "resume", id: "c", t: 5000 },
    ];
    const found = violations(record(events));
    assert.ok(found.some((v) => v.includes("round 1 completed while c was still a member of round 0")));
    assert.ok(!violations(record(events, stopped)).some((v) => v.includes("still a member")));
  });

  it("exempts a member starved long enough to be counted dead, not one starved briefly", () => {
    const events = [...round(0, ["a", "b", "c"], 100), ...round(1, ["a", "b"], 3000)];
    const config = { keep_alive_interval: 0.5, keep_alive_max_attempt: 4 };
    const withStall = (ms: number): SoakRecord => ({
      ...record([...events, { ev: "stall", id: "c", from: 2900 - ms, t: 2900 }]),
      params: { ...PARAMS, config },
    });
    assert.deepEqual(checkSoak(withStall(1600)).violations, []);
    assert.equal(checkSoak(withStall(1600)).stats.stalls, 1);
    assert.ok(
      checkSoak(withStall(700)).violations.some((v) => v.includes("while c was still a member of round 0")),
    );
  });

  it("finds rounds going backwards and a round that did not form in time", () => {
    const events = [...round(1, ["a", "b"], 100), ...round(0, ["a", "b"], 300)];
    assert.ok(violations(record(events)).some((v) => v.includes("out of order")));
    const late: Settle[] = [{ from: 0, healthy: ["a", "b"], expectRound: true }];
    assert.ok(violations(record([], [], late)).some((v) => v.includes("no round of the 2 healthy nodes")));
    const fewer: Settle[] = [{ from: 0, healthy: ["a"], expectRound: false }];
    assert.deepEqual(violations(record([], [], fewer)), []);
    const stuck: Settle[] = [{ from: 0, healthy: ["a", "b"], expectRound: true, notStarted: ["b"] }];
    assert.deepEqual(violations(record([], [], stuck)), [
      "node processes b did not start (is the machine overloaded?)",
    ]);
  });

  it("prints a record as a timeline, in time order from the soak's start", () => {
    const events: NodeEvent[] = [
      { ev: "completed", id: "a", round: 0, rank: 0, worldSize: 2, t: 300 },
      { ev: "stall", id: "b", from: 100, t: 250 },
    ];
    const settles: Settle[] = [{ from: 400, healthy: ["a", "b"], expectRound: true }];
    assert.deepEqual(timeline(record(events, [{ kind: "kill", id: "b", t: 200 }], settles)), [
      "    200 driver: kill b",
      "    250 b stall ran nothing for 150 ms",
      "    300 a completed round 0 rank 0/2",
      "    400 driver: settle, healthy a,b: no round",
    ]);
  });

  it("excerpts the timeline a failure is read from: the failed settle's burst on, or the rounds named", () => {
    const events: NodeEvent[] = [
      ...round(0, ["a", "b"], 100),
      { ev: "log", id: "a", level: "info", message: "coordinator lost", t: 2100 },
      ...round(1, ["a", "b"], 9000),
    ];
    const settles: Settle[] = [
      { from: 150, healthy: ["a", "b"], expectRound: true, settledAt: 200, round: 0 },
      { from: 2000, healthy: ["a", "b"], expectRound: true },
    ];
    const rec = record(events, [{ kind: "stop", id: "b", t: 1000 }], settles);
    const liveness = failureExcerpt(rec, ["no round of the 2 healthy nodes (a, b) within 1000 ms"]);
    assert.equal(liveness[0], "   1000 driver: stop b");
    assert.ok(liveness.includes("   2100 a log info: coordinator lost"));
    assert.ok(liveness.includes("   9000 b completed round 1 rank 1/2"));
    const named = failureExcerpt(record(events), ["round 1 completed while a was still a member of round 0"]);
    assert.equal(named[0], "     50 a joining");
    assert.equal(named.at(-1), "   9001 b members round 1 members a,b");
    const short = failureExcerpt(rec, ["no round"], 4);
    assert.deepEqual(short.slice(0, 2), liveness.slice(0, 2));
    assert.equal(short[2], `(${liveness.length - 4} lines left out)`);
    assert.deepEqual(short.slice(3), liveness.slice(-2));
  });

  it("sees the healthy nodes' round formed while they stay in it, not once one set out again", () => {
    const events: NodeEvent[] = [...round(0, ["a", "b", "c"], 100), ...round(1, ["a", "b"], 300)];
    assert.equal(formedRound(events, ["a", "b"], 2), 1);
    assert.equal(formedRound(events, ["a", "b", "c"], 3), undefined);
    // Failing inside the round (the members exchange, the wait for its end) leaves a node in it.
    const inRound: NodeEvent = { ev: "error", id: "a", round: 1, code: "RDZV_TIMEOUT", t: 400 };
    const log: NodeEvent = { ev: "log", id: "b", level: "info", message: "x", t: 400 };
    assert.equal(formedRound([...events, inRound, log], ["a", "b"], 2), 1);
    const joinFailed: NodeEvent = { ev: "error", id: "a", code: "RDZV_TIMEOUT", t: 400 };
    assert.equal(formedRound([...events, joinFailed], ["a", "b"], 2), undefined);
    assert.equal(formedRound([...events, { ev: "joining", id: "b", t: 400 }], ["a", "b"], 2), undefined);
  });

  it("reports nodes that died of an error and stray output", () => {
    const died: NodeEvent[] = [{ ev: "error", id: "a", code: "X", message: "boom", fatal: true, t: 1 }];
    assert.ok(violations(record(died)).some((v) => v.includes("a died: X boom")));
    assert.ok(violations(record([], [], [], ["a stdout: hello"])).some((v) => v.includes("hello")));
  });
});
