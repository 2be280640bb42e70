/** `AsyncWaitTable` on its own: deadlines on one timer, aborts, settling, and the end of the connection. */

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import fc from "fast-check";
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

  it("skips an id whose slot an older wait still holds, and a settle for the wrong id leaves that wait alone", async () => {
    const { t } = table();
    const first = t.add(within(10_000));
    // Ids 1..63 come and go; id 64 would share slot 0 (of the first 64) with the wait still outstanding.
    for (let i = 1; i < 64; i++) t.settle(t.add(within(10_000)).id);
    const next = t.add(within(10_000));
    assert.equal(next.id, 65);
    t.settle(64, Uint8Array.from([6, 4])); // no such wait: ignored
    assert.equal(t.size, 2);
    t.settle(first.id, Uint8Array.from([0]));
    assert.deepEqual(await first.done, Uint8Array.from([0]));
    // A late completion of an id given up does not settle the wait that took its slot later.
    assert.equal(t.forget(next.id), true);
    next.done.catch(() => {});
    const later = t.add(within(10_000));
    assert.equal(later.id & 63, later.id % 64);
    t.settle(next.id, Uint8Array.from([9]));
    assert.equal(t.size, 1);
    t.settle(later.id);
    assert.equal(await later.done, undefined);
    assert.equal(t.size, 0);
  });

  it("matches a Map of the outstanding waits under any mix of adds, settles, forgets and growth", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.oneof(
            fc.record({ op: fc.constant("add" as const), n: fc.integer({ min: 1, max: 80 }) }),
            fc.record({ op: fc.constant("settle" as const), pick: fc.nat() }),
            fc.record({ op: fc.constant("forget" as const), pick: fc.nat() }),
            fc.record({ op: fc.constant("stray" as const), id: fc.nat({ max: 4000 }) }),
          ),
          { maxLength: 60 },
        ),
        async (ops) => {
          const { t } = table();
          const model = new Map<number, { value: Uint8Array; done: Promise<Uint8Array | undefined> }>();
          const settled: Promise<void>[] = [];
          let serial = 0;
          const outstanding = (): number[] => [...model.keys()];
          for (const step of ops) {
            if (step.op === "add") {
              for (let i = 0; i < step.n; i++) {
                const { id, done } = t.add(within(10_000));
                assert.equal(model.has(id), false, `id ${id} handed out while in use`);
                model.set(id, { value: Uint8Array.from([serial & 255, serial >> 8]), done });
                serial++;
              }
            } else if (step.op === "stray") {
              if (!model.has(step.id)) t.settle(step.id, Uint8Array.from([255]));
            } else {
              const ids = outstanding();
              if (ids.length === 0) continue;
              const id = ids[step.pick % ids.length]!;
              const wait = model.get(id)!;
              model.delete(id);
              if (step.op === "settle") {
                t.settle(id, wait.value);
                settled.push(wait.done.then((v) => assert.deepEqual(v, wait.value)));
              } else {
                assert.equal(t.forget(id), true);
                assert.equal(t.forget(id), false);
                wait.done.catch(() => {});
              }
            }
            assert.equal(t.size, model.size);
          }
          await Promise.all(settled);
          for (const wait of model.values()) wait.done.catch(() => {});
          t.rejectAll(new RendezvousError("done", ErrorCode.Connection));
          assert.equal(t.size, 0);
        },
      ),
      { numRuns: 200 },
    );
  });
});
