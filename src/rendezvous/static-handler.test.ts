import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { after, describe, it } from "node:test";
import { ErrorCode } from "../errors.js";
import { bytesToText } from "../store/bytes.js";
import type { RendezvousInfo, RendezvousParameters } from "./api.js";
import { pickFreePort } from "./free-port.js";
import { createStaticRendezvousHandler, type StaticRendezvousHandler } from "./static-handler.js";

const handlers: StaticRendezvousHandler[] = [];
after(async () => {
  await Promise.all(handlers.map((h) => h.shutdown()));
});

function paramsFor(
  port: number,
  rank: number,
  worldSize: number,
  config: Record<string, string | number | boolean> = {},
): RendezvousParameters {
  return {
    backend: "static",
    endpoint: `127.0.0.1:${port}`,
    runId: "static-test",
    minNodes: worldSize,
    maxNodes: worldSize,
    config: { rank, timeout: 10, ...config },
  };
}

async function handlerFor(
  port: number,
  rank: number,
  worldSize: number,
  config: Record<string, string | number | boolean> = {},
): Promise<StaticRendezvousHandler> {
  const handler = await createStaticRendezvousHandler(paramsFor(port, rank, worldSize, config));
  handlers.push(handler);
  return handler;
}

/** Resolves "pending" when `promise` has not settled after `ms`. */
async function settledWithin<T>(promise: Promise<T>, ms: number): Promise<"settled" | "pending"> {
  let timer: NodeJS.Timeout | undefined;
  const pending = new Promise<"pending">((resolve) => {
    timer = setTimeout(() => resolve("pending"), ms);
  });
  const settled = promise.then(
    () => "settled" as const,
    () => "settled" as const,
  );
  const result = await Promise.race([settled, pending]);
  clearTimeout(timer);
  return result;
}

