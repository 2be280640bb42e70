/**
 * The dynamic rendezvous behaviour suite over a real single-member etcd, through the etcd backend (one
 * etcd client and lease per node). A node "crashes" by closing its client: its keep-alive counter stops
 * at once and its lease expires after 3 s (long enough that a loaded test machine never misses it).
 */

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { EtcdRendezvousBackend } from "../src/backends/etcd-backend.js";
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

describe("etcd backend: the node's lease", () => {
  it("publishes a join under a new lease when etcd already dropped the old one (it expired in a stall)", async () => {
    const prefix = `/rdzv-test/${process.pid}/lease-${runs++}/`;
    const store = await connectEtcdStore({ endpoints: etcd.endpoints, prefix, timeoutMs: 10_000 });
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
});
