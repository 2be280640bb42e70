/**
 * The dynamic rendezvous behaviour suite over a real single-member etcd, through the etcd backend (one
 * etcd client and lease per node). A node "crashes" by closing its client: its keep-alive counter stops
 * at once and its lease expires after 3 s (long enough that a loaded test machine never misses it).
 */

import { after, before } from "node:test";
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
