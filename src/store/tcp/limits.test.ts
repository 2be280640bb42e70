/**
 * Limits end to end, with clear errors: rdzv's client refuses requests over its limits before sending
 * them; a server closes a connection over its own limits (a client with looser limits then gets an error
 * that names them) and keeps serving everyone else.
 */

import assert from "node:assert/strict";
import { afterEach, describe, it } from "node:test";
import { recordingLogger } from "../../../test/helpers/recording-logger.js";
import { TcpFixtures } from "../../../test/helpers/tcp-fixtures.js";
import { ErrorCode } from "../../errors.js";

const fx = new TcpFixtures();
afterEach(() => fx.cleanup());

const rejectsWith = (code: string, pattern: RegExp) => (err: unknown) => {
  const e = err as Error & { code?: string };
  assert.equal(e.code, code, e.message);
  assert.match(e.message, pattern);
  return true;
};

describe("TCPStore limits", () => {
  it("the client refuses a request over its limits without sending it, naming the limit", async () => {
    const server = await fx.server();
    const limits = { maxKeyBytes: 16, maxValueBytes: 32, maxKeysPerRequest: 3 };
    const store = await fx.client(server, { limits });
    await assert.rejects(
      store.set("k", Buffer.alloc(33)),
      rejectsWith(ErrorCode.LimitExceeded, /maxValueBytes \(32\)/),
    );
    await assert.rejects(
      store.get("k".repeat(20)),
      rejectsWith(ErrorCode.LimitExceeded, /maxKeyBytes \(16\)/),
    );
    await assert.rejects(
      store.wait(["a", "b", "c", "d"]),
      rejectsWith(ErrorCode.LimitExceeded, /of 4 keys exceeds maxKeysPerRequest \(3\)/),
    );
    await assert.rejects(
      store.multiSet(["a", "b", "c", "d"], ["1", "2", "3", "4"]),
      rejectsWith(ErrorCode.LimitExceeded, /maxKeysPerRequest/),
    );
    // Nothing reached the server, and the connection is fine.
    assert.equal(server.stats().protocolErrors, 0);
    assert.equal(await store.add("n", 1), 1);
    assert.equal(server.stats().connectionsTotal, 1);
  });

  it("a server's lower waiter limit closes the connection with a reason; the client's error names the limits", async () => {
    const server = await fx.server({ limits: { maxWaitersPerConnection: 2 } });
    const reasons: string[] = [];
    server.on("protocolError", (e) => reasons.push(e.reason));
    const store = await fx.client(server);
    const other = await fx.client(server);
    await assert.rejects(
      store.wait(["a", "b", "c"], { timeoutMs: 5000 }),
      rejectsWith(ErrorCode.Connection, /waiters per connection/),
    );
    assert.deepEqual(reasons, ["WAIT keys: 3 exceeds maxWaitersPerConnection (2)"]);
    await other.set("a", "1");
    assert.equal(Buffer.from(await store.get("a")).toString(), "1", "the client reconnects");
  });

  it("a full store (maxStoreBytes) refuses a write that grows it and closes that connection, logging once; the rest goes on", async () => {
    const logger = recordingLogger();
    const server = await fx.server({ limits: { maxStoreBytes: 300 }, logger });
    const store = await fx.client(server);
    const other = await fx.client(server);
    await store.set("a", "x".repeat(100)); // "/a": 2 + 100 bytes
    assert.equal(server.stats().storeBytes, 102);
    // The marker a closing connection leaves is the server's own write: a full store still takes it.
    const watcher = await fx.client(server);
    await watcher.setOnDisconnect("gone/watcher", "1");
    for (let i = 0; i < 3; i++) {
      await assert.rejects(
        store.set("b", "y".repeat(250)),
        rejectsWith(ErrorCode.Connection, /closed the connection .*the store's total size/),
      );
    }
    assert.equal(await store.check(["b"]), false, "nothing of the refused write was stored");
    assert.equal(server.stats().storeFull, 3);
    assert.deepEqual(
      logger.warnings.filter((w) => /the store is full/.test(w.message)).map((w) => w.fields?.reason),
      ['store full: writing "/b" would take the data to 354 bytes, past its limit of 300'],
    );
    // Writes that fit still pass.
    await other.set("c", "z".repeat(150)); // 254
    await watcher.close();
    await other.wait(["gone/watcher"], { timeoutMs: 5000 });
    assert.equal(server.stats().storeBytes, 254 + 14, "the marker is stored past the limit's check");
    // Deletes free room; reads and shrinking writes go on.
    assert.equal(Buffer.from(await other.get("a")).toString(), "x".repeat(100));
    await other.set("c", "z");
    await other.deleteKey("a");
    await store.set("b", "y".repeat(250));
    assert.equal(server.stats().storeBytes, 3 + 14 + 252);
  });
});
