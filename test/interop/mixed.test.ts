/**
 * A PyTorch 1.13 client (v1) and a PyTorch 2.x client (v2) on one rdzv server at the same time, something
 * no PyTorch server can do (spec §7.2 case 19): each sees the other's keys and wakes the other's blocked
 * calls.
 */

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { setTimeout as delay } from "node:timers/promises";
import { createTCPStoreServer, type TCPStoreServer } from "../../src/store/tcp/server.js";
import { findTorch1, findTorch2, type PyAgent, startAgent } from "../helpers/torch.js";

const HOST = "127.0.0.1";
const text = (v: unknown): string => Buffer.from(v as Uint8Array).toString();

describe("PyTorch 1.13 and 2.x clients sharing one rdzv server", () => {
  let server: TCPStoreServer;
  let v1: PyAgent;
  let v2: PyAgent;

  before(async () => {
    const [t1, t2] = await Promise.all([findTorch1(), findTorch2()]);
    server = await createTCPStoreServer({ host: HOST, port: 0 });
    [v1, v2] = await Promise.all([startAgent(t1), startAgent(t2)]);
    await Promise.all([
      v1.open("s", HOST, server.port, 10, { world_size: 2 }),
      v1.open("blocker", HOST, server.port),
      v2.open("s", HOST, server.port, 10, { world_size: 2 }),
      v2.open("blocker", HOST, server.port),
    ]);
  });

  after(async () => {
    await Promise.all([v1?.close(), v2?.close()]);
    await server?.close();
  });

  it("serves both dialects at once, and both joined init/", () => {
    const { dialects } = server.stats();
    assert.ok(dialects.v1 >= 1 && dialects.v2 >= 2, JSON.stringify(dialects));
    assert.equal(text(server.engine.get("init/")), "2");
  });

  it("each sees the other's keys", async () => {
    await v1.ok("s", "set", "from/v1", "one");
    await v2.ok("s", "set", "from/v2", "two");
    assert.equal(await v1.ok("s", "add", "shared/n", 1), 1);
    assert.equal(await v2.ok("s", "add", "shared/n", 1), 2);
    assert.equal(text(await v1.ok("s", "get", "from/v2")), "two");
    assert.equal(text(await v2.ok("s", "get", "from/v1")), "one");
    assert.equal(text(await v1.ok("s", "compare_set", "from/v2", "two", "2")), "2");
    assert.equal(text(await v2.ok("s", "compare_set", "from/v1", "one", "1")), "1");
    assert.equal(text(await v2.ok("s", "get", "from/v2")), "2");
    assert.equal(await v2.ok("s", "check", ["from/v1", "from/v2", "shared/n"]), true);
    assert.ok(((await v2.ok("s", "list_keys")) as string[]).includes("from/v1"));
    assert.equal(await v1.ok("s", "num_keys"), await v2.ok("s", "num_keys"));
    assert.equal(await v2.ok("s", "delete_key", "from/v1"), true);
    assert.equal(await v1.ok("s", "delete_key", "from/v1"), false);
  });

  it("a 1.13 get blocked on a key is woken by the 2.x client's set", async () => {
    const got = v1.call("blocker", "get", ["wake/v1"]);
    await delay(300);
    await v2.ok("s", "set", "wake/v1", "by v2");
    const reply = await got;
    assert.ok(reply.ok, JSON.stringify(reply));
    assert.equal(text(reply.value), "by v2");
    assert.ok(reply.ms >= 250, `returned after ${reply.ms} ms, before the set`);
  });

  it("a 2.x get and multi_get blocked on keys are woken by the 1.13 client", async () => {
    await v2.clone("blocker", "blocker2");
    const got = v2.call("blocker", "get", ["wake/v2"]);
    const multi = v2.call("blocker2", "multi_get", [["wake/m1", "wake/m2"]]);
    await delay(300);
    await v1.ok("s", "set", "wake/v2", "by v1");
    await v1.ok("s", "add", "wake/m1", 7);
    await v1.ok("s", "compare_set", "wake/m2", "", "created by v1");
    const [g, m] = await Promise.all([got, multi]);
    assert.ok(g.ok && m.ok, JSON.stringify([g, m]));
    assert.equal(text(g.value), "by v1");
    assert.deepEqual((m.value as Buffer[]).map(text), ["7", "created by v1"]);
    assert.ok(g.ms >= 250 && m.ms >= 250, `returned after ${g.ms}/${m.ms} ms, before the sets`);
  });

  it("a server that requires an auth token refuses both PyTorch clients (closed as bad input)", async () => {
    const locked = await createTCPStoreServer({ host: HOST, port: 0, authToken: "only-rdzv-clients" });
    try {
      // PyTorch cannot authenticate: its first real request closes the connection.
      for (const agent of [v1, v2]) {
        await assert.rejects(agent.open("locked", HOST, locked.port, 2, { world_size: 2 }), /raised/);
      }
      const stats = locked.stats();
      assert.ok(stats.protocolErrors >= 2, JSON.stringify(stats));
      assert.equal(locked.engine.get("init/"), undefined, "no unauthenticated write went through");
    } finally {
      await locked.close();
    }
  });

  it("a 1.13 wait on two keys needs both, one from each client", async () => {
    const waited = v1.call("blocker", "wait", [["both/a", "both/b"]]);
    await delay(200);
    await v2.ok("s", "set", "both/a", "a");
    await delay(200);
    await v1.ok("s", "set", "both/b", "b");
    const reply = await waited;
    assert.ok(reply.ok && reply.ms >= 350, JSON.stringify(reply));
  });
});
