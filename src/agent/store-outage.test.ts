/**
 * The agent's bound on an unreachable store: the pure tracker (store-outage.ts) on a fake clock, then the
 * round watch (agent-monitor.ts) over a scripted round-end waiter.
 */

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  AbortedError,
  ErrorCode,
  RendezvousConnectionError,
  RendezvousStoreGoneError,
  RendezvousTimeoutError,
} from "../errors.js";
import { silentLogger } from "../log.js";
import type { RendezvousHandler } from "../rendezvous/api.js";
import { type MonitorContext, type RoundEndWaiter, watchRoundEnd } from "./agent-monitor.js";
import { StoreOutage } from "./store-outage.js";

const refused = (): RendezvousConnectionError =>
  new RendezvousConnectionError("could not connect to the TCPStore server at 10.0.0.1:29400 within 30000ms");

describe("StoreOutage", () => {
  it("retries until no call succeeded for the bound, then names the store, how long and what to do", () => {
    let now = Date.UTC(2026, 0, 1);
    const outage = new StoreOutage(60_000, "c10d at 10.0.0.1:29400", () => now);
    assert.equal(outage.leftMs(), undefined);
    assert.equal(outage.failed(refused()), undefined);
    now += 59_999;
    assert.equal(outage.failed(new RendezvousTimeoutError("get timeout after 5000ms")), undefined);
    assert.equal(outage.leftMs(), 1);
    now += 1;
    // The watch's own bound aborts the call in flight: the store's last error is the one reported.
    const err = outage.failed(new AbortedError());
    assert.ok(err instanceof RendezvousStoreGoneError);
    assert.equal(err.code, ErrorCode.Connection);
    assert.match(
      err.message,
      /^could not reach the rendezvous store \(c10d at 10\.0\.0\.1:29400\) for 60 s /,
    );
    assert.match(
      err.message,
      /since 2026-01-01T00:00:00\.000Z\), longer than store_unreachable_timeout \(60 s\)/,
    );
    assert.match(err.message, /Last error: get timeout after 5000ms\./);
    assert.match(err.message, /raise store_unreachable_timeout \(seconds\) in --rdzv-conf$/);
  });

  it("a call that succeeds ends the outage: the next failure starts the clock again", () => {
    let now = 0;
    const outage = new StoreOutage(1000, "s", () => now);
    outage.failed(refused());
    now = 900;
    outage.answered();
    assert.equal(outage.leftMs(), undefined);
    now = 1500;
    assert.equal(outage.failed(refused()), undefined);
    assert.equal(outage.leftMs(), 1000);
  });

  it("a store known gone for good ends it at once, with the store's own error (also wrapped)", () => {
    const outage = new StoreOutage(600_000, "s", () => 0);
    const gone = new RendezvousStoreGoneError(
      "the rendezvous store at h:1, hosted by node a's agent, is gone",
    );
    assert.equal(outage.failed(gone), gone);
    assert.equal(outage.failed(new Error("keep-alive failed", { cause: gone })), gone);
  });
});

describe("watchRoundEnd", () => {
  const context = (boundMs: number): MonitorContext => ({
    handler: { numNodesWaiting: async () => 0 } as unknown as RendezvousHandler,
    logger: silentLogger,
    monitorIntervalMs: 10,
    storeUnreachableTimeoutMs: boundMs,
    storeName: "c10d at 127.0.0.1:1",
  });

  it("gives up once the store stays unreachable for the bound, also while a call hangs", async () => {
    let calls = 0;
    // Fails at once twice, then hangs (a connect that waits its whole budget) until aborted.
    const wait: RoundEndWaiter = ({ signal }) => {
      calls++;
      if (calls <= 2) return Promise.reject(refused());
      return new Promise((_, reject) => {
        signal?.addEventListener("abort", () => reject(new AbortedError()), { once: true });
      });
    };
    // Before: retried for ever (this test then ran into its own timeout).
    await assert.rejects(watchRoundEnd(context(300), wait, new AbortController().signal), (err: Error) => {
      assert.ok(err instanceof RendezvousStoreGoneError, String(err));
      assert.match(
        err.message,
        /rendezvous store \(c10d at 127\.0\.0\.1:1\) for 0\.\d s .*Last error: could not connect/,
      );
      return true;
    });
    assert.equal(calls, 3);
  });

  it("rides out an outage shorter than the bound, and stops at once for a store gone for good", async () => {
    const script: (() => Promise<boolean>)[] = [
      () => Promise.reject(refused()),
      () => Promise.reject(refused()),
      () => Promise.resolve(true),
    ];
    const event = await watchRoundEnd(context(60_000), () => script.shift()!(), new AbortController().signal);
    assert.deepEqual(event, { kind: "round-ended" });
    const gone = new RendezvousStoreGoneError("gone");
    await assert.rejects(
      watchRoundEnd(context(60_000), () => Promise.reject(gone), new AbortController().signal),
      (err) => err === gone,
    );
  });
});
