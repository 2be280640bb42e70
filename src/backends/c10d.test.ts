import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { setTimeout as delay } from "node:timers/promises";
import { ErrorCode, findStoreGone } from "../errors.js";
import { createRendezvousHandler } from "../index.js";
import { pickFreePort } from "../rendezvous/free-port.js";
import { bytesToText } from "../store/bytes.js";
import { connectTCPStore } from "../store/tcp/client.js";
import { createTCPStoreServer, type TCPStoreServer } from "../store/tcp/server.js";
import { createC10dRendezvousHandler } from "./c10d.js";
import { hostedEngine, readStoreHost } from "./c10d-host.js";

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

describe("c10d backend: a store hosted by another node's agent", () => {
  const params = (port: number) => ({
    backend: "c10d",
    endpoint: `127.0.0.1:${port}`,
    runId: "hosted",
    minNodes: 1,
    maxNodes: 1,
    localAddr: "127.0.0.1",
    config: { is_host: false, read_timeout: 20, keep_alive_interval: 0.1, keep_alive_max_attempt: 3 },
  });

  /** A store server on `port` (0: a free one) that, when `hostedBy` is given, says an agent hosts it. */
  async function storeAt(port: number, hostedBy?: string): Promise<TCPStoreServer> {
    const engine = hostedBy === undefined ? undefined : hostedEngine({ addr: hostedBy, pid: 4242 });
    return createTCPStoreServer({ host: "127.0.0.1", port, ...(engine === undefined ? {} : { engine }) });
  }

  it("the hosting node records itself in its store", async () => {
    const port = await pickFreePort("127.0.0.1");
    const host = await createC10dRendezvousHandler({ ...params(port), config: { read_timeout: 10 } });
    const raw = await connectTCPStore({ host: "127.0.0.1", port, timeoutMs: 2000 });
    try {
      assert.deepEqual(await readStoreHost(raw, { timeoutMs: 2000 }), {
        addr: "127.0.0.1",
        pid: process.pid,
      });
    } finally {
      await raw.close();
      await host.shutdown();
    }
  });

  it("once the host stops answering (connection refused), every call fails at once, naming the cause", async () => {
    const server = await storeAt(0, "node-a");
    const handler = await createC10dRendezvousHandler(params(server.port));
    const gone = (err: Error & { code: string }): boolean => {
      assert.ok(findStoreGone(err) !== undefined, String(err));
      assert.equal(err.code, ErrorCode.Connection);
      assert.match(
        err.message,
        /store at 127\.0\.0\.1:\d+, hosted by node node-a's agent \(pid 4242\), is gone/,
      );
      assert.match(err.message, /connection refused since .*use rdzv serve/);
      return true;
    };
    try {
      await handler.nextRendezvous();
      // The hosting agent dies: nothing listens on the port any more.
      await server.close();
      // Before: each watch failed with a plain connection error after its connect budget (here the
      // 20 s read timeout) and the agent retried for good; now the watch fails within a keep-alive budget
      // (0.3 s) with the error that says why, which stops the agent (agent-monitor.ts).
      await assert.rejects(handler.waitForRoundEnd({ timeoutMs: 15_000 }), gone);
      await assert.rejects(handler.isClosed(), gone);
      await assert.rejects(handler.nextRendezvous(), gone);
    } finally {
      await handler.shutdown().catch(() => undefined);
    }
  });

  it("a store no agent hosts (rdzv serve) that comes back after the budget is reconnected to", async () => {
    const first = await storeAt(0);
    const port = first.port;
    const handler = await createC10dRendezvousHandler(params(port));
    let second: TCPStoreServer | undefined;
    try {
      await handler.nextRendezvous();
      await first.close();
      await delay(1000); // more than the 0.3 s budget that ends a hosted store
      second = await storeAt(port);
      assert.equal(await handler.isClosed({ signal: AbortSignal.timeout(10_000) }), false);
    } finally {
      await handler.shutdown().catch(() => undefined);
      await second?.close();
    }
  });
});
