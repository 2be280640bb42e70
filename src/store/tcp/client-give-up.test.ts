/**
 * The TCP store client's give-up rule: the pure decision (client-give-up.ts), then the real thing against
 * a server that is stopped for good, one that comes back in time, and one that accepts but never answers.
 */

import assert from "node:assert/strict";
import { once } from "node:events";
import { createServer, type Server, type Socket } from "node:net";
import { afterEach, describe, it } from "node:test";
import {
  ErrorCode,
  findStoreGone,
  RendezvousConnectionError,
  RendezvousStoreGoneError,
} from "../../errors.js";
import { connectTCPStore, type TCPStore, type TCPStoreOptions } from "./client.js";
import { checkGiveUpRule, classifyConnectFailure, givesUp, goneError, nextStreak } from "./client-give-up.js";
import { createTCPStoreServer, type TCPStoreServer } from "./server.js";

const HOST = "127.0.0.1";
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

function errno(code: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`connect ${code} 127.0.0.1:1`), { code });
}

describe("give-up rule (pure)", () => {
  it("counts refusals and unreachable hosts, found through the cause chain; nothing else", () => {
    const wrapped = new RendezvousConnectionError("TCPStore connection to x failed: ECONNREFUSED", {
      cause: errno("ECONNREFUSED"),
    });
    assert.deepEqual(classifyConnectFailure(wrapped), { kind: "refused", code: "ECONNREFUSED" });
    assert.deepEqual(classifyConnectFailure(errno("EHOSTUNREACH")), {
      kind: "refused",
      code: "EHOSTUNREACH",
    });
    assert.deepEqual(classifyConnectFailure(errno("ENETUNREACH")), { kind: "refused", code: "ENETUNREACH" });
    // A slow server, a reset handshake, an attempt that timed out: something may be there.
    for (const err of [errno("ETIMEDOUT"), errno("ECONNRESET"), new RendezvousConnectionError("timed out")]) {
      assert.deepEqual(classifyConnectFailure(err), { kind: "other" }, String(err));
    }
    assert.deepEqual(classifyConnectFailure("not an error"), { kind: "other" });
  });

  it("a streak starts at the first refusal, goes on through refusals, ends at anything else", () => {
    const refused = { kind: "refused", code: "ECONNREFUSED" } as const;
    let streak = nextStreak(undefined, refused, 1000);
    streak = nextStreak(streak, { kind: "refused", code: "EHOSTUNREACH" }, 1400);
    assert.deepEqual(streak, { sinceMs: 1000, code: "EHOSTUNREACH" });
    const rule = { afterRefusedMs: 500 };
    assert.equal(givesUp(rule, streak!, 1499), false);
    assert.equal(givesUp(rule, streak!, 1500), true);
    assert.equal(nextStreak(streak, { kind: "connected" }, 1600), undefined);
    assert.equal(nextStreak(streak, { kind: "other" }, 1600), undefined);
    assert.deepEqual(nextStreak(nextStreak(streak, { kind: "other" }, 1600), refused, 1700), {
      sinceMs: 1700,
      code: "ECONNREFUSED",
    });
  });

  it("the error is a store-gone connection error with the rule's message, or a default naming the peer", () => {
    const streak = { sinceMs: Date.UTC(2026, 0, 1), code: "ECONNREFUSED" };
    const custom = goneError(
      { afterRefusedMs: 9, message: (r) => `${r.peer} ${r.code} ${r.afterRefusedMs}` },
      "h:1",
      streak,
    );
    assert.ok(custom instanceof RendezvousStoreGoneError);
    assert.equal(custom.code, ErrorCode.Connection);
    assert.equal(custom.message, "h:1 ECONNREFUSED 9");
    const plain = goneError({ afterRefusedMs: 9 }, "h:1", streak);
    assert.match(
      plain.message,
      /TCPStore server at h:1 is gone: .*refused \(ECONNREFUSED\) since 2026-01-01T/,
    );
    // Callers find it through wrappers.
    assert.equal(findStoreGone(new Error("wrapped", { cause: plain })), plain);
    assert.equal(findStoreGone(new RendezvousConnectionError("not gone")), undefined);
  });

  it("rejects bad rules, naming the value", () => {
    assert.equal(checkGiveUpRule(undefined), undefined);
    for (const bad of [{ afterRefusedMs: 0 }, { afterRefusedMs: -1 }, { afterRefusedMs: Number.NaN }]) {
      assert.throws(() => checkGiveUpRule(bad), /afterRefusedMs must be a positive number of ms/);
    }
    assert.throws(
      () => checkGiveUpRule({ afterRefusedMs: 1, message: "x" as never }),
      (err: { code: string }) => err.code === ErrorCode.InvalidArgument,
    );
  });
});

