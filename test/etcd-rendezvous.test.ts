/**
 * The dynamic rendezvous behaviour suite over a real single-member etcd, through the etcd backend (one
 * etcd client and lease per node). A node "crashes" by closing its client: its keep-alive counter stops
 * at once and its lease expires after 3 s (long enough that a loaded test machine never misses it).
 */

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { setTimeout as delay } from "node:timers/promises";
import { createEtcdRendezvousHandler, leaseTtlS } from "../src/backends/etcd.js";
import { EtcdRendezvousBackend } from "../src/backends/etcd-backend.js";
import { GoneReason } from "../src/rendezvous/round.js";
import { connectEtcdStore } from "../src/store/etcd/connect.js";
import { EtcdStore } from "../src/store/etcd/store.js";
import type { Store } from "../src/store/store.js";
import { EtcdTestCluster } from "./helpers/etcd.js";
import {
  CrashableStore,
  defineRendezvousBehaviourSuite,
  type TestCluster,
} from "./helpers/rendezvous-suite.js";

let etcd: EtcdTestCluster;
let runs = 0;

before(async () => {
  etcd = await EtcdTestCluster.start(1);
});

after(async () => {
  await etcd?.stop();
});

/** A fresh key prefix on the shared etcd per test; every node its own client. */
async function etcdCluster(): Promise<TestCluster> {
  const prefix = `/rdzv-test/${process.pid}/${runs++}/`;
  const connect = () => connectEtcdStore({ endpoints: etcd.endpoints, prefix, timeoutMs: 30_000 });
  const observer = await connect();
  const clients: EtcdStore[] = [observer];
  const underlying = new WeakMap<Store, EtcdStore>();
  return {
    name: "etcd",
    observer,
    async connect() {
      const client = await connect();
      clients.push(client);
      const node = new CrashableStore(client, () => client.close());
      underlying.set(node, client);
      return node;
    },
    backend(store, runId) {
      const etcdStore = store instanceof EtcdStore ? store : underlying.get(store);
      if (etcdStore === undefined) throw new Error("not a store of this cluster");
      return new EtcdRendezvousBackend(etcdStore, runId, { kv: store, leaseTtlS: 3 });
    },
    async close() {
      await Promise.all(clients.map((c) => c.close()));
    },
  };
}

defineRendezvousBehaviourSuite(etcdCluster, "etcd (one member)");

/** A store on the shared etcd under a fresh key prefix named after `test`. */
function freshStore(test: string): Promise<EtcdStore> {
  const prefix = `/rdzv-test/${process.pid}/${test}-${runs++}/`;
  return connectEtcdStore({ endpoints: etcd.endpoints, prefix, timeoutMs: 10_000 });
}

