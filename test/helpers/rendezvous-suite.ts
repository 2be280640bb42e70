/**
 * The dynamic rendezvous behaviour suite, run against several stores (test/rendezvous-behaviour.test.ts):
 * every rule of PyTorch's dynamic rendezvous (barrier, last call, exclusivity, consistency, fault tolerance,
 * per-round store, closing, spares, sticky ranks) checked with real handlers, one store connection per node.
 *
 * A "cluster" is the shared store (an in-memory engine, or rdzv's TCP store server on a loopback port);
 * every node gets a connection of its own, so that a node can crash alone: on TCP its client connection
 * closes (the server runs its on-disconnect markers), in memory its handle starts failing every call and
 * never delivers another reply (so its keep-alives stop too).
 */

import assert from "node:assert/strict";
import { afterEach, beforeEach, describe, it } from "node:test";
import { setTimeout as delay } from "node:timers/promises";
import { StoreRendezvousBackend } from "../../src/backends/store-backend.js";
import { type ErrorCode, RendezvousConnectionError } from "../../src/errors.js";
import { silentLogger } from "../../src/log.js";
import type { RendezvousInfo } from "../../src/rendezvous/api.js";
import type { RendezvousBackend } from "../../src/rendezvous/backend.js";
import { coordinateRound } from "../../src/rendezvous/coordinator.js";
import {
  createDynamicRendezvousHandler,
  type DynamicHandlerSettings,
  type DynamicRendezvousHandler,
} from "../../src/rendezvous/dynamic-handler.js";
import { GoneReason } from "../../src/rendezvous/round.js";
import { bytesToText } from "../../src/store/bytes.js";
import { KvEngine } from "../../src/store/kv-engine.js";
import { MemoryStore } from "../../src/store/memory-store.js";
import type { CallOptions, Store, StoreValue } from "../../src/store/store.js";
import { connectTCPStore, type TCPStore } from "../../src/store/tcp/client.js";
import { createTCPStoreServer } from "../../src/store/tcp/server.js";

/** Short timings: a node counts as dead 150 ms after its keep-alives stop. */
export const TIMING = {
  keepAliveIntervalMs: 50,
  keepAliveMaxAttempts: 3,
  lastCallTimeoutMs: 250,
  joinTimeoutMs: 8000,
} as const;

/** The shared store of a test. */
export interface TestCluster {
  readonly name: string;
  /** A new connection for one node, which can crash. */
  connect(): Promise<CrashableStore>;
  /** A connection for the test itself, to look at the rendezvous state. */
  readonly observer: Store;
  /**
   * The backend of a node (or of the observer) over `store`; default `StoreRendezvousBackend`. Clusters of
   * backends with keys of their own (etcd) supply it.
   */
  backend?(store: Store, runId: string): RendezvousBackend;
  close(): Promise<void>;
}

/** Makes a fresh cluster for one test. */
export type ClusterFactory = () => Promise<TestCluster>;

/**
 * A store handle that can "crash": afterwards every call rejects with `RDZV_CONNECTION` and calls already
 * in flight never deliver their result, like a process that died mid-call. It can also be armed to crash
 * just before a given call. rdzv's TCP store extensions (on-disconnect markers) are passed through.
 */
export class CrashableStore implements Store {
  readonly #inner: Store;
  readonly #onCrash: () => Promise<void>;
  #crashed = false;
  #trigger: ((method: string, keys: readonly string[]) => boolean) | undefined;

  constructor(inner: Store, onCrash: () => Promise<void> = async () => undefined) {
    this.#inner = inner;
    this.#onCrash = onCrash;
  }

  get timeoutMs(): number {
    return this.#inner.timeoutMs;
  }

  set timeoutMs(value: number) {
    this.#inner.timeoutMs = value;
  }

  get crashed(): boolean {
    return this.#crashed;
  }

  async crash(): Promise<void> {
    if (this.#crashed) return;
    this.#crashed = true;
    await this.#onCrash();
  }

  /** Crashes right before the first `method` call on a key containing `keyPart`. */
  crashBefore(method: string, keyPart: string): void {
    this.#trigger = (m, keys) => m === method && keys.some((k) => k.includes(keyPart));
  }

  /** Passed through when the inner store is rdzv's TCP store, so that its server marks this node's death. */
  get hasExtensions(): boolean {
    return (this.#inner as { hasExtensions?: boolean }).hasExtensions === true;
  }

  setOnDisconnect(key: string, value: StoreValue, options?: CallOptions): Promise<void> {
    return this.#call("setOnDisconnect", [key], () =>
      this.#extensions().setOnDisconnect(key, value, options),
    );
  }

  clearOnDisconnect(key: string, options?: CallOptions): Promise<void> {
    return this.#call("clearOnDisconnect", [key], () => this.#extensions().clearOnDisconnect(key, options));
  }

  #extensions(): Pick<TCPStore, "setOnDisconnect" | "clearOnDisconnect"> {
    return this.#inner as unknown as TCPStore;
  }

