/**
 * When `EtcdStore` runs a call again (no etcd needed: the operations here throw the errors etcd3 throws).
 * A read is repeated while etcd cannot answer, until its deadline; a write only when it was never sent.
 * test/etcd-fault.test.ts does the same against a real 3-member cluster whose leader is killed.
 */

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { BrokenCircuitError } from "cockatiel";
import {
  type Etcd3,
  GRPCDeadlineExceededError,
  GRPCInvalidArgumentError,
  GRPCUnavailableError,
  type Namespace,
} from "etcd3";
import { ErrorCode } from "../../errors.js";
import { isLeaderChange, isMemberFailure, isUnsent, mapEtcdError } from "./errors.js";
import { EtcdStore } from "./store.js";

/** A store whose client is never used: the tests hand `call`/`read` their own operations. */
function store(timeoutMs = 5_000): EtcdStore {
  return new EtcdStore({} as Etcd3, { ownsClient: false, timeoutMs, hosts: ["http://127.0.0.1:1"] });
}

const leaderChanged = (): Error => new GRPCUnavailableError("14 UNAVAILABLE: etcdserver: leader changed");

/** An operation that throws `errors` in turn, then returns "ok"; records each attempt's deadline. */
function flaky(...errors: (() => Error)[]) {
  const deadlines: number[] = [];
  const op = async (o: { deadline: Date }): Promise<string> => {
    deadlines.push(o.deadline.getTime());
    const next = errors[deadlines.length - 1];
    if (next !== undefined) throw next();
    return "ok";
  };
  return { op, deadlines };
}

const codeOf = (p: Promise<unknown>): Promise<string | undefined> =>
  p.then(
    () => "resolved",
    (err: { code?: string }) => err.code,
  );

describe("EtcdStore: which calls run again", () => {
  it("a read that meets an election runs again under the same deadline", async () => {
    const s = store();
    const { op, deadlines } = flaky(leaderChanged, () => new GRPCUnavailableError("read ECONNRESET"));
    assert.equal(await s.read("check", undefined, op), "ok");
    assert.equal(deadlines.length, 3);
    assert.equal(new Set(deadlines).size, 1, "every attempt shares the call's deadline");
  });

  it("a write that meets an election is not repeated (it may have been applied)", async () => {
    const s = store();
    const { op, deadlines } = flaky(leaderChanged);
    assert.equal(await codeOf(s.call("join", undefined, op)), ErrorCode.Connection);
    assert.equal(deadlines.length, 1);
  });

  it("any call runs again when etcd3 did not send it (every member's circuit open)", async () => {
    const s = store();
    const { op, deadlines } = flaky(
      () => new BrokenCircuitError(),
      () => new BrokenCircuitError(),
    );
    assert.equal(await s.call("join", undefined, op), "ok");
    assert.equal(deadlines.length, 3);
  });

  it("a read that keeps failing gives up by its deadline with RDZV_CONNECTION and etcd's message", async () => {
    const s = store();
    let attempts = 0;
    const started = Date.now();
    const err = await s
      .read("check", { timeoutMs: 300 }, async () => {
        attempts++;
        throw leaderChanged();
      })
      .catch((e: unknown) => e as Error & { code: string });
    const elapsed = Date.now() - started;
    assert.equal(err.code, ErrorCode.Connection);
    assert.match(err.message, /^check: cannot reach etcd at http:\/\/127\.0\.0\.1:1: .*leader changed/);
    // Pauses of 25, 50, 75, 100 ms fit in 300 ms, the next (125) would not: 5 attempts, fewer when
    // timers fire late on a loaded machine. No pause is started that would end past the deadline.
    assert.ok(attempts >= 3 && attempts <= 5, `${attempts} attempts`);
    assert.ok(elapsed < 1_000, `gave up after ${elapsed} ms, long past the call's 300 ms`);
  });

  it("a missed deadline or a refused request is not repeated", async () => {
    const s = store();
    const late = flaky(() => new GRPCDeadlineExceededError("4 DEADLINE_EXCEEDED"));
    assert.equal(await codeOf(s.read("check", undefined, late.op)), ErrorCode.Timeout);
    assert.equal(late.deadlines.length, 1);
    const wrong = flaky(() => new GRPCInvalidArgumentError("3 INVALID_ARGUMENT: key is not provided"));
    assert.equal(await codeOf(s.read("check", undefined, wrong.op)), ErrorCode.Store);
    assert.equal(wrong.deadlines.length, 1);
  });

  it("an abort or a close during the pause ends the call at once", async () => {
    const s = store();
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 20);
    let started = Date.now();
    const always = async (): Promise<never> => {
      throw leaderChanged();
    };
    assert.equal(await codeOf(s.read("check", { signal: controller.signal }, always)), ErrorCode.Aborted);
    assert.ok(Date.now() - started < 1_000);

    started = Date.now();
    const pending = codeOf(s.read("check", undefined, always));
    setTimeout(() => void s.close(), 20);
    assert.equal(await pending, ErrorCode.ResourceClosed);
    assert.ok(Date.now() - started < 1_000);
  });

  it("classifies etcd3's errors", () => {
    assert.equal(isLeaderChange(leaderChanged()), true);
    assert.equal(isLeaderChange(new GRPCUnavailableError("read ECONNRESET")), false);
    assert.equal(isMemberFailure(leaderChanged()), true);
    assert.equal(isMemberFailure(new GRPCDeadlineExceededError("late")), false);
    assert.equal(isMemberFailure("not an error"), false);
    assert.equal(isUnsent(new BrokenCircuitError()), true);
    assert.equal(isUnsent(leaderChanged()), false);
    assert.equal(mapEtcdError(new BrokenCircuitError(), "get", ["h:1"]).code, ErrorCode.Connection);
    // gRPC's empty "Resolution note: " tail is dropped.
    const refused = new GRPCUnavailableError(
      "14 UNAVAILABLE: No connection established. Last error: Error: connect ECONNREFUSED 127.0.0.1:1. Resolution note: ",
    );
    assert.match(
      mapEtcdError(refused, "connect", ["127.0.0.1:1"]).message,
      /connect ECONNREFUSED 127\.0\.0\.1:1\.$/,
    );
  });
});

