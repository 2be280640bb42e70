/**
 * Numbers any store client can write (the open-round hint, a round's ticket counter, an outcome's span)
 * must not make real nodes loop, spin or allocate in proportion to them. Each test counts store calls
 * (never time): a store that fails past a budget of calls turns a loop over a forged number into a quick
 * failure rather than a hung test.
 */

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ErrorCode } from "../errors.js";
import type { Logger } from "../log.js";
import { silentLogger } from "../log.js";
import { coordinateRound } from "../rendezvous/coordinator.js";
import { createDynamicRendezvousHandler } from "../rendezvous/dynamic-handler.js";
import type { RoundOutcome } from "../rendezvous/round.js";
import { MemoryStore } from "../store/memory-store.js";
import { StoreRendezvousBackend } from "./store-backend.js";

const NODE = { id: "n", addr: "127.0.0.1", pid: 1 };

/** A MemoryStore that counts calls and fails every call past `budget`. */
function countingStore(budget = 2000): { store: MemoryStore; calls: () => number; reset: () => void } {
  const inner = new MemoryStore();
  let calls = 0;
  const store = new Proxy(inner, {
    get(target, prop, receiver) {
      const value = Reflect.get(target, prop, receiver) as unknown;
      if (typeof value !== "function" || prop === "close" || prop === "constructor") return value;
      return (...args: unknown[]) => {
        if (++calls > budget) return Promise.reject(new Error(`store call budget of ${budget} exceeded`));
        return (value as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  });
  return {
    store,
    calls: () => calls,
    reset: () => {
      calls = 0;
    },
  };
}

/** Decides rounds 0..rounds-1 with one member each and lets the hint's write land. */
async function decide(backend: StoreRendezvousBackend, rounds: number, from = 0): Promise<void> {
  for (let r = from; r < rounds; r++) {
    const outcome: RoundOutcome = { kind: "complete", round: r, span: 1, excluded: [] };
    await backend.setState(outcome, r);
  }
  await new Promise((resolve) => setImmediate(resolve));
}

/** A logger that keeps its warnings. */
function warnings(): { logger: Logger; seen: { message: string; fields?: Record<string, unknown> }[] } {
  const seen: { message: string; fields?: Record<string, unknown> }[] = [];
  const logger: Logger = {
    ...silentLogger,
    warn: (message, fields) => {
      seen.push(fields === undefined ? { message } : { message, fields });
    },
  };
  return { logger, seen };
}

describe("StoreRendezvousBackend with a forged open-round hint", () => {
  it("finds the open round under a hint of 1e9 in O(log hint) calls, and warns once", async () => {
    const { store, calls } = countingStore();
    const { logger, seen } = warnings();
    const backend = new StoreRendezvousBackend(store, "run", { logger });
    await decide(backend, 3);
    await store.set("rdzv/run/open", String(1e9));
    const before = calls();
    const state = await backend.getState();
    assert.equal(state.openRound, 3);
    assert.equal(state.last?.round, 2);
    assert.ok(calls() - before < 150, `${calls() - before} store calls`);
    assert.equal(seen.length, 1);
    assert.match(seen[0]!.message, /"run".*1000000000.*round 3 is open/);
    assert.deepEqual(seen[0]!.fields, { runId: "run", hint: 1e9, openRound: 3 });
    await backend.getState();
    assert.equal(seen.length, 1, "one warning per wrong hint");
  });

  it("reads a hint that is no round number (negative, past 2^53) as a guess, not a round", async () => {
    const { store } = countingStore();
    const backend = new StoreRendezvousBackend(store, "run");
    await decide(backend, 2);
    for (const hint of ["-5", "9223372036854775807"]) {
      await store.set("rdzv/run/open", hint);
      assert.equal((await backend.getState()).openRound, 2, hint);
      assert.deepEqual(await backend.enter(NODE), { round: 2, slot: hint === "-5" ? 0 : 1 });
    }
  });

  it("joins past many decided rounds under a hint of 1e9 without stepping through each", async () => {
    const { store, calls } = countingStore();
    const { logger, seen } = warnings();
    const backend = new StoreRendezvousBackend(store, "run", { logger });
    await decide(backend, 300);
    await store.set("rdzv/run/open", String(1e9));
    const before = calls();
    assert.deepEqual(await backend.enter(NODE), { round: 300, slot: 0 });
    assert.ok(calls() - before < 150, `${calls() - before} store calls`);
    assert.equal(seen.length, 1);
    // No stray tickets in the rounds it skipped (the first one, round 0, aside).
    for (const r of [1, 150, 299]) assert.equal(await backend.ticketCount(r), 0);
  });

  it("joins past many decided rounds under a hint reset to 0 in O(log rounds) calls", async () => {
    const { store, calls } = countingStore();
    const backend = new StoreRendezvousBackend(store, "run");
    await decide(backend, 300);
    await store.set("rdzv/run/open", "0");
    const before = calls();
    assert.deepEqual(await backend.enter(NODE), { round: 300, slot: 0 });
    assert.ok(calls() - before < 100, `${calls() - before} store calls`);
    assert.equal((await backend.getState()).openRound, 300);
  });

  it("keeps the normal path's calls: a right hint, one trailing or ahead by one or two", async () => {
    const { store, calls } = countingStore();
    const backend = new StoreRendezvousBackend(store, "run");
    await decide(backend, 10);
    /** Store calls of getState and of enter (from 0) under `hint`. */
    const cost = async (hint: number) => {
      await store.set("rdzv/run/open", String(hint));
      let before = calls();
      assert.equal((await backend.getState()).openRound, 10);
      const state = calls() - before;
      before = calls();
      assert.equal((await backend.enter(NODE))?.round, 10);
      return { state, enter: calls() - before };
    };
    // As measured before the change (add, checks of two rounds, gets of the decided ones, and the steps).
    const costs = [await cost(10), await cost(9), await cost(8), await cost(11), await cost(12)];
    // Before the change: the same, but for a hint ahead, where enter stepped from round 0 checking the
    // round before the hint at each step ({ state: 5, enter: 45 }, { state: 6, enter: 45 }).
    assert.deepEqual(costs, [
      { state: 4, enter: 9 },
      { state: 6, enter: 12 },
      { state: 8, enter: 15 },
      { state: 5, enter: 10 },
      { state: 6, enter: 11 },
    ]);
  });

  it("a handler joins (and completes a round) under a hint of 1e9", async () => {
    const { store, calls } = countingStore();
    const backend = new StoreRendezvousBackend(store, "run");
    await decide(backend, 300);
    // Round 299's member left it (else the new round waits for it to drain).
    await backend.markGone(299, 0, "rejoined", true);
    await store.set("rdzv/run/open", String(1e9));
    const handler = createDynamicRendezvousHandler({
      backend,
      runId: "run",
      settings: { minNodes: 1, maxNodes: 1, lastCallTimeoutMs: 0, keepAliveIntervalMs: 10_000 },
      localAddr: "127.0.0.1",
    });
    const before = calls();
    try {
      const info = await handler.nextRendezvous();
      assert.equal(info.rank, 0);
      assert.equal(handler.currentRound, 300);
      assert.ok(calls() - before < 250, `${calls() - before} store calls`);
    } finally {
      await handler.shutdown();
    }
  });
});

describe("coordinateRound with forged counts", () => {
  const settings = {
    minNodes: 1,
    maxNodes: 2,
    lastCallTimeoutMs: 0,
    keepAliveIntervalMs: 10_000,
    keepAliveMaxAttempts: 3,
    stickyRanks: false,
  };

  function coordinate(backend: StoreRendezvousBackend, round: number, slot: number) {
    return coordinateRound({
      backend,
      round,
      slot,
      settings,
      deadline: Date.now() + 10_000,
      signal: new AbortController().signal,
      logger: silentLogger,
      onLost: () => undefined,
    });
  }

  it("reads the markers of maxNodes slots, not of every ticket a forged counter names", async () => {
    const { store, calls } = countingStore(5000);
    const backend = new StoreRendezvousBackend(store, "run");
    assert.deepEqual(await backend.enter(NODE), { round: 0, slot: 0 });
    await backend.enter(NODE);
    await store.add("rdzv/run/r0/tickets", 1e6);
    const before = calls();
    const outcome = await coordinate(backend, 0, 0);
    assert.deepEqual(outcome, { kind: "complete", round: 0, span: 2, excluded: [] });
    assert.ok(calls() - before < 50, `${calls() - before} store calls`);
  });

  it("reads past gone slots in batches until maxNodes live ones are found", async () => {
    const { store } = countingStore();
    const backend = new StoreRendezvousBackend(store, "run");
    for (let i = 0; i < 8; i++) await backend.enter(NODE);
    for (const s of [1, 2, 3, 4, 5]) await backend.markGone(0, s, "left", false);
    // Slot 0 and slot 6 are the first two live ones.
    assert.deepEqual(await coordinate(backend, 0, 0), {
      kind: "complete",
      round: 0,
      span: 7,
      excluded: [1, 2, 3, 4, 5],
    });
  });

  it("waits for the previous round's drain in one pass however many spares hold tickets", async () => {
    const { store, calls } = countingStore(5000);
    const backend = new StoreRendezvousBackend(store, "run");
    // Round 0's two members still run; 60 nodes (2 + 58 spares) hold published tickets in round 1.
    await backend.setState({ kind: "complete", round: 0, span: 2, excluded: [] }, 0);
    await new Promise((resolve) => setImmediate(resolve));
    for (let i = 0; i < 60; i++) await backend.enter(NODE, undefined, 1);
    const before = calls();
    const outcome = coordinate(backend, 1, 0);
    // Let it go to sleep on the drain; then drain round 0.
    await new Promise((resolve) => setTimeout(resolve, 50));
    await backend.markGone(0, 0, "rejoined", true);
    await backend.markGone(0, 1, "rejoined", true);
    assert.deepEqual(await outcome, { kind: "complete", round: 1, span: 2, excluded: [] });
    // It woke at once for each spare (the first slot it had not read was published), one pass each
    // reading the markers of every slot before it: 2,255 calls; now a pass before the drain, one after.
    assert.ok(calls() - before < 60, `${calls() - before} store calls`);
  });

  it("fails with a state error on a previous outcome naming more members than a round can have", async () => {
    const { store, calls } = countingStore(5000);
    const backend = new StoreRendezvousBackend(store, "run");
    await store.set("rdzv/run/r0/outcome", JSON.stringify({ r: 0, s: 2 ** 24, x: [] }));
    const slot = (await backend.enter(NODE, undefined, 1))!.slot;
    const before = calls();
    await assert.rejects(coordinate(backend, 1, slot), (err: unknown) => {
      assert.equal((err as { code?: string }).code, ErrorCode.State);
      assert.match(String(err), /round 0 names 16777216 members, more than the 2 nodes/);
      return true;
    });
    assert.ok(calls() - before < 50, `${calls() - before} store calls`);
  });
});

describe("numNodesWaiting with a forged ticket counter", () => {
  it("reads only as many slots as the answer can show (at most maxNodes)", async () => {
    const { store, calls } = countingStore(50);
    const backend = new StoreRendezvousBackend(store, "run");
    const handler = createDynamicRendezvousHandler({
      backend,
      runId: "run",
      settings: { minNodes: 1, maxNodes: 4 },
      localAddr: "127.0.0.1",
    });
    try {
      // Three tickets, the second one's node gone: two wait.
      await store.add("rdzv/run/r0/tickets", 3);
      await backend.markGone(0, 1, "left", false);
      assert.equal(await handler.numNodesWaiting(), 2);
      // A counter set to 1e9 (it built a list of 1e9 slots): at most maxNodes, in a few calls.
      await store.add("rdzv/run/r0/tickets", 1e9);
      const before = calls();
      assert.equal(await handler.numNodesWaiting(), 4);
      assert.ok(calls() - before <= 20, `${calls() - before} store calls`);
    } finally {
      await handler.shutdown();
    }
  });
});
