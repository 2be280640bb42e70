/**
 * The store-backed rendezvous backend's open-round hint, and the coordinator's wait for the previous
 * round, on a MemoryStore: the cases the chaos soak found under load, made deterministic.
 */

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { silentLogger } from "../log.js";
import { coordinateRound } from "../rendezvous/coordinator.js";
import type { RoundOutcome } from "../rendezvous/round.js";
import { bytesToText } from "../store/bytes.js";
import { MemoryStore } from "../store/memory-store.js";
import { StoreRendezvousBackend } from "./store-backend.js";

const NODE = { id: "n", addr: "127.0.0.1", pid: 1 };

function complete(round: number, span: number): RoundOutcome {
  return { kind: "complete", round, span, excluded: [] };
}

/**
 * Decides rounds 0..rounds-1 (one member each unless `span`), lets the hint's fire-and-forget write land,
 * and returns the outcomes `setState` gave.
 */
async function decide(backend: StoreRendezvousBackend, rounds: number, span = 1): Promise<RoundOutcome[]> {
  const held: RoundOutcome[] = [];
  for (let r = 0; r < rounds; r++) held.push(await backend.setState(complete(r, span), r));
  await new Promise((resolve) => setImmediate(resolve));
  return held;
}

describe("StoreRendezvousBackend open-round hint", () => {
  it("moves once when two coordinators write the same outcome of a round", async () => {
    const store = new MemoryStore();
    const backend = new StoreRendezvousBackend(store, "run");
    // Both see their own bytes held: one took over from the other, which was only slow.
    assert.deepEqual(await backend.setState(complete(0, 2), 0), complete(0, 2));
    assert.deepEqual(await decide(backend, 1, 2), [complete(0, 2)]);
    assert.equal(bytesToText(await store.get("rdzv/run/open")), "1");
    assert.equal((await backend.getState()).openRound, 1);
    // A joiner takes its ticket in round 1, where the members of round 0 look for waiting nodes.
    assert.deepEqual(await backend.enter(NODE), { round: 1, slot: 0 });
    assert.equal(await backend.ticketCount(1), 1);
    assert.equal(await backend.ticketCount(2), 0);
  });

  it("steps forward past a hint a slow winner of an older round set last", async () => {
    const store = new MemoryStore();
    const backend = new StoreRendezvousBackend(store, "run");
    await decide(backend, 4);
    // A slow winner of round 1 sets its hint last.
    await store.set("rdzv/run/open", "2");
    const state = await backend.getState();
    assert.equal(state.openRound, 4);
    assert.equal(state.last?.round, 3);
  });

  it("walks a hint ahead of the decided rounds back (as an earlier version could leave it)", async () => {
    const store = new MemoryStore();
    const backend = new StoreRendezvousBackend(store, "run");
    await decide(backend, 1, 2);
    await store.set("rdzv/run/open", "5");
    const state = await backend.getState();
    assert.equal(state.openRound, 1);
    assert.deepEqual(state.last, complete(0, 2));
    assert.deepEqual(await new StoreRendezvousBackend(new MemoryStore(), "run").getState(), { openRound: 0 });
    // A joiner does not jump past the open round either, and leaves no ticket beyond it.
    assert.deepEqual(await backend.enter(NODE), { round: 1, slot: 0 });
    assert.equal(await backend.ticketCount(5), 0);
  });

  it("jumps to a hint whose previous round is decided", async () => {
    const store = new MemoryStore();
    const backend = new StoreRendezvousBackend(store, "run");
    await decide(backend, 5);
    assert.deepEqual(await backend.enter(NODE), { round: 5, slot: 0 });
    // Rounds 1 to 4 were skipped: no stray tickets there.
    for (let r = 1; r < 5; r++) assert.equal(await backend.ticketCount(r), 0);
  });
});

describe("coordinateRound", () => {
  const settings = {
    minNodes: 1,
    maxNodes: 1,
    lastCallTimeoutMs: 0,
    keepAliveIntervalMs: 50,
    keepAliveMaxAttempts: 3,
    stickyRanks: false,
  };

  /** Coordinates round 1 of `backend` for a ticket taken there, until `ms` from now. */
  async function coordinateRoundOne(backend: StoreRendezvousBackend, ms: number) {
    const slot = (await backend.enter(NODE, undefined, 1))!.slot;
    return coordinateRound({
      backend,
      round: 1,
      slot,
      settings,
      deadline: Date.now() + ms,
      signal: new AbortController().signal,
      logger: silentLogger,
      onLost: () => undefined,
    });
  }

  it("does not decide a round while the round before it is undecided", async () => {
    const backend = new StoreRendezvousBackend(new MemoryStore(), "run");
    // A ticket in round 1 with max reached, but round 0 never decided.
    const outcome = await coordinateRoundOne(backend, 300);
    assert.equal(outcome, undefined);
    assert.equal((await backend.getState()).openRound, 0);
  });

  it("decides it once the round before is decided and drained", async () => {
    const backend = new StoreRendezvousBackend(new MemoryStore(), "run");
    const run = coordinateRoundOne(backend, 10_000);
    await new Promise((resolve) => setTimeout(resolve, 100));
    // Round 0 completes with one member, who then leaves it.
    await backend.setState(complete(0, 1), 0);
    await backend.markGone(0, 0, "rejoined", true);
    assert.deepEqual(await run, complete(1, 1));
  });
});
