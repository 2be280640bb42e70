import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { RendezvousInfo } from "../rendezvous/api.js";
import { MemoryStore } from "../store/memory-store.js";
import { PrefixStore } from "../store/prefix-store.js";
import { attemptId, LauncherStore, MAX_CLOSE_REASON_CHARS, storeKeyPrefix } from "./launcher-store.js";
import type { FailureSummary } from "./policy.js";

const info = (store: MemoryStore, round: number): RendezvousInfo => ({
  store: new PrefixStore(`rdzv/run/r${round}/store`, store),
  rank: 0,
  worldSize: 2,
  bootstrapStoreInfo: { masterAddr: "a", masterPort: 1 },
  round,
});

/** Rank 1 of node "n" (pid 9) failed in round 0 with exit code 1, no restarts; `fields` on top. */
function failure(fields: Partial<FailureSummary>): FailureSummary {
  return {
    rank: 1,
    localRank: 1,
    groupRank: 0,
    node: "n",
    pid: 9,
    exitCode: 1,
    signal: null,
    stderrTail: [],
    round: 0,
    restarts: 0,
    maxRestarts: 0,
    ...fields,
  };
}

describe("LauncherStore", () => {
  it("lives under the run, beside the round stores, so the count outlives rounds", async () => {
    const store = new MemoryStore();
    const a = LauncherStore.of(info(store, 0), "run");
    assert.equal(a.prefix, "rdzv/run/launcher");
    assert.equal((await a.claimFailure(attemptId(0, 0), "n1")).restarts, 1);
    const b = LauncherStore.of(info(store, 1), "run");
    assert.equal(await b.restartCount(), 1);
  });

  it("counts one restart per attempt however many agents claim it, concurrently", async () => {
    const store = new MemoryStore();
    const launcher = new LauncherStore(store, "run");
    const claims = await Promise.all(
      Array.from({ length: 16 }, (_, i) => launcher.claimFailure(attemptId(3, 0), `node${i}`)),
    );
    assert.equal(claims.filter((c) => c.won).length, 1);
    assert.equal(await launcher.restartCount(), 1);
    const next = await Promise.all(["x", "y"].map((n) => launcher.claimFailure(attemptId(4, 1), n)));
    assert.deepEqual(
      next.filter((c) => c.won).map((c) => c.restarts),
      [2],
    );
  });

  it("records and reads the failure summary", async () => {
    const launcher = new LauncherStore(new MemoryStore(), "run");
    assert.equal(await launcher.readFailure(), undefined);
    const summary = failure({ exitCode: null, signal: "SIGKILL", stderrTail: ["x"], round: 2 });
    await launcher.recordFailure(summary);
    assert.deepEqual(await launcher.readFailure(), summary);
  });

  it("records a worker's error with its traceback cut to fit a store value", async () => {
    const launcher = new LauncherStore(new MemoryStore(), "run");
    const traceback = `Traceback (most recent call last):\n${"  File x\n".repeat(100_000)}ValueError: boom\n`;
    const summary = failure({
      error: { message: "ValueError: boom", traceback, timestamp: 1_700_000_000, file: "/e.json" },
    });
    await launcher.recordFailure(summary);
    const read = await launcher.readFailure();
    assert.ok(read?.error?.traceback !== undefined);
    assert.ok(read.error.traceback.length < 40_000, String(read.error.traceback.length));
    assert.ok(read.error.traceback.startsWith("Traceback (most recent call last):\n"));
    assert.ok(read.error.traceback.endsWith("ValueError: boom\n"));
    assert.match(read.error.traceback, /characters left out; the whole text is in the report of node n/);
    assert.deepEqual({ ...read, error: { ...read.error, traceback } }, summary);
  });

  it("records why a node closed the rendezvous, cut to a line or two of text", async () => {
    const launcher = new LauncherStore(new MemoryStore(), "run");
    assert.equal(await launcher.readCloseReason(), undefined);
    await launcher.recordCloseReason("node 1 starts 3 workers");
    assert.equal(await launcher.readCloseReason(), "node 1 starts 3 workers");
    await launcher.recordCloseReason("x".repeat(100_000));
    const long = await launcher.readCloseReason();
    assert.equal(long?.length, MAX_CLOSE_REASON_CHARS);
    assert.ok(long.endsWith("x..."));
  });

  it("releases the exit barrier on the last arrival only", async () => {
    const launcher = new LauncherStore(new MemoryStore(), "run");
    const attempt = attemptId(1, 0);
    await launcher.arrive(attempt, 3);
    await launcher.arrive(attempt, 3);
    assert.equal(await launcher.allDone(attempt), false);
    const waiting = launcher.waitAllDone(attempt, { timeoutMs: 5000 });
    await launcher.arrive(attempt, 3);
    await waiting;
    assert.equal(await launcher.allDone(attempt), true);
  });
});

describe("storeKeyPrefix", () => {
  it("joins nested prefixes innermost first, as the keys land on the store", async () => {
    const store = new MemoryStore();
    const nested = new PrefixStore("inner", new PrefixStore("outer", store));
    await nested.set("k", "v");
    assert.deepEqual(await store.listKeys(), ["outer/inner/k"]);
    assert.equal(storeKeyPrefix(nested), "outer/inner");
    assert.equal(storeKeyPrefix(store), "");
  });
});