  async #call<T>(method: string, keys: readonly string[], op: () => Promise<T>): Promise<T> {
    if (!this.#crashed && this.#trigger?.(method, keys)) await this.crash();
    if (this.#crashed) throw new RendezvousConnectionError("the node crashed");
    try {
      return await op();
    } finally {
      // biome-ignore lint/correctness/noUnsafeFinally: a dead process sees neither results nor errors.
      if (this.#crashed) throw new RendezvousConnectionError("the node crashed");
    }
  }

  set(key: string, value: StoreValue, options?: CallOptions): Promise<void> {
    return this.#call("set", [key], () => this.#inner.set(key, value, options));
  }
  get(key: string, options?: CallOptions): Promise<Uint8Array> {
    return this.#call("get", [key], () => this.#inner.get(key, options));
  }
  add(key: string, delta: number, options?: CallOptions): Promise<number> {
    return this.#call("add", [key], () => this.#inner.add(key, delta, options));
  }
  compareSet(
    key: string,
    expected: StoreValue,
    desired: StoreValue,
    options?: CallOptions,
  ): Promise<Uint8Array> {
    return this.#call("compareSet", [key], () => this.#inner.compareSet(key, expected, desired, options));
  }
  wait(keys: readonly string[], options?: CallOptions): Promise<void> {
    return this.#call("wait", keys, () => this.#inner.wait(keys, options));
  }
  check(keys: readonly string[], options?: CallOptions): Promise<boolean> {
    return this.#call("check", keys, () => this.#inner.check(keys, options));
  }
  deleteKey(key: string, options?: CallOptions): Promise<boolean> {
    return this.#call("deleteKey", [key], () => this.#inner.deleteKey(key, options));
  }
  numKeys(options?: CallOptions): Promise<number> {
    return this.#call("numKeys", [], () => this.#inner.numKeys(options));
  }
  multiGet(keys: readonly string[], options?: CallOptions): Promise<Uint8Array[]> {
    return this.#call("multiGet", keys, () => this.#inner.multiGet(keys, options));
  }
  multiSet(keys: readonly string[], values: readonly StoreValue[], options?: CallOptions): Promise<void> {
    return this.#call("multiSet", keys, () => this.#inner.multiSet(keys, values, options));
  }
  append(key: string, value: StoreValue, options?: CallOptions): Promise<void> {
    return this.#call("append", [key], () => this.#inner.append(key, value, options));
  }
  listKeys(options?: CallOptions): Promise<string[]> {
    return this.#call("listKeys", [], () => this.#inner.listKeys(options));
  }
  close(): Promise<void> {
    return this.#inner.close();
  }
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** Nodes share one in-memory engine, each through a `MemoryStore` handle of its own. */
export async function memoryCluster(): Promise<TestCluster> {
  const engine = new KvEngine();
  return {
    name: "MemoryStore",
    observer: new MemoryStore({}, engine),
    async connect() {
      return new CrashableStore(new MemoryStore({}, engine));
    },
    async close() {},
  };
}

/** rdzv's TCP store server on a loopback port, one `connectTCPStore` client per node. */
export async function tcpCluster(): Promise<TestCluster> {
  const server = await createTCPStoreServer({ host: "127.0.0.1", port: 0 });
  const connect = () => connectTCPStore({ host: "127.0.0.1", port: server.port, timeoutMs: 30_000 });
  const observer = await connect();
  const clients: Store[] = [observer];
  return {
    name: "TCP store",
    observer,
    async connect() {
      const client = await connect();
      clients.push(client);
      // A crash closes the connection without a shutdown: the server sees it drop and runs the markers.
      return new CrashableStore(client, () => client.close());
    },
    async close() {
      await Promise.all(clients.map((c) => c.close().catch(() => undefined)));
      await server.close();
    },
  };
}

type NodeSettings = Pick<DynamicHandlerSettings, "minNodes" | "maxNodes"> & Partial<DynamicHandlerSettings>;

/** One node under test: a handler over its own store connection, and what it reported. */
export class TestNode {
  readonly handler: DynamicRendezvousHandler;
  readonly joined: { round: number; slot: number }[] = [];
  readonly lost: { round: number; slot: number }[] = [];
  /** The node's own store connection. */
  readonly store: CrashableStore;

  constructor(handler: DynamicRendezvousHandler, store: CrashableStore) {
    this.handler = handler;
    this.store = store;
    handler.on("joined", ({ round, slot }) => this.joined.push({ round, slot }));
    handler.on("nodeLost", ({ round, slot }) => this.lost.push({ round, slot }));
  }

  get id(): string {
    return this.handler.node.id;
  }

  /** `nextRendezvous()`; the promise is marked handled so that a test may leave it pending or failing. */
  next(options: { signal?: AbortSignal } = {}): Promise<RendezvousInfo> {
    const p = this.handler.nextRendezvous(options);
    p.catch(() => undefined);
    return p;
  }

  /** The slot this node took in `round`, once it joined it. */
  async slotIn(round: number, timeoutMs = 3000): Promise<number> {
    await waitUntil(
      () => this.joined.some((j) => j.round === round),
      timeoutMs,
      `${this.id} to join round ${round}`,
    );
    return this.joined.find((j) => j.round === round)!.slot;
  }

  /** Cuts the node off as a crash would: nothing it sends afterwards arrives, no reply reaches it. */
  crash(): Promise<void> {
    return this.store.crash();
  }
}

/** The nodes and cluster of one test; `close()` shuts every node down and closes the cluster. */
export class Testbed {
  readonly cluster: TestCluster;
  readonly runId: string;
  /** The rendezvous state as the test sees it. */
  readonly backend: RendezvousBackend;
  readonly #nodes: TestNode[] = [];

  constructor(cluster: TestCluster, runId = "job") {
    this.cluster = cluster;
    this.runId = runId;
    this.backend =
      cluster.backend?.(cluster.observer, runId) ?? new StoreRendezvousBackend(cluster.observer, runId);
  }

  async node(settings: NodeSettings): Promise<TestNode> {
    const store = await this.cluster.connect();
    const handler = createDynamicRendezvousHandler({
      backend: this.cluster.backend?.(store, this.runId) ?? new StoreRendezvousBackend(store, this.runId),
      runId: this.runId,
      settings: { ...TIMING, ...settings },
      localAddr: "127.0.0.1",
      // As the c10d handler: shutting down releases the node's store connection.
      onShutdown: () => store.close(),
    });
    const node = new TestNode(handler, store);
    this.#nodes.push(node);
    return node;
  }

  async nodes(count: number, settings: NodeSettings): Promise<TestNode[]> {
    return Promise.all(Array.from({ length: count }, () => this.node(settings)));
  }

  /** Waits until the test sees `slot` of `round` marked gone; returns the reason. */
  async gone(round: number, slot: number, timeoutMs = 3000): Promise<string> {
    let reason: string | undefined;
    await waitUntil(
      async () => {
        [reason] = await this.backend.goneSlots(round, [slot]);
        return reason !== undefined;
      },
      timeoutMs,
      `slot ${slot} of round ${round} to be marked gone`,
    );
    return reason!;
  }

  async close(): Promise<void> {
    await Promise.all(this.#nodes.map((n) => n.handler.shutdown().catch(() => false)));
    await this.cluster.close();
  }
}

/** Polls `cond` every 10 ms until it holds; fails the test after `timeoutMs`. */
export async function waitUntil(
  cond: () => boolean | Promise<boolean>,
  timeoutMs: number,
  what: string,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) assert.fail(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await delay(10);
  }
}

/** The state of `p` after `ms`: "pending", "resolved" or "rejected". */
export async function stateAfter(
  p: Promise<unknown>,
  ms: number,
): Promise<"pending" | "resolved" | "rejected"> {
  let state: "pending" | "resolved" | "rejected" = "pending";
  p.then(
    () => {
      state = "resolved";
    },
    () => {
      state = "rejected";
    },
  );
  await delay(ms);
  return state;
}

/** Resolves with `p`'s value, or fails the test when it takes longer than `ms`. */
export async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new assert.AssertionError({ message: `${what} took over ${ms} ms` })),
      ms,
    );
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Asserts that `p` rejects with an rdzv error of `code`; returns the error. */
export async function rejectsWith(p: Promise<unknown>, code: ErrorCode, ms = 10_000): Promise<Error> {
  let error: unknown;
  await within(
    p.then(
      (value) => assert.fail(`resolved with ${JSON.stringify(value)} instead of rejecting with ${code}`),
      (err: unknown) => {
        error = err;
      },
    ),
    ms,
    `rejection with ${code}`,
  );
  assert.equal((error as { code?: string }).code, code, `expected ${code}, got ${String(error)}`);
  return error as Error;
}

/**
 * Asserts that `infos` describe one consistent round: same round number and world size (the expected ones
 * when given), ranks exactly 0..W-1.
 */
export function assertRound(
  infos: readonly RendezvousInfo[],
  expected: { round?: number; worldSize?: number } = {},
): void {
  assert.ok(infos.length > 0);
  const { round, worldSize } = infos[0]!;
  if (expected.round !== undefined) assert.equal(round, expected.round, "round number");
  if (expected.worldSize !== undefined) assert.equal(worldSize, expected.worldSize, "world size");
  for (const info of infos) {
    assert.equal(info.round, round, "members disagree on the round");
    assert.equal(info.worldSize, worldSize, "members disagree on the world size");
    assert.deepEqual(
      info.bootstrapStoreInfo,
      infos[0]!.bootstrapStoreInfo,
      "members disagree on rank 0's address",
    );
  }
  assert.deepEqual(
    infos.map((i) => i.rank).sort((a, b) => a - b),
    Array.from({ length: worldSize }, (_, i) => i),
    "ranks are not exactly 0..W-1",
  );
}

/** Resolves with the first `n` values of `promises` to resolve, with their indexes. */
export function firstResolved<T>(
  promises: readonly Promise<T>[],
  n: number,
): Promise<{ index: number; value: T }[]> {
  return new Promise((resolve, reject) => {
    const done: { index: number; value: T }[] = [];
    let failed = 0;
    promises.forEach((p, index) => {
      p.then(
        (value) => {
          done.push({ index, value });
          if (done.length === n) resolve(done);
        },
        (err: unknown) => {
          failed++;
          if (failed > promises.length - n) reject(err);
        },
      );
    });
  });
}

/** Registers the behaviour suite for the cluster `makeCluster` builds. */
export function defineRendezvousBehaviourSuite(makeCluster: ClusterFactory, name: string): void {
  describe(`dynamic rendezvous over ${name}`, () => {
    let bed: Testbed;

    beforeEach(async () => {
      bed = new Testbed(await makeCluster());
    });

    afterEach(async () => {
      await bed.close();
    });

    barrierTests(() => bed);
    failureTests(() => bed);
    lifecycleTests(() => bed);
    coordinatorTests(() => bed);
    backendTests(() => bed);
  });
}

const LAST_CALL = TIMING.lastCallTimeoutMs;

/** Barrier, last call, max, timeout, consistency, exclusivity, spares, sticky ranks, the round store. */
function barrierTests(bed: () => Testbed): void {
  it("completes once min nodes joined and the last call expired, not before, letting in late joiners", async () => {
    const [a, b, c] = await bed().nodes(3, { minNodes: 2, maxNodes: 4 });
    const start = Date.now();
    const pa = a!.next();
    const pb = b!.next();
    await delay(LAST_CALL / 2);
    assert.equal(await stateAfter(pa, 0), "pending", "completed before the last call");
    const pc = c!.next();
    const infos = await within(Promise.all([pa, pb, pc]), 3000, "the round");
    const elapsed = Date.now() - start;
    assert.ok(
      elapsed >= LAST_CALL - 5,
      `completed after ${elapsed} ms, before the ${LAST_CALL} ms last call`,
    );
    assertRound(infos, { round: 0, worldSize: 3 });
  });

  it("completes at once when max nodes joined", async () => {
    const nodes = await bed().nodes(3, { minNodes: 2, maxNodes: 3, lastCallTimeoutMs: 5000 });
    const start = Date.now();
    const infos = await within(Promise.all(nodes.map((n) => n.next())), 2000, "the round");
    assert.ok(Date.now() - start < 2000);
    assertRound(infos, { round: 0, worldSize: 3 });
  });

  it("gives every member the same round and world size and ranks 0..W-1", async () => {
    const nodes = await bed().nodes(5, { minNodes: 5, maxNodes: 5 });
    const infos = await Promise.all(nodes.map((n) => n.next()));
    assertRound(infos, { round: 0, worldSize: 5 });
    for (const [i, n] of nodes.entries()) assert.equal(n.handler.currentRound, infos[i]!.round);
  });

  it("times out with RDZV_TIMEOUT naming the joined nodes and the needed count", async () => {
    const a = await bed().node({ minNodes: 3, maxNodes: 3, joinTimeoutMs: 400 });
    const b = await bed().node({ minNodes: 3, maxNodes: 3, joinTimeoutMs: 1000 });
    const start = Date.now();
    const pa = a.next();
    await a.slotIn(0);
    const pb = b.next();
    const ea = await rejectsWith(pa, "RDZV_TIMEOUT", 3000);
    assert.ok(Date.now() - start >= 400);
    assert.match(ea.message, /of at least 3 nodes/);
    assert.ok(ea.message.includes(a.id) && ea.message.includes(b.id), ea.message);
    const eb = await rejectsWith(pb, "RDZV_TIMEOUT", 3000);
    assert.ok(eb.message.includes(b.id), eb.message);
  });

  it("makes a late node wait (numNodesWaiting) until the members re-rendezvous, then admits it", async () => {
    // The late node's one call spans the whole test (up to ~6 s of waits before the others re-join):
    // a join timeout well beyond that, so that a slow store (etcd on a loaded machine) cannot expire it.
    const [a, b, late] = await bed().nodes(3, { minNodes: 2, maxNodes: 3, joinTimeoutMs: 30_000 });
    const first = await Promise.all([a!.next(), b!.next()]);
    assertRound(first, { round: 0, worldSize: 2 });
    const pl = late!.next();
    await waitUntil(async () => (await a!.handler.numNodesWaiting()) > 0, 3000, "a waiting node");
    assert.equal(await b!.handler.numNodesWaiting(), 1);
    // A round below max ends for its members when a node waits to join.
    assert.equal(await b!.handler.waitForRoundEnd({ timeoutMs: 2000 }), true);
    assert.equal(await stateAfter(pl, LAST_CALL * 2), "pending", "the late node formed a round of its own");
    const second = await Promise.all([a!.next(), b!.next(), pl]);
    assertRound(second, { round: 1, worldSize: 3 });
    assert.equal(await a!.handler.numNodesWaiting(), 0);
  });

  it("is exclusive: with min 1 a new node still waits until the running round drains", async () => {
    const [a, b] = await bed().nodes(2, { minNodes: 1, maxNodes: 2 });
    assertRound([await a!.next()], { round: 0, worldSize: 1 });
    const pb = b!.next();
    assert.equal(await stateAfter(pb, LAST_CALL * 3), "pending", "a parallel round formed");
    assert.equal(await a!.handler.numNodesWaiting(), 1);
    const infos = await Promise.all([a!.next(), pb]);
    assertRound(infos, { round: 1, worldSize: 2 });
  });

  it("keeps nodes beyond max as hot spares and admits one when a member dies", async () => {
    const nodes = await bed().nodes(3, { minNodes: 2, maxNodes: 2 });
    const pending = nodes.map((n) => n.next());
    const members = await within(firstResolved(pending, 2), 3000, "the first round");
    assertRound(
      members.map((m) => m.value),
      { round: 0, worldSize: 2 },
    );
    const spareIndex = [0, 1, 2].find((i) => !members.some((m) => m.index === i))!;
    assert.equal(await stateAfter(pending[spareIndex]!, LAST_CALL), "pending");
    const [dead, survivor] = members.map((m) => nodes[m.index]!);
    // The spare is redundancy, not a node waiting to grow the round (PyTorch's redundancy list).
    assert.equal(await survivor!.handler.numNodesWaiting(), 0);
    assert.equal(
      await survivor!.handler.waitForRoundEnd({ timeoutMs: 200 }),
      false,
      "a spare ended a full round",
    );
    await dead!.crash();
    assert.equal(await survivor!.handler.waitForRoundEnd({ timeoutMs: 3000 }), true);
    const infos = await Promise.all([survivor!.next(), pending[spareIndex]!]);
    assertRound(infos, { round: 1, worldSize: 2 });
  });

  it("keeps ranks across a re-rendezvous of the same members with stickyRanks", async () => {
    const nodes = await bed().nodes(3, { minNodes: 3, maxNodes: 3, stickyRanks: true });
    const first = await joinInOrder(nodes);
    assertRound(first, { round: 0 });
    const second = await joinInOrder([...nodes].reverse());
    second.reverse();
    assertRound(second, { round: 1, worldSize: 3 });
    assert.deepEqual(
      second.map((i) => i.rank),
      first.map((i) => i.rank),
    );
  });

  it("ranks by join order without stickyRanks", async () => {
    const nodes = await bed().nodes(3, { minNodes: 3, maxNodes: 3 });
    assert.deepEqual(
      (await joinInOrder(nodes)).map((i) => i.rank),
      [0, 1, 2],
    );
    assert.deepEqual(
      (await joinInOrder([...nodes].reverse())).map((i) => i.rank),
      [0, 1, 2],
    );
  });

  it("hands each round a store shared by its members and distinct from other rounds'", async () => {
    const [a, b] = await bed().nodes(2, { minNodes: 2, maxNodes: 2 });
    const [a0, b0] = await Promise.all([a!.next(), b!.next()]);
    await a0!.store.set("greeting", "round 0");
    assert.equal(bytesToText(await b0!.store.get("greeting", { timeoutMs: 1000 })), "round 0");
    const [a1, b1] = await Promise.all([a!.next(), b!.next()]);
    assertRound([a1!, b1!], { round: 1 });
    assert.equal(await b1!.store.check(["greeting"]), false);
    await b1!.store.set("greeting", "round 1");
    assert.equal(bytesToText(await a1!.store.get("greeting", { timeoutMs: 1000 })), "round 1");
    assert.equal(bytesToText(await a0!.store.get("greeting")), "round 0");
    // Both rounds published their own bootstrap address.
    assert.equal(a1!.bootstrapStoreInfo.masterAddr, "127.0.0.1");
    assert.equal(bytesToText(await b1!.store.get("MASTER_PORT")), String(b1!.bootstrapStoreInfo.masterPort));
  });
}

/** Crashes and deaths before and after completion, coordinator takeover. */
function failureTests(bed: () => Testbed): void {
  it("drops a node that crashes while joining and completes without it", async () => {
    const [a, b, c, d] = await bed().nodes(4, { minNodes: 3, maxNodes: 4 });
    const pa = a!.next();
    await a!.slotIn(0);
    const pc = c!.next();
    const slot = await c!.slotIn(0);
    await c!.crash();
    assert.equal(await bed().gone(0, slot), "dead");
    const infos = await within(Promise.all([pa, b!.next(), d!.next()]), 3000, "the round");
    assertRound(infos, { round: 0, worldSize: 3 });
    assert.equal(await stateAfter(pc, 500), "rejected");
  });

  /**
   * a joins round 0 first (its coordinator), then b; node `which` of them is counted dead while it runs on
   * (what the coordinator does to a node whose keep-alives lag behind a stall, or whose connection dropped
   * for a moment); c joins. With min 3 the round forms only once the counted node is back with a new
   * ticket. Returns the slot that was counted dead.
   */
  async function countedDeadWhileJoining(which: 0 | 1): Promise<number> {
    const nodes = await bed().nodes(3, { minNodes: 3, maxNodes: 4 });
    const pending: Promise<RendezvousInfo>[] = [];
    const slots: number[] = [];
    for (const node of nodes.slice(0, 2)) {
      pending.push(node.next());
      slots.push(await node.slotIn(0));
    }
    await bed().backend.markGone(0, slots[which]!, GoneReason.Dead, false);
    const infos = await within(Promise.all([...pending, nodes[2]!.next()]), 3000, "the round");
    assertRound(infos, { round: 0, worldSize: 3 });
    const counted = nodes[which]!;
    assert.ok(
      counted.joined.filter((j) => j.round === 0).length >= 2,
      `${which === 0 ? "a" : "b"} did not take a second ticket`,
    );
    return slots[which]!;
  }

  it("takes a node counted dead while it was only slow back in with a new ticket, so the round reaches min", async () => {
    await countedDeadWhileJoining(1);
  });

  it("takes a coordinator counted dead while it was only slow back in; another node takes over", async () => {
    const slot = await countedDeadWhileJoining(0);
    assert.notEqual(await bed().backend.leader(0), slot);
  });

  it("lets another node take over when the coordinator dies while joining", async () => {
    const [a, b, c] = await bed().nodes(3, { minNodes: 2, maxNodes: 4 });
    const pa = a!.next();
    const slot = await a!.slotIn(0);
    assert.equal(await bed().backend.leader(0), slot);
    const pb = b!.next();
    const pc = c!.next();
    await Promise.all([b!.slotIn(0), c!.slotIn(0)]);
    await a!.crash();
    const infos = await within(Promise.all([pb, pc]), 4000, "the round after the takeover");
    assertRound(infos, { round: 0, worldSize: 2 });
    assert.notEqual(await bed().backend.leader(0), slot);
    assert.equal(await stateAfter(pa, 500), "rejected");
  });

  it("wakes the members when one dies after completion, and they re-form without it", async () => {
    const nodes = await bed().nodes(3, { minNodes: 2, maxNodes: 3 });
    const [a, b, c] = nodes;
    assertRound(await Promise.all(nodes.map((n) => n.next())), { round: 0, worldSize: 3 });
    assert.equal(
      await a!.handler.waitForRoundEnd({ timeoutMs: 300 }),
      false,
      "ended with every member alive",
    );
    await c!.crash();
    const ended = await within(
      Promise.all([
        a!.handler.waitForRoundEnd({ timeoutMs: 3000 }),
        b!.handler.waitForRoundEnd({ timeoutMs: 3000 }),
      ]),
      4000,
      "waitForRoundEnd",
    );
    assert.deepEqual(ended, [true, true]);
    const infos = await within(Promise.all([a!.next(), b!.next()]), 3000, "the re-rendezvous");
    assertRound(infos, { round: 1, worldSize: 2 });
  });

  it("re-forms when rank 0 dies before it published the bootstrap info", async () => {
    // A coordinator that is rank 0 puts the address into the outcome; the others wait for it only when
    // rank 0 is another node: here a keeps rank 0 (sticky ranks) while b, re-joining first, coordinates.
    const [a, b, c] = await bed().nodes(3, { minNodes: 2, maxNodes: 3, stickyRanks: true });
    const pa0 = a!.next();
    await a!.slotIn(0);
    const first = await within(Promise.all([pa0, b!.next(), c!.next()]), 4000, "round 0");
    assert.equal(first[0]!.rank, 0);
    const pb = b!.next();
    await b!.slotIn(1);
    a!.store.crashBefore("multiSet", "MASTER_ADDR");
    const pa = a!.next();
    await a!.slotIn(1);
    const infos = await within(Promise.all([pb, c!.next()]), 4000, "the members of the broken round");
    assertRound(infos, { round: 2, worldSize: 2 });
    assert.equal(a!.store.crashed, true);
    assert.equal(await stateAfter(pa, 100), "rejected");
  });

  it("hands every member rank 0's bootstrap address, also when the coordinator put it in the outcome", async () => {
    const nodes = await bed().nodes(3, { minNodes: 3, maxNodes: 3 });
    const infos = await within(Promise.all(nodes.map((n) => n.next())), 4000, "round 0");
    assertRound(infos, { round: 0, worldSize: 3 });
    const rankZero = infos.find((i) => i.rank === 0)!;
    const [addr, port] = await rankZero.store.multiGet(["MASTER_ADDR", "MASTER_PORT"], { timeoutMs: 2000 });
    assert.equal(bytesToText(addr!), rankZero.bootstrapStoreInfo.masterAddr);
    assert.equal(Number(bytesToText(port!)), rankZero.bootstrapStoreInfo.masterPort);
  });

  it("lets the others complete when a joining node shuts down", async () => {
    const [a, b, c] = await bed().nodes(3, { minNodes: 2, maxNodes: 4 });
    const pa = a!.next();
    await a!.slotIn(0);
    const pc = c!.next();
    const slot = await c!.slotIn(0);
    assert.equal(await c!.handler.shutdown(), true);
    await rejectsWith(pc, "RDZV_GRACEFUL_EXIT", 2000);
    assert.equal(await bed().gone(0, slot, 500), "left");
    const infos = await within(Promise.all([pa, b!.next()]), 3000, "the round");
    assertRound(infos, { round: 0, worldSize: 2 });
  });
}

/** Parts of the handler that the public API cannot reach at the right moment. */
function coordinatorTests(bed: () => Testbed): void {
  it("a coordinator that starts after its round was decided returns that outcome", async () => {
    const { backend } = bed();
    await backend.setState({ kind: "closed", round: 0 }, 0);
    // Repeated: reading the outcome used to race a zero timeout on the TCP store.
    for (let i = 0; i < 50; i++) {
      const outcome = await within(
        coordinateRound({
          backend,
          round: 0,
          slot: 0,
          settings: { ...TIMING, minNodes: 1, maxNodes: 1, stickyRanks: false },
          deadline: Date.now() + 2000,
          signal: new AbortController().signal,
          logger: silentLogger,
          onLost: () => undefined,
        }),
        3000,
        "coordinateRound",
      );
      assert.deepEqual(outcome, { kind: "closed", round: 0 });
    }
  });
}

/** A store whose blocking waits fail as if their connection could not be opened in time. */
/** A store whose blocking calls cannot open their wait connection (rdzv's TCP client without async waits). */
class NoWaitConnectionStore extends CrashableStore {
  override wait(): Promise<void> {
    return Promise.reject(new RendezvousConnectionError("could not connect within 49ms"));
  }