describe("give-up rule (sockets)", () => {
  const cleanups: (() => Promise<unknown>)[] = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
  });

  async function serverAt(port = 0): Promise<TCPStoreServer> {
    const s = await createTCPStoreServer({ host: HOST, port });
    cleanups.push(() => s.close());
    return s;
  }

  async function storeOf(port: number, options: Partial<TCPStoreOptions> = {}) {
    const store = await connectTCPStore({ host: HOST, port, timeoutMs: 20_000, ...options });
    cleanups.push(() => store.close());
    return store;
  }

  /** Stops `server` for good, once each of `stores` saw its connection drop. */
  async function stop(server: TCPStoreServer, ...stores: TCPStore[]): Promise<void> {
    const dropped = stores.map((s) => once(s, "disconnect"));
    await server.close();
    await Promise.all(dropped);
  }

  async function goneFrom(call: Promise<unknown>): Promise<RendezvousStoreGoneError> {
    let caught: unknown;
    await assert.rejects(call, (err: unknown) => {
      caught = err;
      return true;
    });
    assert.ok(caught instanceof RendezvousStoreGoneError, String(caught));
    return caught;
  }

  it("a server stopped for good: the calls reconnecting fail with the rule's reason, and every later one", async () => {
    const server = await serverAt();
    const store = await storeOf(server.port, {
      giveUp: { afterRefusedMs: 300, message: (r) => `the test's store at ${r.peer} is gone (${r.code})` },
    });
    await store.set("k", "v");
    await stop(server, store);
    // Calls with a 20 s budget each, pending while the client retries the refused server: before, they
    // waited out that budget and failed with "could not connect ... within 20000ms".
    const calls = [
      store.set("a", "1", { timeoutMs: 20_000 }),
      store.get("k", { timeoutMs: 20_000 }),
      store.wait(["never"], { timeoutMs: 20_000 }),
    ];
    const errors = await Promise.all(calls.map(goneFrom));
    for (const err of errors) {
      assert.equal(err.code, ErrorCode.Connection);
      assert.match(err.message, /^the test's store at 127\.0\.0\.1:\d+ is gone \(ECONNREFUSED\)$/);
    }
    assert.equal(store.gone, errors[0]);
    // Later calls fail with the same error, without a connect attempt of their own.
    assert.equal(await goneFrom(store.add("n", 1, { timeoutMs: 20_000 })), errors[0]);
    assert.equal(await goneFrom(store.check(["k"])), errors[0]);
  });

  it("a server that comes back before the budget is reconnected to, as without the rule", async () => {
    const first = await serverAt();
    const port = first.port;
    const store = await storeOf(port, { giveUp: { afterRefusedMs: 5000 } });
    await store.set("k", "v");
    await stop(first, store);
    const pending = store.set("k", "w", { timeoutMs: 20_000 });
    await sleep(500); // refused meanwhile
    const second = await serverAt(port);
    await pending;
    assert.equal(store.gone, undefined);
    assert.equal(second.stats().keys, 1);
  });

  it("the rule can be set on a connected store; without one a refused server fails each call's budget only", async () => {
    const server = await serverAt();
    const plain = await storeOf(server.port);
    const ruled = await storeOf(server.port);
    await Promise.all([plain.set("k", "v"), ruled.set("k", "v")]);
    ruled.giveUp = { afterRefusedMs: 200 };
    await stop(server, plain, ruled);
    const err = await rejectsConnection(plain.set("a", "1", { timeoutMs: 600 }));
    assert.ok(!(err instanceof RendezvousStoreGoneError), err.message);
    // The call's budget and the connect loop's deadline are the same instant: which reports it first (the
    // budget's timer, or the loop after an attempt refused at that instant) depends on the timers' order
    // (this assertion failed once, beside other tests, when it took only the first).
    assert.match(
      err.message,
      /could not connect to the TCPStore server at .* (within 600ms|\(\d+ attempts?\)): /,
    );
    assert.equal(plain.gone, undefined);
    await goneFrom(ruled.set("a", "1", { timeoutMs: 20_000 }));
  });

  it("a server that accepts but never answers is not gone: connect timeouts do not count", async () => {
    const server = await serverAt();
    const store = await storeOf(server.port, { giveUp: { afterRefusedMs: 100 } });
    await store.set("k", "v");
    const port = server.port;
    await stop(server, store);
    const mute = await muteServer(port);
    cleanups.push(() => mute.close());
    // Each call's one attempt runs its whole budget and times out; three in a row span 10 x the rule's.
    for (let i = 0; i < 3; i++) {
      const err = await rejectsConnection(store.set("a", "1", { timeoutMs: 1000 }));
      assert.ok(!(err instanceof RendezvousStoreGoneError), err.message);
    }
    await sleep(200); // the last attempt's own end
    assert.equal(store.gone, undefined);
  });

  /** Rejects with a connection error; returns it. */
  async function rejectsConnection(call: Promise<unknown>): Promise<Error> {
    let caught: unknown;
    await assert.rejects(call, (err: { code?: string }) => {
      caught = err;
      return err.code === ErrorCode.Connection;
    });
    return caught as Error;
  }
});

/** A listener on `port` that accepts connections and never writes a byte (a stalled server). */
async function muteServer(port: number): Promise<{ close: () => Promise<void> }> {
  const sockets = new Set<Socket>();
  const srv: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on("error", () => {});
  });
  await new Promise<void>((resolve) => srv.listen(port, HOST, resolve));
  return {
    close: () => {
      for (const s of sockets) s.destroy();
      return new Promise((resolve) => srv.close(() => resolve()));
    },
  };
}