describe("etcd backend: the node's lease", () => {
  it("publishes a join under a new lease when etcd already dropped the old one (it expired in a stall)", async () => {
    const store = await freshStore("lease");
    // A long TTL: the client's keep-alives (every TTL / 3) would notice the loss only seconds later.
    const backend = new EtcdRendezvousBackend(store, "lease", { leaseTtlS: 15 });
    try {
      const node = { id: "n0", addr: "127.0.0.1", pid: 1 };
      assert.deepEqual(await backend.enter(node), { round: 0, slot: 0 });
      const { leases } = await store.client.leaseClient.leaseLeases();
      assert.equal(leases.length > 0, true, "the node holds no lease");
      // What etcd does to a lease whose keep-alives stopped for its TTL.
      for (const { ID } of leases) await store.client.leaseClient.leaseRevoke({ ID });
      assert.deepEqual(await backend.enter({ ...node, id: "n0'" }), { round: 0, slot: 1 });
      const live = await store.client.getAll().prefix(store.etcdKey("rdzv/lease/r0/live/")).keys();
      assert.deepEqual(
        live.map((k) => k.slice(-1)),
        ["1"],
        "the new join is not live under a lease",
      );
    } finally {
      await backend.close();
      await store.close();
    }
  });

  it("enters the open round when another client wrote a hint that is not a round number", async () => {
    const store = await freshStore("hint");
    const backend = new EtcdRendezvousBackend(store, "hint", { leaseTtlS: 15 });
    try {
      await backend.setState({ kind: "complete", round: 0, span: 1, excluded: [] }, 0);
      await store.set("rdzv/hint/open", "-3");
      assert.equal((await backend.enter({ id: "n0", addr: "127.0.0.1", pid: 1 }))?.round, 1);
      // Far ahead: the open round, and no ticket in the far one (where the join timed out).
      await store.set("rdzv/hint/open", "1000000000");
      assert.equal((await backend.enter({ id: "n2", addr: "127.0.0.1", pid: 3 }))?.round, 1);
      assert.deepEqual(await store.check(["rdzv/hint/r1000000000/tickets"]), false);
      // Not a number at all (it took a ticket in round NaN): searched past as well, so the open round.
      await store.set("rdzv/hint/open", "abc");
      assert.equal((await backend.enter({ id: "n1", addr: "127.0.0.1", pid: 2 }))?.round, 1);
    } finally {
      await backend.close();
      await store.close();
    }
  });

  it("waitEnded wakes on a member key's deletion and on the round's end, not on the round's other keys", async () => {
    const store = await freshStore("steps");
    const backend = new EtcdRendezvousBackend(store, "steps", { leaseTtlS: 15 });
    const key = (path: string) => store.etcdKey(`rdzv/steps/${path}`);
    try {
      await store.client.put(key("r0/member/3")).value("x").exec();
      let step = backend.waitEnded(0, { timeoutMs: 400 });
      await new Promise((r) => setTimeout(r, 50));
      // A keep-alive counter and a new member key of the round: not its end.
      await store.client.put(key("r0/hb/1")).value("1").exec();
      await store.client.put(key("r0/member/4")).value("x").exec();
      assert.equal(await step, false);
      step = backend.waitEnded(0, { timeoutMs: 5_000 });
      await new Promise((r) => setTimeout(r, 50));
      await store.client.delete().key(key("r0/member/3")).exec();
      assert.equal(await step, true);
      assert.notEqual(await store.client.get(key("r0/gone/3")).string(), null, "member 3 not marked gone");
      step = backend.waitEnded(1, { timeoutMs: 5_000 });
      await new Promise((r) => setTimeout(r, 50));
      await store.client.put(key("r1/ended")).value("").exec();
      assert.equal(await step, true);
      assert.equal(await backend.waitEnded(1, { timeoutMs: 5_000 }), true, "ended already");
    } finally {
      await backend.close();
      await store.close();
    }
  });

  it("goneSlots reads a few slots by key and many by range, with the same answers", async () => {
    const store = await freshStore("gone");
    const nodes = Array.from(
      { length: 20 },
      () => new EtcdRendezvousBackend(store, "gone", { leaseTtlS: 15 }),
    );
    try {
      for (const [i, backend] of nodes.entries()) {
        assert.deepEqual(await backend.enter({ id: `n${i}`, addr: "127.0.0.1", pid: i }), {
          round: 0,
          slot: i,
        });
      }
      // Nodes 2, 7 and 15 lose their leases (what etcd does when keep-alives stop): their live keys go.
      for (const slot of [2, 7, 15]) {
        const [kv] = (await store.client.get(store.etcdKey(`rdzv/gone/r0/live/${slot}`)).exec()).kvs;
        await store.client.leaseClient.leaseRevoke({ ID: kv!.lease });
      }
      const observer = new EtcdRendezvousBackend(store, "gone");
      const dead = GoneReason.Dead;
      assert.deepEqual(await observer.goneSlots(0, [1, 2, 3]), [undefined, dead, undefined]);
      const all = Array.from({ length: 20 }, (_, i) => i);
      const expected = all.map((i) => ([2, 7, 15].includes(i) ? dead : undefined));
      assert.deepEqual(await observer.goneSlots(0, all), expected);
      assert.deepEqual(await observer.goneSlots(0, [7]), [dead]);
    } finally {
      await Promise.all(nodes.map((n) => n.close()));
      await store.close();
    }
  });
  it("never counts a node dead that publishes while goneSlots reads many slots (one revision for all)", async () => {
    const store = await freshStore("gone-race");
    const nodes = Array.from(
      { length: 21 },
      () => new EtcdRendezvousBackend(store, "gone-race", { leaseTtlS: 15 }),
    );
    try {
      for (const [i, backend] of nodes.slice(0, 20).entries()) {
        await backend.enter({ id: `n${i}`, addr: "127.0.0.1", pid: i });
      }
      // etcd answers a backend's reads in whatever order it serves them (a read retried through a leader
      // election comes last). Hold the reads goneSlots makes and answer them in reverse order, node 20
      // publishing (descriptor and live key, together) after the first answer.
      const read = store.read.bind(store);
      const held: (() => Promise<void>)[] = [];
      store.read = ((what, options, op) =>
        new Promise((resolve, reject) => {
          held.push(() => read(what, options, op).then(resolve, reject));
          if (held.length === 1) {
            setImmediate(async () => {
              store.read = read;
              const [last, ...rest] = held.reverse();
              await last!();
              await nodes[20]!.enter({ id: "n20", addr: "127.0.0.1", pid: 20 });
              for (const call of rest) await call();
            });
          }
        })) as typeof store.read;
      const observer = new EtcdRendezvousBackend(store, "gone-race");
      const all = Array.from({ length: 21 }, (_, i) => i);
      assert.deepEqual(
        await observer.goneSlots(0, all),
        all.map(() => undefined),
      );
      assert.equal(store.read, read);
      assert.deepEqual(await observer.goneSlots(0, [20]), [undefined], "node 20 published and is live");
    } finally {
      await Promise.all(nodes.map((n) => n.close()));
      await store.close();
    }
  });
});

