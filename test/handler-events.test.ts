/**
 * The dynamic handler's events, as a library user subscribes to them (docs/rendezvous.md, "Events"):
 * joined, completed, nodeLost (also when rdzv's server marks a killed node, not only on keep-alive
 * expiry), left and closed.
 */

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import {
  createRendezvousHandler,
  type DynamicRendezvousHandler,
  type RendezvousEvents,
} from "../src/index.js";
import { inspectRun } from "../src/server/inspector.js";
import { engineKeyReader } from "../src/server/key-reader.js";
import { createTCPStoreServer, type TCPStoreServer } from "../src/store/tcp/server.js";
import { NodeProc } from "./helpers/rdzv-node-procs.js";

type Seen = {
  [K in keyof RendezvousEvents]: { type: K; data: RendezvousEvents[K][0] };
}[keyof RendezvousEvents];

function record(h: DynamicRendezvousHandler): Seen[] {
  const seen: Seen[] = [];
  h.on("joined", (data) => seen.push({ type: "joined", data }));
  h.on("completed", (data) => seen.push({ type: "completed", data }));
  h.on("nodeLost", (data) => seen.push({ type: "nodeLost", data }));
  h.on("left", (data) => seen.push({ type: "left", data }));
  h.on("closed", (data) => seen.push({ type: "closed", data }));
  return seen;
}

describe("DynamicRendezvousHandler events", () => {
  let server: TCPStoreServer;
  const handlers: DynamicRendezvousHandler[] = [];
  let victim: NodeProc | undefined;
  before(async () => {
    server = await createTCPStoreServer({ port: 0 });
  });
  after(async () => {
    await victim?.kill();
    for (const h of handlers) await h.shutdown().catch(() => undefined);
    await server?.close();
  });

  it("reports joined, completed, a killed member lost (once, by its predecessor), left and closed", async () => {
    const endpoint = `127.0.0.1:${server.port}`;
    for (let i = 0; i < 2; i++) {
      handlers.push(
        (await createRendezvousHandler({
          backend: "c10d",
          endpoint,
          runId: "ev",
          minNodes: 2,
          maxNodes: 3,
          localAddr: "127.0.0.1",
          config: { is_host: false, last_call_timeout: 30, keep_alive_interval: 1 },
        })) as DynamicRendezvousHandler,
      );
    }
    const [a, b] = handlers as [DynamicRendezvousHandler, DynamicRendezvousHandler];
    const seenA = record(a);
    const seenB = record(b);
    victim = new NodeProc(endpoint, "ev", 2, 3);
    const [infoA, infoB] = await Promise.all([a.nextRendezvous(), b.nextRendezvous()]);
    await victim.waitFor((e) => e.event === "completed");
    for (const [seen, info, h] of [
      [seenA, infoA, a],
      [seenB, infoB, b],
    ] as const) {
      assert.deepEqual(
        seen.map((e) => e.type),
        ["joined", "completed"],
      );
      const joined = seen[0]!.data as RendezvousEvents["joined"][0];
      assert.equal(joined.round, 0);
      assert.equal(joined.node.id, h.node.id);
      assert.deepEqual(seen[1]!.data, { round: 0, rank: info.rank, worldSize: 3 });
    }
    const [view] = await inspectRun(engineKeyReader(server.engine), "ev");
    const victimSlot = view?.participants.find((p) => p.pid === victim!.pid)?.slot;
    assert.ok(victimSlot !== undefined, JSON.stringify(view));

    await victim.kill();
    assert.equal(await a.waitForRoundEnd({ timeoutMs: 60_000 }), true);
    assert.equal(await b.waitForRoundEnd({ timeoutMs: 60_000 }), true);
    const lost = [...seenA, ...seenB].filter((e) => e.type === "nodeLost");
    assert.deepEqual(
      lost.map((e) => e.data),
      [{ round: 0, slot: victimSlot, reason: "dead" }],
    );
    // Asking again reports nothing twice.
    await a.waitForRoundEnd({ timeoutMs: 1000 });
    await b.waitForRoundEnd({ timeoutMs: 1000 });
    assert.equal([...seenA, ...seenB].filter((e) => e.type === "nodeLost").length, 1);

    // The survivors re-form round 1 (each leaves round 0 as "rejoined"), then a closes the rendezvous.
    await Promise.all([a.nextRendezvous(), b.nextRendezvous()]);
    for (const seen of [seenA, seenB]) {
      assert.deepEqual(
        seen.filter((e) => e.type === "left").map((e) => e.data),
        [{ round: 0, reason: "rejoined" }],
      );
    }
    await a.setClosed();
    assert.deepEqual(seenA[seenA.length - 1], { type: "closed", data: { round: 1 } });
    await b.shutdown();
    assert.deepEqual(seenB[seenB.length - 1], { type: "left", data: { round: 1, reason: "left" } });
  });
});
