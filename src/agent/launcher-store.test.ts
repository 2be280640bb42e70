import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { RendezvousInfo } from "../rendezvous/api.js";
import { bytesToText } from "../store/bytes.js";
import { MemoryStore } from "../store/memory-store.js";
import { PrefixStore } from "../store/prefix-store.js";
import {
  attemptId,
  keptAttempts,
  LauncherStore,
  MAX_CLOSE_REASON_CHARS,
  parseAttemptId,
  storeKeyPrefix,
} from "./launcher-store.js";
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

  describe("noteStarted", () => {
    /** The attempt ids that keys under the launcher's prefix name. */
    function attemptsWithKeys(store: MemoryStore): string[] {
      const ids = [...store.engine.keys()].flatMap((k) => /r\d+\.c\d+/.exec(k) ?? []);
      return [...new Set(ids)].sort();
    }

    /** What every one of `nodes` agents writes in `attempt` when one of its workers fails there. */
    async function failedAttempt(nodes: LauncherStore[], attempt: string): Promise<void> {
      for (const l of nodes) await l.noteStarted(attempt, nodes.length);
      await nodes[0]!.agreeNproc(attempt, 2);
      await nodes[0]!.publishBootstrap(attempt, { masterAddr: "a", masterPort: 1 });
      await nodes[1]!.arrive(attempt, 2);
      for (const [i, l] of nodes.entries()) await l.claimFailure(attempt, `n${i}`);
    }

    it("deletes an attempt's keys once every node started the attempt two on, and keeps the job's", async () => {
      const store = new MemoryStore();
      const nodes = [new LauncherStore(store, "run"), new LauncherStore(store, "run")];
      for (let c = 0; c < 6; c++) await failedAttempt(nodes, attemptId(0, c));
      assert.deepEqual(attemptsWithKeys(store), ["r0.c4", "r0.c5"]);
      assert.equal(await nodes[0]!.restartCount(), 6);
      // The failure claims of the attempts kept still hold: a late claim counts nothing again.
      assert.deepEqual(await nodes[0]!.claimFailure(attemptId(0, 4), "late"), { won: false, restarts: 6 });
    });

    it("keeps every attempt's keys until its last node started the next attempt but one", async () => {
      const store = new MemoryStore();
      const [a, b] = [new LauncherStore(store, "run"), new LauncherStore(store, "run")];
      await failedAttempt([a, b], attemptId(1, 0));
      await failedAttempt([a, b], attemptId(2, 1));
      // Node b is slow: node a alone started round 3's attempt.
      assert.deepEqual(await a.noteStarted(attemptId(3, 2), 2), []);
      assert.deepEqual(attemptsWithKeys(store), ["r1.c0", "r2.c1", "r3.c2"]);
      assert.deepEqual(await b.noteStarted(attemptId(3, 2), 2), ["r1.c0"]);
      assert.deepEqual(attemptsWithKeys(store), ["r2.c1", "r3.c2"]);
    });

    it("a node slow to record an attempt deletes nothing newer", async () => {
      const store = new MemoryStore();
      const l = new LauncherStore(store, "run");
      for (const r of [4, 5, 6]) await l.noteStarted(attemptId(r, 0), 1);
      // A record of round 3's attempt that comes late (its node stalled) keeps the newer ones; the next
      // attempt's start deletes it.
      assert.deepEqual(await l.noteStarted(attemptId(3, 0), 1), []);
      assert.equal(bytesToText(await store.get("rdzv/run/launcher/attempts")), "r3.c0 r5.c0 r6.c0");
      assert.deepEqual(await l.noteStarted(attemptId(7, 0), 1), ["r3.c0", "r5.c0"]);
      assert.deepEqual(attemptsWithKeys(store), ["r6.c0", "r7.c0"]);
    });
  });

  describe("keptAttempts", () => {
    it("orders attempts by round, then restart count, and drops all before the one before", () => {
      assert.deepEqual(keptAttempts("", "r0.c0", false), { kept: "r0.c0", dropped: [] });
      assert.deepEqual(keptAttempts("r2.c1 r10.c1", "r11.c2", false), {
        kept: "r2.c1 r10.c1 r11.c2",
        dropped: [],
      });
      assert.deepEqual(keptAttempts("r0.c9 r0.c10 r0.c2", "r0.c11", true), {
        kept: "r0.c10 r0.c11",
        dropped: ["r0.c2", "r0.c9"],
      });
      assert.deepEqual(keptAttempts("r7.c0 r9.c1", "r8.c0", true), {
        kept: "r7.c0 r8.c0 r9.c1",
        dropped: [],
      });
    });

    it("drops text that is no attempt id from the record", () => {
      assert.deepEqual(keptAttempts("junk r1.c0  r2.c0", "r3.c0", true), {
        kept: "r2.c0 r3.c0",
        dropped: ["r1.c0"],
      });
      assert.equal(parseAttemptId("r1.c"), undefined);
      assert.deepEqual(parseAttemptId("r12.c3"), { round: 12, restarts: 3 });
    });
  });
});
