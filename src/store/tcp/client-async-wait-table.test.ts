/** `AsyncWaitTable` on its own: deadlines on one timer, aborts, settling, and the end of the connection. */

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { ErrorCode, RendezvousError, RendezvousTimeoutError } from "../../errors.js";
import { AsyncWaitTable } from "./client-async-waits.js";

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
const codeOf = (p: Promise<unknown>): Promise<string | undefined> =>
  p.then(
    () => "resolved",
    (err: { code?: string }) => err.code,
  );

function table(): { t: AsyncWaitTable; givenUp: number[] } {
  const givenUp: number[] = [];
  return { t: new AsyncWaitTable((id) => givenUp.push(id)), givenUp };
}

const within = (ms: number, signal?: AbortSignal) => ({
  deadlineAt: Date.now() + ms,
  onTimeout: () => new RendezvousTimeoutError(`timed out after ${ms} ms`),
  signal,
});

describe("AsyncWaitTable", { timeout: 10_000 }, () => {
  // The table's timer is unref'd (a connection's socket keeps a real process alive): keep this one alive.
  let keepAlive: NodeJS.Timeout | undefined;
  before(() => {
    keepAlive = setInterval(() => {}, 1000);
  });
  after(() => clearInterval(keepAlive));

  it("settles a wait with its value and forgets it; a late settle of the same id is ignored", async () => {
    const { t, givenUp } = table();
    const { id, done } = t.add(within(10_000));
    const value = Uint8Array.from([1, 2]);
    t.settle(id, value);
    assert.equal(await done, value);
    assert.equal(t.size, 0);
    t.settle(id, Uint8Array.from([9]));
    assert.deepEqual(givenUp, []);
  });

  it("rejects at the deadline with the wait's own error and reports it given up, once", async () => {
    const { t, givenUp } = table();
    const short = t.add(within(20));
    const long = t.add(within(10_000));
    assert.equal(await codeOf(short.done), ErrorCode.Timeout);
    assert.deepEqual(givenUp, [short.id]);
    assert.equal(t.size, 1);
    t.settle(short.id, new Uint8Array(0)); // a completion that crossed the cancel: ignored
    t.settle(long.id);
    assert.equal(await long.done, undefined);
    await sleep(30);
    assert.deepEqual(givenUp, [short.id]);
  });

  it("a wait settled before its deadline never times out, though the timer was armed for it", async () => {
    const { t, givenUp } = table();
    const first = t.add(within(20));
    t.settle(first.id);
    await first.done;
    const second = t.add(within(60));
    await sleep(35); // the timer armed for the first wait fires here and finds nothing due
    assert.equal(t.size, 1);
    assert.equal(await codeOf(second.done), ErrorCode.Timeout);
    assert.deepEqual(givenUp, [second.id]);
  });

  it("rejects with RDZV_ABORTED when the signal fires, or at once when it already had", async () => {
    const { t, givenUp } = table();
    const controller = new AbortController();
    const wait = t.add(within(10_000, controller.signal));
    controller.abort(new Error("stop"));
    await assert.rejects(wait.done, (err: unknown) => {
      assert.ok(err instanceof RendezvousError);
      assert.equal(err.code, ErrorCode.Aborted);
      assert.equal((err.cause as Error).message, "stop");
      return true;
    });
    const before = t.add(within(10_000, AbortSignal.abort()));
    assert.equal(await codeOf(before.done), ErrorCode.Aborted);
    assert.deepEqual(givenUp, [wait.id, before.id]);
    assert.equal(t.size, 0);
  });

  it("rejectAll rejects every wait with the connection's error; their signals and deadlines do nothing after", async () => {
    const { t, givenUp } = table();
    const controller = new AbortController();
    const waits = [t.add(within(20, controller.signal)), t.add(within(10_000))];
    t.rejectAll(new RendezvousError("connection lost", ErrorCode.Connection));
    assert.deepEqual(await Promise.all(waits.map((w) => codeOf(w.done))), [
      ErrorCode.Connection,
      ErrorCode.Connection,
    ]);
    controller.abort();
    await sleep(30);
    assert.deepEqual(givenUp, []);
  });

  it("ids count up from 0", () => {
    const { t } = table();
    const waits = [t.add(within(10_000)), t.add(within(10_000))];
    assert.deepEqual(
      waits.map((w) => w.id),
      [0, 1],
    );
    t.settle(0);
    waits.push(t.add(within(10_000)));
    assert.equal(waits[2]!.id, 2);
    for (const w of waits) w.done.catch(() => {});
    t.rejectAll(new RendezvousError("done", ErrorCode.Connection));
  });
});