  override async get(key: string, options?: CallOptions): Promise<Uint8Array> {
    if (!(await this.check([key], options)))
      throw new RendezvousConnectionError("could not connect within 49ms");
    return super.get(key, options);
  }
}

function backendTests(bed: () => Testbed): void {
  it("enters the open round from a round known decided, stepping past decided rounds", async () => {
    const { backend } = bed();
    assert.ok(backend.enter, "the backend has no enter()");
    const node = { id: "n", addr: "127.0.0.1", pid: 1 };
    assert.deepEqual(await backend.enter(node), { round: 0, slot: 0 });
    await backend.setState({ kind: "complete", round: 0, span: 1, excluded: [] }, 0);
    await backend.setState({ kind: "complete", round: 1, span: 0, excluded: [] }, 1);
    // A fresh node (every round before 0 decided, trivially) steps past both decided rounds.
    assert.deepEqual(await backend.enter(node), { round: 2, slot: 0 });
    // A node that knows rounds 0 and 1 decided enters round 2 at once.
    assert.deepEqual(await backend.enter(node, undefined, 2), { round: 2, slot: 1 });
    // Nothing stray became a member of the decided rounds.
    const state = await backend.getState();
    assert.equal(state.openRound, 2);
    assert.deepEqual(state.last, { kind: "complete", round: 1, span: 0, excluded: [] });
    await backend.markClosed();
    assert.equal(await backend.enter(node, undefined, 2), undefined);
    assert.equal(await backend.enter(node), undefined);
  });

  it("degrades a wait that cannot open its connection to a check, and fails only when the check fails", async () => {
    const flaky = new NoWaitConnectionStore(bed().cluster.observer);
    const backend = new StoreRendezvousBackend(flaky, bed().runId);
    assert.equal(await backend.waitOutcome(0, { timeoutMs: 50 }), undefined);
    await bed().backend.setState({ kind: "closed", round: 0 }, 0);
    // The check finds the outcome at once; the bound only has to outlast a round trip on a loaded machine
    // (50 ms did not, once, in a full run on 2 CPUs).
    assert.deepEqual(await backend.waitOutcome(0, { timeoutMs: 5000 }), { kind: "closed", round: 0 });
    assert.equal(await backend.waitEnded(0, { timeoutMs: 50 }), false);
    flaky.crash();
    await rejectsWith(backend.waitEnded(0, { timeoutMs: 50 }), "RDZV_CONNECTION", 1000);
  });
}

/** Closing, leaving, graceful exit. */
function lifecycleTests(bed: () => Testbed): void {
  it("closes the rendezvous for waiting nodes, later calls and isClosed", async () => {
    const [a, b, closer] = await bed().nodes(3, { minNodes: 3, maxNodes: 3 });
    const pa = a!.next();
    const pb = b!.next();
    await Promise.all([a!.slotIn(0), b!.slotIn(0)]);
    assert.equal(await closer!.handler.isClosed(), false);
    await closer!.handler.setClosed();
    await rejectsWith(pa, "RDZV_CLOSED", 2000);
    await rejectsWith(pb, "RDZV_CLOSED", 2000);
    await rejectsWith(closer!.next(), "RDZV_CLOSED", 2000);
    await rejectsWith(a!.next(), "RDZV_CLOSED", 2000);
    for (const n of [a, b, closer]) assert.equal(await n!.handler.isClosed(), true);
  });

  it("closes the rendezvous for the members of a completed round", async () => {
    const [a, b, closer] = await bed().nodes(3, { minNodes: 2, maxNodes: 2 });
    await Promise.all([a!.next(), b!.next()]);
    await closer!.handler.setClosed();
    assert.equal(await a!.handler.isClosed(), true);
    await rejectsWith(a!.next(), "RDZV_CLOSED", 2000);
    await rejectsWith(b!.next(), "RDZV_CLOSED", 2000);
  });

  it("marks the ticket of a node shut down while it took it left, so that nobody counts the node in", async () => {
    const [a, b] = await bed().nodes(2, { minNodes: 1, maxNodes: 2 });
    // The ticket requests go out at once; the shutdown's abort lands before the node holds its slot.
    const pa = a!.next();
    assert.equal(await a!.handler.shutdown(), true);
    await rejectsWith(pa, "RDZV_GRACEFUL_EXIT", 2000);
    assert.equal(await bed().gone(0, 0, 500), "left");
    // Not a round of 2 with a departed rank 0 (which would then have to be found dead and re-formed).
    assertRound(await within(Promise.all([b!.next()]), 3000, "the round"), { round: 0, worldSize: 1 });
  });

  it("does not close the rendezvous when one member shuts down; the others re-form", async () => {
    const nodes = await bed().nodes(3, { minNodes: 2, maxNodes: 3 });
    const [a, b, c] = nodes;
    await Promise.all(nodes.map((n) => n.next()));
    assert.equal(await c!.handler.shutdown(), true);
    assert.equal(await a!.handler.waitForRoundEnd({ timeoutMs: 2000 }), true);
    assert.equal(await b!.handler.waitForRoundEnd({ timeoutMs: 2000 }), true);
    assert.equal(await a!.handler.isClosed(), false);
    const infos = await within(Promise.all([a!.next(), b!.next()]), 3000, "the re-rendezvous");
    assertRound(infos, { round: 1, worldSize: 2 });
    await rejectsWith(c!.next(), "RDZV_GRACEFUL_EXIT", 1000);
  });

  it("keeps a node whose re-rendezvous was aborted a member until it leaves, so the next round can drain", async () => {
    const [a, b] = await bed().nodes(2, { minNodes: 2, maxNodes: 2 });
    await Promise.all([a!.next(), b!.next()]);
    await rejectsWith(a!.next({ signal: AbortSignal.abort() }), "RDZV_ABORTED", 1000);
    assert.equal(a!.handler.currentRound, 0);
    const controller = new AbortController();
    const aborted = a!.next({ signal: controller.signal });
    await a!.slotIn(1);
    controller.abort();
    await rejectsWith(aborted, "RDZV_ABORTED", 1000);
    const infos = await within(Promise.all([a!.next(), b!.next()]), 3000, "the re-rendezvous");
    assertRound(infos, { worldSize: 2 });
  });

  it("rejects nextRendezvous after shutdown with RDZV_GRACEFUL_EXIT", async () => {
    const n = await bed().node({ minNodes: 1, maxNodes: 1 });
    assert.equal(await n.handler.shutdown(), true);
    assert.equal(await n.handler.shutdown(), true, "shutdown is idempotent");
    await rejectsWith(n.next(), "RDZV_GRACEFUL_EXIT", 1000);
  });
}

/** Calls `next()` on each node in turn, each after the previous one joined; returns the infos in that order. */
async function joinInOrder(nodes: readonly TestNode[]): Promise<RendezvousInfo[]> {
  const pending: Promise<RendezvousInfo>[] = [];
  for (const n of nodes) {
    const before = n.joined.length;
    pending.push(n.next());
    await waitUntil(() => n.joined.length > before, 3000, `${n.id} to join`);
  }
  return within(Promise.all(pending), 3000, "the round");
}