/**
 * A store on a one-key etcd for `add`: `get` reads the counter, a transaction compares its create or mod revision,
 * and each transaction meets the next of `fates`: "ok" (applied, answered), "lost" (applied, but the reply
 * never came: etcd3 throws UNAVAILABLE), "unsent" (never sent: no connection). Runs out as "ok".
 */
function oneKeyStore(fates: ("ok" | "lost" | "unsent")[]) {
  const state = { value: undefined as string | undefined, mod: 0, sent: 0 };
  const kvs = () =>
    state.value === undefined ? [] : [{ value: Buffer.from(state.value), mod_revision: String(state.mod) }];
  const read = { options: () => read, exec: async () => ({ kvs: kvs() }) };
  const client = {
    get: () => read,
    put: () => ({ value: (v: string) => ({ put: v }) }),
    if: (_key: unknown, column: string, _op: string, expected: number | string) => {
      let put = "";
      const txn = {
        // biome-ignore lint/suspicious/noThenProperty: etcd3's transaction builder names its success branch so
        then: (p: { put: string }) => {
          put = p.put;
          return txn;
        },
        else: () => txn,
        options: () => txn,
        commit: async () => {
          const fate = fates.shift() ?? "ok";
          if (fate === "unsent") {
            throw new GRPCUnavailableError(
              "14 UNAVAILABLE: No connection established. Last error: ECONNREFUSED",
            );
          }
          state.sent++;
          const current = column === "Create" ? (state.value === undefined ? 0 : 1) : String(state.mod);
          const succeeded = current === expected;
          if (succeeded) {
            state.value = put;
            state.mod++;
          }
          if (fate === "lost") throw new GRPCUnavailableError("14 UNAVAILABLE: read ECONNRESET");
          return { succeeded, responses: succeeded ? [] : [{ response_range: { kvs: kvs() } }] };
        },
      };
      return txn;
    },
  };
  const store = new EtcdStore(client as unknown as Etcd3, {
    ownsClient: false,
    hosts: ["http://127.0.0.1:1"],
    // The same one-key etcd behind the store's reads and its adds' writes.
    onceClient: () => client as unknown as Namespace,
  });
  return { store, state };
}

describe("EtcdStore.add: a write etcd may have applied", () => {
  it("is not sent again: the add fails saying the counter may or may not include it", async () => {
    const { store: s, state } = oneKeyStore(["ok", "lost"]);
    assert.equal(await s.add("c", 1), 1);
    const err = (await s.add("c", 1).then(
      () => undefined,
      (e: unknown) => e,
    )) as Error & { code: string };
    assert.equal(err.code, ErrorCode.Connection);
    assert.match(err.message, /^add: .*may or may not include this add.*read ECONNRESET/);
    assert.equal(state.sent, 2, "the lost write was sent once");
    assert.equal(state.value, "2", "and applied once");
    assert.equal(await s.add("c", 0), 2);
  });

  it("runs again when it was never sent", async () => {
    const { store: s, state } = oneKeyStore(["unsent", "unsent", "ok"]);
    assert.equal(await s.add("c", 5), 5);
    assert.equal(state.sent, 1);
    assert.equal(state.value, "5");
  });
});
