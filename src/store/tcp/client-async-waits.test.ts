/**
 * `TCPStore` against rdzv's server with the async-wait extension: blocking reads share the main
 * connection, never hold back pipelined calls, are cancelled on the server on timeout or abort, and
 * reject with `RDZV_CONNECTION` when the connection is lost.
 */

import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { ErrorCode } from "../../errors.js";
import { connectTCPStore, type TCPStore, type TCPStoreOptions } from "./client.js";
import { createTCPStoreServer, type TCPStoreServer } from "./server.js";

const text = (bytes: Uint8Array): string => Buffer.from(bytes).toString("utf8");
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

async function until(condition: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!condition()) {
    assert.ok(Date.now() < deadline, `timed out waiting until ${what}`);
    await sleep(5);
  }
}

async function rejectsWithCode(promise: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.equal((err as { code?: unknown }).code, code, String(err));
    return true;
  });
}

const cleanups: (() => Promise<unknown>)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => {});
});

async function server(): Promise<TCPStoreServer> {
  const s = await createTCPStoreServer({ port: 0 });
  cleanups.push(() => s.close());
  return s;
}

async function client(srv: TCPStoreServer, options: Partial<TCPStoreOptions> = {}): Promise<TCPStore> {
  const store = await connectTCPStore({ host: "127.0.0.1", port: srv.port, timeoutMs: 10_000, ...options });
  cleanups.push(() => store.close());
  return store;
}

