import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  decideAfterFailure,
  describeExit,
  exitCodeOf,
  type FailureSummary,
  formatFailure,
  groupState,
  type WorkerExit,
} from "./policy.js";

const exit = (localRank: number, over: Partial<WorkerExit> = {}): WorkerExit => ({
  localRank,
  rank: 10 + localRank,
  pid: 100 + localRank,
  exitCode: 0,
  signal: null,
  stoppedByAgent: false,
  ...over,
});

describe("groupState", () => {
  it("runs until every worker exited 0", () => {
    assert.deepEqual(groupState(3, []), { kind: "running" });
    assert.deepEqual(groupState(3, [exit(0), exit(2)]), { kind: "running" });
    assert.deepEqual(groupState(3, [exit(0), exit(2), exit(1)]), { kind: "succeeded" });
  });

  it("fails at the first failure, reporting that one", () => {
    const first = exit(1, { exitCode: 7 });
    const state = groupState(3, [exit(0), first, exit(2, { exitCode: null, signal: "SIGKILL" })]);
    assert.deepEqual(state, { kind: "failed", first });
    assert.equal(groupState(2, [exit(0, { exitCode: null, signal: "SIGSEGV" })]).kind, "failed");
  });

  it("does not count workers the agent stopped as failures or successes", () => {
    const stopped = exit(0, { exitCode: null, signal: "SIGTERM", stoppedByAgent: true });
    assert.deepEqual(groupState(2, [stopped, exit(1)]), { kind: "running" });
    assert.deepEqual(groupState(1, [exit(0, { stoppedByAgent: true })]), { kind: "running" });
  });
});

describe("decideAfterFailure", () => {
  it("restarts while the job-wide count is within the budget, gives up past it", () => {
    assert.deepEqual(decideAfterFailure({ won: true, restarts: 1 }, 2), { kind: "restart", restarts: 1 });
    assert.deepEqual(decideAfterFailure({ won: true, restarts: 2 }, 2), { kind: "restart", restarts: 2 });
    assert.deepEqual(decideAfterFailure({ won: true, restarts: 3 }, 2), { kind: "give-up", restarts: 3 });
  });

  it("gives up at the first failure with --max-restarts 0 (torchrun's default)", () => {
    assert.equal(decideAfterFailure({ won: true, restarts: 1 }, 0).kind, "give-up");
  });

  it("follows when another agent claimed the same attempt's failure, whatever the count", () => {
    assert.deepEqual(decideAfterFailure({ won: false, restarts: 99 }, 0), { kind: "follow" });
  });
});

const summary: FailureSummary = {
  rank: 6,
  localRank: 2,
  groupRank: 1,
  node: "node1",
  pid: 4242,
  exitCode: 7,
  signal: null,
  stderrTail: ["Traceback (most recent call last):", "RuntimeError: boom"],
  round: 4,
  restarts: 1,
  maxRestarts: 1,
};

describe("failure summary", () => {
  it("names the rank, where it ran, how it ended and its last stderr lines", () => {
    const text = formatFailure(summary);
    assert.match(text, /job failed after 1 restart \(--max-restarts 1\)/);
    assert.match(text, /rank 6 \(local rank 2 on node 1, node1, pid 4242, round 4\): exit code 7/);
    assert.match(text, /last stderr lines:\n {4}Traceback.*\n {4}RuntimeError: boom$/);
  });

  it("describes signals, spawn errors and silent workers", () => {
    assert.equal(describeExit({ exitCode: null, signal: "SIGKILL" }), "killed by signal SIGKILL");
    assert.equal(
      describeExit({ exitCode: 127, signal: null, spawnError: "spawn nope ENOENT" }),
      "could not start: spawn nope ENOENT",
    );
    const text = formatFailure({
      ...summary,
      stderrTail: [],
      restarts: 0,
      exitCode: null,
      signal: "SIGSEGV",
    });
    assert.match(text, /after 0 restarts/);
    assert.match(text, /killed by signal SIGSEGV\n {2}\(no stderr output\)/);
  });
});

describe("exitCodeOf", () => {
  it("maps results to 0, 1 and 128 + signal number", () => {
    assert.equal(exitCodeOf({ kind: "succeeded", round: 0, restarts: 0 }), 0);
    assert.equal(exitCodeOf({ kind: "failed", summary, local: true }), 1);
    assert.equal(exitCodeOf({ kind: "closed" }), 1);
    assert.equal(exitCodeOf({ kind: "stopped", signal: "SIGINT" }), 130);
    assert.equal(exitCodeOf({ kind: "stopped", signal: "SIGTERM" }), 143);
    assert.equal(exitCodeOf({ kind: "stopped", signal: undefined }), 1);
  });
});