describe("static rendezvous", () => {
  it("forms a world of 2 and exchanges a value through the store", async () => {
    const port = await pickFreePort("127.0.0.1");
    const [h0, h1] = await Promise.all([handlerFor(port, 0, 2), handlerFor(port, 1, 2)]);
    const [i0, i1] = await Promise.all([h0.nextRendezvous(), h1.nextRendezvous()]);
    assert.deepEqual([i0.rank, i0.worldSize, i1.rank, i1.worldSize, i0.round], [0, 2, 1, 2, 0]);
    assert.deepEqual(i1.bootstrapStoreInfo, { masterAddr: "127.0.0.1", masterPort: port });
    assert.equal(h0.getBackend(), "static");
    assert.equal(h0.getRunId(), "static-test");
    assert.equal(h0.useAgentStore, true);
    assert.equal(await h0.numNodesWaiting(), 0);
    await i0.store.set("greeting", "hello from rank 0");
    assert.equal(bytesToText(await i1.store.get("greeting")), "hello from rank 0");
    assert.equal(await h0.shutdown(), true);
    assert.equal(await h1.shutdown(), true);
  });

  it("returns to rank 0 only once every rank has arrived", async () => {
    const port = await pickFreePort("127.0.0.1");
    const h0 = await handlerFor(port, 0, 3);
    const first = h0.nextRendezvous();
    const h1 = await handlerFor(port, 1, 3);
    const second = h1.nextRendezvous();
    assert.equal(await settledWithin(first, 300), "pending");
    const h2 = await handlerFor(port, 2, 3);
    const infos = await Promise.all([first, second, h2.nextRendezvous()]);
    assert.deepEqual(
      infos.map((i) => i.rank),
      [0, 1, 2],
    );
    await Promise.all([h0.shutdown(), h1.shutdown(), h2.shutdown()]);
  });

  it("lets a worker start before rank 0", async () => {
    const port = await pickFreePort("127.0.0.1");
    const h1 = await handlerFor(port, 1, 2);
    const late = h1.nextRendezvous();
    await new Promise((resolve) => setTimeout(resolve, 200));
    const h0 = await handlerFor(port, 0, 2);
    const [i1, i0] = await Promise.all([late, h0.nextRendezvous()]);
    assert.deepEqual([i0.rank, i1.rank], [0, 1]);
    await Promise.all([h0.shutdown(), h1.shutdown()]);
  });

  it("forms a world of 1 at once and hands back the same world again", async () => {
    const port = await pickFreePort("127.0.0.1");
    const h = await handlerFor(port, 0, 1);
    const first = await h.nextRendezvous();
    const again = await h.nextRendezvous();
    assert.deepEqual([again.rank, again.worldSize, again.round], [0, 1, 0]);
    await first.store.set("k", "v");
    assert.equal(bytesToText(await again.store.get("k")), "v");
    await h.shutdown();
  });

  it("uses PrefixStore(runId) over the shared store, as PyTorch", async () => {
    const port = await pickFreePort("127.0.0.1");
    const h = await handlerFor(port, 0, 1);
    const info: RendezvousInfo = await h.nextRendezvous();
    await info.store.set("x", "1");
    const other = await createStaticRendezvousHandler({ ...paramsFor(port, 0, 1), runId: "other" });
    handlers.push(other);
    // Same server, other run id: the key is not visible under the other prefix.
    const store = (info.store as unknown as { underlyingStore: { check(keys: string[]): Promise<boolean> } })
      .underlyingStore;
    assert.equal(await store.check(["static-test/x"]), true);
    assert.equal(await store.check(["other/x"]), false);
    await h.shutdown();
    await other.shutdown();
  });

  it("lets another rank host the store with is_host", async () => {
    const port = await pickFreePort("127.0.0.1");
    const h0 = await handlerFor(port, 0, 2, { is_host: false });
    const h1 = await handlerFor(port, 1, 2, { is_host: "true" });
    const [i0, i1] = await Promise.all([h0.nextRendezvous(), h1.nextRendezvous()]);
    await i1.store.set("from", "rank 1");
    assert.equal(bytesToText(await i0.store.get("from")), "rank 1");
    await Promise.all([h0.shutdown(), h1.shutdown()]);
  });

  it("times out naming the missing ranks", async () => {
    const port = await pickFreePort("127.0.0.1");
    const h0 = await handlerFor(port, 0, 2, { timeout: 0.3 });
    await assert.rejects(h0.nextRendezvous(), (err: Error & { code?: string }) => {
      assert.equal(err.code, ErrorCode.Timeout);
      assert.match(err.message, /ranks 1 of 2/);
      return true;
    });
    await h0.shutdown();
  });

  it("propagates setClosed to the other ranks", async () => {
    const port = await pickFreePort("127.0.0.1");
    const [h0, h1] = await Promise.all([handlerFor(port, 0, 2), handlerFor(port, 1, 2)]);
    await Promise.all([h0.nextRendezvous(), h1.nextRendezvous()]);
    assert.equal(await h1.isClosed(), false);
    await h0.setClosed();
    assert.equal(await h1.isClosed(), true);
    await assert.rejects(h1.nextRendezvous(), { code: ErrorCode.Closed });
    await Promise.all([h0.shutdown(), h1.shutdown()]);
  });

  it("aborts a wait through its signal", async () => {
    const port = await pickFreePort("127.0.0.1");
    const h0 = await handlerFor(port, 0, 2);
    const controller = new AbortController();
    const pending = h0.nextRendezvous({ signal: controller.signal });
    setTimeout(() => controller.abort(), 100);
    await assert.rejects(pending, { code: ErrorCode.Aborted });
    await assert.rejects(h0.nextRendezvous({ signal: AbortSignal.abort() }), { code: ErrorCode.Aborted });
    await h0.shutdown();
  });

  it("shutdown is idempotent and ends pending calls with a graceful exit", async () => {
    const port = await pickFreePort("127.0.0.1");
    const h0 = await handlerFor(port, 0, 2);
    const waiting = h0.nextRendezvous();
    // No server on this port: the worker keeps retrying its connect.
    const orphan = await handlerFor(await pickFreePort("127.0.0.1"), 1, 2);
    const connecting = orphan.nextRendezvous();
    assert.equal(await settledWithin(waiting, 200), "pending");
    const ended = Promise.all([
      assert.rejects(waiting, { code: ErrorCode.GracefulExit }),
      assert.rejects(connecting, { code: ErrorCode.GracefulExit }),
    ]);
    const started = Date.now();
    const results = await Promise.all([h0.shutdown(), h0.shutdown(), orphan.shutdown()]);
    assert.deepEqual(results, [true, true, true]);
    await ended;
    assert.ok(Date.now() - started < 5000);
    await assert.rejects(h0.nextRendezvous(), { code: ErrorCode.GracefulExit });
    await assert.rejects(h0.setClosed(), { code: ErrorCode.GracefulExit });
    assert.equal(await h0.shutdown(), true);
  });

  it("reports a port in use as a connection error", async () => {
    const port = await pickFreePort("127.0.0.1");
    const [h0, dup] = await Promise.all([handlerFor(port, 0, 1), handlerFor(port, 0, 1)]);
    await h0.nextRendezvous();
    await assert.rejects(dup.nextRendezvous(), { code: ErrorCode.Connection });
    await Promise.all([h0.shutdown(), dup.shutdown()]);
  });

  it("checks its parameters eagerly", async () => {
    const good = paramsFor(29400, 0, 2);
    const cases: RendezvousParameters[] = [
      { ...good, config: {} },
      { ...good, config: { rank: 2 } },
      { ...good, config: { rank: -1 } },
      { ...good, minNodes: 1 },
      { ...good, config: { rank: 0, world_size: 3 } },
      { ...good, endpoint: "" },
      { ...good, endpoint: "127.0.0.1" },
      { ...good, endpoint: "127.0.0.1:0" },
      { ...good, endpoint: "127.0.0.1:x" },
      { ...good, config: { rank: 0, timeout: 0 } },
    ];
    for (const params of cases) {
      await assert.rejects(
        createStaticRendezvousHandler(params),
        { code: ErrorCode.InvalidArgument },
        JSON.stringify(params),
      );
    }
    const h = await createStaticRendezvousHandler({
      ...good,
      config: { rank: "1", world_size: 2, use_agent_store: false },
    });
    assert.deepEqual(
      [h.config.rank, h.config.worldSize, h.config.isHost, h.useAgentStore],
      [1, 2, false, false],
    );
    await h.shutdown();
  });

  it("forms a world across two node processes", async () => {
    const port = await pickFreePort("127.0.0.1");
    const moduleUrl = new URL("./static-handler.js", import.meta.url).href;
    const bytesUrl = new URL("../store/bytes.js", import.meta.url).href;
    const script = `
      const { createStaticRendezvousHandler } = await import(${JSON.stringify(moduleUrl)});
      const { bytesToText } = await import(${JSON.stringify(bytesUrl)});
      const h = await createStaticRendezvousHandler(JSON.parse(process.argv[1]));
      const info = await h.nextRendezvous();
      const value = bytesToText(await info.store.get("from-parent"));
      await info.store.set("from-child", "rank " + info.rank);
      process.stdout.write(value);
      await info.store.wait(["done"]);
      await h.shutdown();
    `;
    const child = spawn(
      process.execPath,
      ["--input-type=module", "-e", script, JSON.stringify(paramsFor(port, 1, 2))],
      { stdio: ["ignore", "pipe", "inherit"] },
    );
    let output = "";
    child.stdout.on("data", (chunk: Buffer) => {
      output += chunk.toString();
    });
    const exited = new Promise<number | null>((resolve) => child.on("exit", resolve));
    const h0 = await handlerFor(port, 0, 2);
    const info = await h0.nextRendezvous();
    await info.store.set("from-parent", "hello child");
    assert.equal(bytesToText(await info.store.get("from-child")), "rank 1");
    await info.store.set("done", "1");
    assert.equal(await exited, 0);
    assert.equal(output, "hello child");
    await h0.shutdown();
  });
});
