import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { agentErrorRecord } from "./agent-error-record.js";
import type { FailureSummary } from "./policy.js";

const summary: FailureSummary = {
  rank: 3,
  localRank: 1,
  groupRank: 1,
  node: "n1",
  pid: 9,
  exitCode: 7,
  signal: null,
  stderrTail: ["bad shard"],
  round: 0,
  restarts: 0,
  maxRestarts: 0,
};
const WORKER_RECORD = {
  message: { message: "ValueError: v", extraInfo: { py_callstack: "tb\n", timestamp: "100" } },
};
const error = { message: "ValueError: v", traceback: "tb\n", timestamp: 100, file: "/f" };

describe("agentErrorRecord", () => {
  it("writes nothing on success", () => {
    assert.equal(
      agentErrorRecord({ kind: "succeeded", round: 0, restarts: 0 }, undefined, undefined, 5),
      undefined,
    );
  });

  it("copies the local root cause's file with its exit status (negative for a signal)", () => {
    const failed = { kind: "failed", summary: { ...summary, error }, local: true } as const;
    const root = { data: WORKER_RECORD, exit: { exitCode: null, signal: "SIGSEGV" } };
    assert.deepEqual(agentErrorRecord(failed, root, undefined, 5), {
      message: { ...WORKER_RECORD.message, errorCode: -11 },
    });
  });

  it("rebuilds another node's error from the store's record in the worker's form", () => {
    const failed = { kind: "failed", summary: { ...summary, error }, local: false } as const;
    assert.deepEqual(agentErrorRecord(failed, undefined, undefined, 5), {
      message: { ...WORKER_RECORD.message, errorCode: 7 },
    });
  });

  it("without a worker error file, records the failure with the report as its traceback", () => {
    const record = agentErrorRecord({ kind: "failed", summary, local: true }, undefined, undefined, 5) as {
      message: { message: string; extraInfo: { py_callstack: string; timestamp: string }; errorCode: number };
    };
    assert.equal(record.message.message, "rank 3 (local rank 1 on node 1, n1) failed: exit code 7");
    assert.match(record.message.extraInfo.py_callstack, /first failure: rank 3 .*\n.*\n {4}bad shard/);
    assert.equal(record.message.extraInfo.timestamp, "5");
    assert.equal(record.message.errorCode, 7);
  });

  it("records a closed rendezvous, a stop and a thrown error as torchrun records its exception", () => {
    const message = (r: Record<string, unknown> | undefined) =>
      (r?.message as { message?: string } | undefined)?.message ?? "";
    assert.match(
      message(agentErrorRecord({ kind: "closed" }, undefined, undefined, 5)),
      /^RendezvousClosedError: /,
    );
    assert.equal(
      message(
        agentErrorRecord({ kind: "closed", reason: "node 1 starts 3 workers" }, undefined, undefined, 5),
      ),
      "RendezvousClosedError: the rendezvous was closed by another node: node 1 starts 3 workers",
    );
    assert.equal(
      message(agentErrorRecord({ kind: "stopped", signal: "SIGTERM" }, undefined, undefined, 5)),
      "SignalException: stopped by SIGTERM",
    );
    const thrown = new RangeError("join timed out");
    const record = agentErrorRecord(undefined, undefined, thrown, 5);
    assert.equal(message(record), "RangeError: join timed out");
    assert.match(JSON.stringify(record), /agent-error-record\.test/);
  });
});