describe("TCPStore async waits (rdzv server)", () => {
  it("runs many blocking reads on the main connection alone, without holding back other calls", async () => {
    const srv = await server();
    const store = await client(srv);
    const other = await client(srv);
    const gets = Array.from({ length: 50 }, (_, i) => store.get(`b${i}`));
    const waits = Array.from({ length: 50 }, (_, i) => store.wait([`b${i}`, "go"]));
    await until(() => srv.stats().waiters === 100, "100 waits are registered");
    assert.equal(store.waitConnections, 0);
    assert.equal(srv.stats().connections, 2, "one connection per client");
    assert.equal(await store.add("not-blocked", 1), 1);
    await other.multiSet(
      gets.map((_, i) => `b${i}`),
      gets.map((_, i) => `${i}`),
    );
    assert.deepEqual(
      (await Promise.all(gets)).map(text),
      gets.map((_, i) => `${i}`),
    );
    assert.equal(srv.stats().waiters, 50, "the waits still need `go`");
    await other.set("go", "1");
    await Promise.all(waits);
    assert.equal(srv.stats().waiters, 0);
    assert.equal(srv.stats().connectionsTotal, 2);
  });

  it("get is one GET_ASYNC request, whether the key exists yet or not", async () => {
    const srv = await server();
    const store = await client(srv);
    await store.set("here", "1");
    const before = srv.stats().opsByType;
    assert.equal(text(await store.get("here")), "1");
    const pending = store.get("soon");
    await until(() => srv.stats().waiters === 1, "the GET_ASYNC is registered");
    await store.set("soon", "2");
    assert.equal(text(await pending), "2");
    const delta = (op: string): number => (srv.stats().opsByType[op] ?? 0) - (before[op] ?? 0);
    assert.deepEqual([delta("getAsync"), delta("get"), delta("check"), delta("waitAsync")], [2, 0, 0, 0]);
    // Without async waits (as against PyTorch's servers, which have no extensions): CHECK + GET.
    const classic = await client(srv, { asyncWaits: false });
    assert.equal(text(await classic.get("here")), "1");
    assert.deepEqual([delta("getAsync"), delta("get")], [2, 1]);
  });

  it("a timed-out or aborted wait is cancelled on the server; the connection goes on", async () => {
    const srv = await server();
    const store = await client(srv);
    await rejectsWithCode(store.get("x", { timeoutMs: 50 }), ErrorCode.Timeout);
    await until(() => srv.stats().waiters === 0, "the timed-out wait is dropped on the server");
    const controller = new AbortController();
    const aborted = store.wait(["y"], { signal: controller.signal });
    await until(() => srv.stats().waiters === 1, "the wait is registered");
    controller.abort();
    await rejectsWithCode(aborted, ErrorCode.Aborted);
    await until(() => srv.stats().waiters === 0, "the aborted wait is dropped on the server");
    const pending = store.get("x");
    await until(() => srv.stats().waiters === 1, "a new wait is registered");
    await store.set("x", "x");
    assert.equal(text(await pending), "x");
    assert.equal(srv.stats().connectionsTotal, 1);
  });

  it("waits of different timeouts each give up at their own deadline, whatever order they came in", async () => {
    const srv = await server();
    const store = await client(srv);
    const started = Date.now();
    const outcome = (p: Promise<unknown>): Promise<{ ok: boolean; code?: string | undefined; ms: number }> =>
      p.then(
        () => ({ ok: true, ms: Date.now() - started }),
        (err: { code?: string }) => ({ ok: false, code: err.code, ms: Date.now() - started }),
      );
    // One deadline timer serves the connection's waits: a later, shorter wait must re-arm it.
    const long = outcome(store.get("never-long", { timeoutMs: 60_000 }));
    const short = outcome(store.get("never-short", { timeoutMs: 100 }));
    const middle = outcome(store.wait(["never-middle"], { timeoutMs: 400 }));
    const shortest = outcome(store.wait(["never-shortest"], { timeoutMs: 50 }));
    const [a, b, c] = await Promise.all([shortest, short, middle]);
    for (const r of [a, b, c]) assert.equal(r.code, ErrorCode.Timeout);
    assert.ok(a.ms < b.ms && b.ms < c.ms, `in deadline order: ${a.ms}, ${b.ms}, ${c.ms} ms`);
    assert.ok(c.ms < 10_000, `the 400 ms wait gave up after ${c.ms} ms`);
    await until(() => srv.stats().waiters === 1, "only the long wait is left on the server");
    await store.set("never-long", "1");
    assert.equal((await long).ok, true);
    assert.equal(store.waitConnections, 0);
  });

  it("a pipelined burst of gets with the default timeout all complete, and none is left waiting", async () => {
    const srv = await server();
    const store = await client(srv, { timeoutMs: 2000 });
    await store.multiSet(["p0", "p1"], ["a", "b"]);
    const values = await Promise.all(Array.from({ length: 3000 }, (_, i) => store.get(`p${i % 2}`)));
    assert.deepEqual(new Set(values.map(text)), new Set(["a", "b"]));
    // Past the 2 s timeout of those gets: nothing of theirs may fire late (it would reject a settled call
    // or cancel a wait on the server that is not there).
    const late = store.get("later", { timeoutMs: 10_000 });
    await sleep(2100);
    await store.set("later", "ok");
    assert.equal(text(await late), "ok");
    assert.equal(srv.stats().waiters, 0);
  });

  it("a key that appears as the wait times out: either outcome, never a stale completion later", async () => {
    const srv = await server();
    const store = await client(srv);
    const other = await client(srv);
    for (let i = 0; i < 20; i++) {
      const wait = store.wait([`r${i}`], { timeoutMs: 20 }).then(
        () => "done",
        (err: { code?: string }) => err.code,
      );
      await sleep(19);
      await other.set(`r${i}`, "1");
      assert.ok(["done", ErrorCode.Timeout].includes((await wait) ?? ""));
    }
    await until(() => srv.stats().waiters === 0, "no waiter is left behind");
    const late = store.get("late");
    await other.set("late", "ok");
    assert.equal(text(await late), "ok");
  });

  it("pending waits reject with RDZV_CONNECTION when the connection is lost; the next call reconnects", async () => {
    const srv = await server();
    const store = await client(srv);
    const waits = [store.get("gone"), store.wait(["gone2"])];
    await until(() => srv.stats().waiters === 2, "the waits are registered");
    const rejected = Promise.all(waits.map((w) => rejectsWithCode(w, ErrorCode.Connection)));
    await srv.close();
    await rejected;
    const again = await createTCPStoreServer({ port: srv.port });
    cleanups.push(() => again.close());
    await store.set("back", "1");
    assert.equal(text(await store.get("back")), "1");
  });

  it("asyncWaits: false uses wait connections against an rdzv server too", async () => {
    const srv = await server();
    const store = await client(srv, { asyncWaits: false });
    const pending = store.get("w");
    await until(() => srv.stats().waiters === 1, "the wait is parked");
    assert.equal(store.waitConnections, 1);
    await store.set("w", "1");
    assert.equal(text(await pending), "1");
  });
});
