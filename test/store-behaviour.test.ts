/**
 * The shared Store behaviour suite against every store: MemoryStore, PrefixStore over it, TCPStore (v2
 * and v1) against rdzv's server, TCPStore over TLS with an auth token, and PrefixStore over TCPStore.
 */

import { after } from "node:test";
import { KvEngine } from "../src/store/kv-engine.js";
import { MemoryStore } from "../src/store/memory-store.js";
import { PrefixStore } from "../src/store/prefix-store.js";
import type { Store } from "../src/store/store.js";
import { connectTCPStore, type TCPStoreOptions } from "../src/store/tcp/client.js";
import { createTCPStoreServer, type TCPStoreServerOptions } from "../src/store/tcp/server.js";
import { type StoreFixture, storeBehaviourSuite } from "./helpers/store-suite.js";
import { makeTestCertificate } from "./helpers/tls-cert.js";

const TIMEOUT_MS = 5000;

/** A fixture whose `other()` stores are closed by `cleanup`, after the store itself. */
function fixture(store: Store, open: () => Promise<Store>, teardown: () => Promise<void>): StoreFixture {
  const others: Store[] = [];
  return {
    store,
    other: async () => {
      const s = await open();
      others.push(s);
      return s;
    },
    cleanup: async () => {
      await Promise.all([store, ...others].map((s) => s.close()));
      await teardown();
    },
  };
}

async function memoryFixture(prefix?: string): Promise<StoreFixture> {
  const engine = new KvEngine();
  const open = async (): Promise<Store> => {
    const mem = new MemoryStore({ timeoutMs: TIMEOUT_MS }, engine);
    return prefix === undefined ? mem : new PrefixStore(prefix, mem);
  };
  return fixture(await open(), open, async () => {});
}

async function tcpFixture(
  options: Partial<TCPStoreOptions>,
  prefix?: string,
  serverOptions: TCPStoreServerOptions = {},
): Promise<StoreFixture> {
  const server = await createTCPStoreServer({ ...serverOptions, port: 0 });
  const tcps: Store[] = [];
  const open = async (): Promise<Store> => {
    const tcp = await connectTCPStore({
      host: server.host,
      port: server.port,
      timeoutMs: TIMEOUT_MS,
      ...options,
    });
    tcps.push(tcp);
    return prefix === undefined ? tcp : new PrefixStore(prefix, tcp);
  };
  return fixture(await open(), open, async () => {
    // PrefixStore.close() leaves its underlying store open.
    await Promise.all(tcps.map((s) => s.close()));
    await server.close();
  });
}

const V1_LACKS = { append: false, listKeys: false, queues: false, addErrors: false };

storeBehaviourSuite("MemoryStore", () => memoryFixture());
storeBehaviourSuite("PrefixStore over MemoryStore", () => memoryFixture("pre"));
storeBehaviourSuite("TCPStore v2", () => tcpFixture({ worldSize: 1 }));
storeBehaviourSuite("TCPStore v1", () => tcpFixture({ dialect: "v1" }), V1_LACKS);
const pem = makeTestCertificate();
after(() => pem.remove());
storeBehaviourSuite("TCPStore v2 over TLS with an auth token", () =>
  tcpFixture({ tls: { ca: pem.cert }, authToken: "behaviour" }, undefined, {
    tls: { cert: pem.cert, key: pem.key },
    authToken: "behaviour",
  }),
);
storeBehaviourSuite("PrefixStore over TCPStore v2", () => tcpFixture({}, "test_prefix"));
storeBehaviourSuite(
  "PrefixStore over PrefixStore over TCPStore v1",
  async () => {
    const fx = await tcpFixture({ dialect: "v1" }, "outer");
    const wrap = (s: Store): Store => new PrefixStore("inner", s);
    return { store: wrap(fx.store), other: async () => wrap(await fx.other()), cleanup: fx.cleanup };
  },
  V1_LACKS,
);