describe("etcd backend: the lease's TTL against the keep-alive budget", () => {
  it("is the budget up to 3 attempts, and past that long enough to survive the stalls the counters allow", () => {
    assert.equal(leaseTtlS(5000, 3), 15); // PyTorch's defaults: unchanged
    assert.equal(leaseTtlS(1000, 1), 1);
    assert.equal(leaseTtlS(1000, 2), 2);
    // 10 x 1 s: the counters survive a 9 s stall; a lease renewed every TTL / 3 needs TTL >= 13.5 s.
    assert.equal(leaseTtlS(1000, 10), 14);
    for (const [interval, attempts] of [
      [1000, 10],
      [2000, 7],
      [500, 30],
      [5000, 3],
    ] as const) {
      const ttlMs = leaseTtlS(interval, attempts) * 1000;
      assert.ok(
        (ttlMs * 2) / 3 >= interval * attempts - interval,
        `${interval} ms x ${attempts}: TTL ${ttlMs} ms`,
      );
    }
  });

  it("a node of a handler with 10 keep-alive attempts holds a lease that long", async () => {
    const { Etcd3 } = await import("etcd3");
    const admin = new Etcd3({ hosts: etcd.endpoints.split(",").map((e) => `http://${e}`) });
    const leases = async (): Promise<Set<string>> =>
      new Set((await admin.leaseClient.leaseLeases()).leases.map((l) => String(l.ID)));
    const handler = await createEtcdRendezvousHandler({
      backend: "etcd",
      endpoint: etcd.endpoints,
      runId: `ttl-${runs++}`,
      minNodes: 1,
      maxNodes: 1,
      config: {
        key_prefix: `/rdzv-test/${process.pid}/ttl/`,
        keep_alive_interval: 1,
        keep_alive_max_attempt: 10,
      },
    });
    try {
      const before = await leases();
      await handler.nextRendezvous();
      const added = [...(await leases())].filter((id) => !before.has(id));
      assert.equal(added.length, 1, `the node granted ${added.length} leases`);
      const { grantedTTL } = await admin.leaseClient.leaseTimeToLive({ ID: added[0]! });
      // Before: 10 (the budget), which lapsed in a 6.7 s stall that the keep-alive counters allow.
      assert.equal(Number(grantedTTL), 14);
    } finally {
      await handler.shutdown();
      admin.close();
    }
  });
});

describe("etcd backend: old rounds' keys", () => {
  it("keeps only the outcome of a round once the round two after it completed, its store's keys gone too", async () => {
    const { Etcd3 } = await import("etcd3");
    const admin = new Etcd3({ hosts: etcd.endpoints.split(",").map((e) => `http://${e}`) });
    const runId = `clean-${runs++}`;
    const prefix = `/rdzv-test/${process.pid}/clean-${runs++}/`;
    const create = (i: number) =>
      createEtcdRendezvousHandler({
        backend: "etcd",
        endpoint: etcd.endpoints,
        runId,
        minNodes: 2,
        maxNodes: 2,
        localAddr: `node-${i}`,
        config: { key_prefix: prefix, last_call_timeout: 0.1, keep_alive_interval: 1 },
      });
    const handlers = [await create(0), await create(1)];
    const roundKeys = async (round: number): Promise<string[]> =>
      (await admin.getAll().prefix(`${prefix}rdzv/${runId}/r${round}/`).keys())
        .map((k) => k.slice(prefix.length))
        .sort();
    try {
      for (let r = 0; r < 6; r++) {
        const [info] = await Promise.all(handlers.map((h) => h.nextRendezvous()));
        // A worker's key in the round's store.
        await info!.store.set(`worker/${r}`, "x");
      }
      // The winner of round 5's decision deletes round 3's keys in the background.
      for (let i = 0; i < 100 && (await roundKeys(3)).length > 1; i++) await delay(50);
      for (let round = 0; round <= 3; round++) {
        // Before: every key of every round stayed (the lease keys too: the lease is the node's, not the round's).
        assert.deepEqual(await roundKeys(round), [`rdzv/${runId}/r${round}/outcome`], `round ${round}`);
      }
      // The last two rounds keep theirs: the members of round 5 use them.
      const last = await roundKeys(5);
      for (const path of ["node/1", "live/1", "member/1", "store/worker/5", "tickets"]) {
        assert.ok(last.includes(`rdzv/${runId}/r5/${path}`), `round 5 lacks ${path}: ${last.join(", ")}`);
      }
      assert.ok((await roundKeys(4)).includes(`rdzv/${runId}/r4/store/worker/4`));
      // The run's own keys stay.
      assert.equal((await admin.getAll().prefix(`${prefix}rdzv/${runId}/open`).keys()).length, 1);
    } finally {
      await Promise.all(handlers.map((h) => h.shutdown()));
      admin.close();
    }
  });
});
