import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { RECORD_LIMITS } from "./error-file.js";
import {
  boundForStore,
  decideAfterFailure,
  describeExit,
  exitCodeOf,
  exitStatus,
  type FailureSummary,
  formatFailure,
  groupState,
  type ObservedFailure,
  rootCause,
  summarizeFailure,
  type WorkerExit,
} from "./policy.js";

const exit = (localRank: number, over: Partial<WorkerExit> = {}): WorkerExit => ({
  localRank,
  rank: 10 + localRank,
  pid: 100 + localRank,
  exitCode: 0,
  signal: null,
  stoppedByAgent: false,
  exitedAtMs: 1_700_000_000_000 + localRank,
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

describe("rootCause", () => {
  const at = (localRank: number, seconds: number, over: Partial<WorkerExit> = {}): WorkerExit =>
    exit(localRank, { exitCode: 1, exitedAtMs: seconds * 1000 + 300, ...over });
  const error = (timestamp: number | undefined) => ({
    message: "E",
    file: "f",
    ...(timestamp === undefined ? {} : { timestamp }),
  });

  it("is the earliest error file timestamp, even when that worker was seen to exit later", () => {
    const failures: ObservedFailure[] = [
      { exit: at(0, 101), error: error(101) },
      { exit: at(1, 101), error: error(100) },
      { exit: at(2, 102) },
    ];
    assert.equal(rootCause(failures)?.exit.localRank, 1);
  });

  it("times a failure without error file by its exit, in whole seconds; ties go to the first exit", () => {
    // A worker that crashed (no file) in second 100 before one that raised in second 100: the crash.
    assert.equal(
      rootCause([{ exit: at(0, 100) }, { exit: at(1, 100), error: error(100) }])?.exit.localRank,
      0,
    );
    assert.equal(
      rootCause([{ exit: at(1, 100), error: error(100) }, { exit: at(0, 100) }])?.exit.localRank,
      1,
    );
    // A crash a second later than the recorded error is not the root cause.
    assert.equal(
      rootCause([{ exit: at(0, 101) }, { exit: at(1, 101), error: error(100) }])?.exit.localRank,
      1,
    );
    assert.equal(rootCause([{ exit: at(3, 7) }])?.exit.localRank, 3);
    assert.equal(rootCause([]), undefined);
    // An error file without timestamp counts as its exit.
    assert.equal(
      rootCause([{ exit: at(0, 50) }, { exit: at(1, 49), error: error(undefined) }])?.exit.localRank,
      1,
    );
  });

  it("gives torchrun's exit status: the code, or minus the signal number", () => {
    assert.equal(exitStatus({ exitCode: 3, signal: null }), 3);
    assert.equal(exitStatus({ exitCode: null, signal: "SIGKILL" }), -9);
    assert.equal(exitStatus({ exitCode: null, signal: "SIGSEGV" }), -11);
  });
});

describe("failure summary with a worker error", () => {
  const traceback = 'Traceback (most recent call last):\n  File "w.py", line 5, in main\nValueError: boom\n';
  const withError: FailureSummary = {
    ...summary,
    exitCode: 1,
    error: {
      message: "ValueError: boom",
      traceback,
      timestamp: 1_700_000_000,
      file: "/tmp/d/attempt_1/2/error.json",
    },
  };

  it("shows torchrun's root-cause fields and the traceback instead of the stderr tail", () => {
    const text = formatFailure(withError);
    assert.match(
      text,
      /first failure: rank 6 \(local rank 2 on node 1, node1, pid 4242, round 4\): exit code 1\n/,
    );
    assert.match(text, /\n {4}error {5}: ValueError: boom\n/);
    assert.match(text, /\n {4}time {6}: 2023-11-14T22:13:20Z\n/);
    assert.match(text, /\n {4}error file: \/tmp\/d\/attempt_1\/2\/error\.json\n/);
    assert.match(
      text,
      /\n {4}traceback : Traceback \(most recent call last\):\n {18}File "w\.py", line 5, in main\n {16}ValueError: boom$/,
    );
    assert.doesNotMatch(text, /last stderr lines/);
  });

  it("keeps the stderr tail for the plain form (no traceback) and shows notes and other failures", () => {
    const text = formatFailure({
      ...summary,
      error: { message: "CUDA error: out of memory", file: "/f" },
      errorFileNote: 'error file /f: timestamp "x" is not whole seconds; ignored',
      otherFailures: [
        { rank: 5, localRank: 1, pid: 77, exitCode: 1, signal: null, message: "RuntimeError: peer gone" },
        { rank: 4, localRank: 0, pid: 76, exitCode: null, signal: "SIGSEGV" },
      ],
    });
    assert.match(text, /error {5}: CUDA error: out of memory\n/);
    assert.match(text, /note {6}: error file \/f: timestamp "x" is not whole seconds; ignored\n/);
    assert.match(text, /last stderr lines:\n {4}Traceback/);
    assert.match(
      text,
      /other failures:\n {4}rank 5 \(local rank 1, pid 77\): exit code 1: RuntimeError: peer gone\n/,
    );
    assert.match(text, / {4}rank 4 \(local rank 0, pid 76\): killed by signal SIGSEGV$/);
  });

  it("falls back to the stderr tail with a note when the error file was not usable", () => {
    const text = formatFailure({ ...summary, errorFileNote: "error file /f is not JSON (Unexpected end)" });
    assert.match(text, /note {6}: error file \/f is not JSON \(Unexpected end\)\n {2}last stderr lines:/);
  });

  it("summarizes the root cause and lists the others in short", () => {
    const root: ObservedFailure = { exit: exit(2, { exitCode: 1 }), error: withError.error! };
    const other: ObservedFailure = {
      exit: exit(0, { exitCode: 1 }),
      error: { message: "RuntimeError: a\nlong", file: "g" },
    };
    const context = { groupRank: 1, node: "node1", round: 4, restarts: 0, maxRestarts: 0 };
    const s = summarizeFailure(root, [other, root], ["tail"], context);
    assert.equal(s.rank, 12);
    assert.deepEqual(s.error, withError.error);
    assert.deepEqual(s.otherFailures, [
      { rank: 10, localRank: 0, pid: 100, exitCode: 1, signal: null, message: "RuntimeError: a" },
    ]);
    assert.equal(summarizeFailure(root, [root], [], context).otherFailures, undefined);
  });

  it("cuts the error for the store's record, and leaves a summary without one as it is", () => {
    const huge: FailureSummary = {
      ...withError,
      error: { ...withError.error!, traceback: `${"x".repeat(200_000)}\nValueError: boom\n` },
    };
    const bounded = boundForStore(huge);
    assert.ok(bounded.error!.traceback!.length < RECORD_LIMITS.tracebackChars + 200);
    assert.match(
      bounded.error!.traceback!,
      /characters left out; the whole text is in the report of node node1/,
    );
    assert.ok(JSON.stringify(bounded).length < 64 * 1024);
    assert.equal(boundForStore(summary), summary);
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
