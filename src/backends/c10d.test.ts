import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { setTimeout as delay } from "node:timers/promises";
import { ErrorCode } from "../errors.js";
import { createRendezvousHandler } from "../index.js";
import { pickFreePort } from "../rendezvous/free-port.js";
import { bytesToText } from "../store/bytes.js";
import { connectTCPStore } from "../store/tcp/client.js";

describe("c10d backend", () => {
  it("hosts the store on the node matching the endpoint and forms a round through the registry", async () => {
    const port = await pickFreePort("127.0.0.1");
    const params = {
      backend: "c10d",
      endpoint: `127.0.0.1:${port}`,
      runId: "c10d-test",
      minNodes: 2,
      maxNodes: 2,
      localAddr: "127.0.0.1",
      config: { read_timeout: 10, keep_alive_interval: 0.1 },
    };
    const a = await createRendezvousHandler(params);
    const b = await createRendezvousHandler(params);
    try {
      assert.equal(a.getBackend(), "c10d");
      assert.equal(b.getRunId(), "c10d-test");
      const [ia, ib] = await Promise.all([a.nextRendezvous(), b.nextRendezvous()]);
      assert.deepEqual([ia.rank, ib.rank].sort(), [0, 1]);
      assert.equal(ia.worldSize, 2);
      await ia.store.set("x", "from-a");
      assert.equal(bytesToText(await ib.store.get("x", { timeoutMs: 2000 })), "from-a");
      const rank0 = ia.rank === 0 ? ia : ib;
      assert.equal(ib.bootstrapStoreInfo.masterPort, ia.bootstrapStoreInfo.masterPort);
      assert.equal(rank0.bootstrapStoreInfo.masterAddr, "127.0.0.1");
    } finally {
      await b.shutdown();
      await a.shutdown();
    }
  });

  it("fails with RDZV_CONNECTION when no store is reachable and this node is not the host", async () => {
    const port = await pickFreePort("127.0.0.1");
    await assert.rejects(
      createRendezvousHandler({
        backend: "c10d",
        endpoint: `127.0.0.1:${port}`,
        runId: "nobody",
        minNodes: 1,
        maxNodes: 1,
        config: { is_host: false, read_timeout: 0.5 },
      }),
      (err: { code: string }) => err.code === ErrorCode.Connection,
    );
  });
});

describe("c10d backend: old rounds' keys", () => {
  it("keeps only the outcome of a round once the round two after it completed", async () => {
    const port = await pickFreePort("127.0.0.1");
    const params = {
      backend: "c10d",
      endpoint: `127.0.0.1:${port}`,
      runId: "clean",
      minNodes: 2,
      maxNodes: 2,
      localAddr: "127.0.0.1",
      config: { read_timeout: 10, keep_alive_interval: 1, last_call_timeout: 0.1 },
    };
    const handlers = [await createRendezvousHandler(params), await createRendezvousHandler(params)];
    const raw = await connectTCPStore({ host: "127.0.0.1", port });
    const roundKeys = async (round: number): Promise<string[]> =>
      (await raw.listKeys()).filter((k) => k.startsWith(`rdzv/clean/r${round}/`)).sort();
    try {
      for (let r = 0; r < 6; r++) await Promise.all(handlers.map((h) => h.nextRendezvous()));
      // The winner of round 5's decision deletes round 3's keys in the background.
      for (let i = 0; i < 100 && (await roundKeys(3)).length > 1; i++) await delay(50);
      for (let round = 0; round <= 3; round++) {
        // Before: every key of every round stayed (12 per round of 2 nodes).
        assert.deepEqual(await roundKeys(round), [`rdzv/clean/r${round}/outcome`], `round ${round}`);
      }
      // The last two rounds keep theirs: the members of round 5 use them.
      assert.ok((await roundKeys(5)).includes("rdzv/clean/r5/node/1"));
      assert.ok((await roundKeys(4)).includes("rdzv/clean/r4/store/MASTER_ADDR"));
    } finally {
      await raw.close();
      await handlers[1]!.shutdown();
      await handlers[0]!.shutdown();
    }
  });
});
