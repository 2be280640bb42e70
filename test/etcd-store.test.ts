/**
 * EtcdStore against a real single-member etcd: the shared Store behaviour suite (queues are not part of
 * the etcd store), key prefixes, the endpoint syntax, and errors for unreachable members.
 */

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { ErrorCode } from "../src/errors.js";
import { connectEtcdStore, parseEtcdEndpoints } from "../src/store/etcd/connect.js";
import type { EtcdStore } from "../src/store/etcd/store.js";
import { EtcdTestCluster } from "./helpers/etcd.js";
import { rejectsWithCode, type StoreFixture, storeBehaviourSuite } from "./helpers/store-suite.js";

let etcd: EtcdTestCluster;
let counter = 0;

before(async () => {
  etcd = await EtcdTestCluster.start(1);
});

after(async () => {
  await etcd?.stop();
});

/** A fixture under a fresh prefix, so that tests share one server but never each other's keys. */
async function fixture(): Promise<StoreFixture> {
  const prefix = `/test/${process.pid}/${counter++}/`;
  const open = () => connectEtcdStore({ endpoints: etcd.endpoints, prefix, timeoutMs: 5000 });
  const stores: EtcdStore[] = [await open()];
  return {
    store: stores[0]!,
    other: async () => {
      const s = await open();
      stores.push(s);
      return s;
    },
    cleanup: async () => {
      await Promise.all(stores.map((s) => s.close()));
    },
  };
}

storeBehaviourSuite("EtcdStore", fixture, { queues: false });

describe("EtcdStore specifics", () => {
  it("keeps stores under different prefixes apart, and counts numKeys under its prefix only", async () => {
    const a = await connectEtcdStore({ endpoints: etcd.endpoints, prefix: "/iso/a/", timeoutMs: 5000 });
    const b = await connectEtcdStore({ endpoints: etcd.endpoints, prefix: "/iso/b/", timeoutMs: 5000 });
    try {
      await a.set("k", "from a");
      assert.equal(await b.check(["k"]), false);
      assert.equal(await a.numKeys(), 1);
      assert.equal(await b.numKeys(), 0);
      assert.deepEqual(await a.listKeys(), ["k"]);
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });

  it("multiSet, multiGet and check take more keys than one etcd transaction may hold (128)", async () => {
    const s = await connectEtcdStore({ endpoints: etcd.endpoints, prefix: "/many/", timeoutMs: 5000 });
    try {
      const keys = Array.from({ length: 300 }, (_, i) => `k${i}`);
      await s.multiSet(keys, keys);
      assert.equal(await s.check(keys), true);
      assert.deepEqual(
        (await s.multiGet(keys)).map((v) => Buffer.from(v).toString()),
        keys,
      );
      const pending = s.multiGet([...keys, "late"], { timeoutMs: 5000 });
      await s.set("late", "x");
      assert.equal((await pending).length, 301);
    } finally {
      await s.close();
    }
  });

  it("a value over etcd's request limits fails with RDZV_LIMIT_EXCEEDED, not as a member failure", async () => {
    const s = await connectEtcdStore({ endpoints: etcd.endpoints, prefix: "/large/", timeoutMs: 5000 });
    try {
      // Over --max-request-bytes (1.5 MiB): etcd refuses it. Over the member's gRPC limit (2 MiB): gRPC's
      // RESOURCE_EXHAUSTED, which etcd3 counted as a member failure (retried, then the circuit opened and
      // the store said it cannot reach etcd).
      for (const bytes of [1.6 * 2 ** 20, 2.2 * 2 ** 20]) {
        await assert.rejects(s.set("big", new Uint8Array(Math.floor(bytes))), (err: unknown) => {
          assert.equal((err as { code?: unknown }).code, ErrorCode.LimitExceeded, String(err));
          assert.match(String(err), /too large/);
          return true;
        });
        await s.set("small", "still works");
      }
      assert.equal(await s.check(["big"]), false);
    } finally {
      await s.close();
    }
  });

  it("a get blocked on a key is rejected with RDZV_RESOURCE_CLOSED when the store closes", async () => {
    const s = await connectEtcdStore({ endpoints: etcd.endpoints, prefix: "/closing/", timeoutMs: 5000 });
    const pending = s.get("never");
    await new Promise((r) => setTimeout(r, 50));
    await s.close();
    await rejectsWithCode(pending, ErrorCode.ResourceClosed);
    await rejectsWithCode(s.get("never"), ErrorCode.ResourceClosed);
  });

  it("a watch that ends is not a failure of the member (etcd3 would close and remake its gRPC clients)", async () => {
    const prefix = `/watch-ends/${counter++}/`;
    const s = await connectEtcdStore({ endpoints: etcd.endpoints, prefix, timeoutMs: 5000 });
    const writer = await connectEtcdStore({ endpoints: etcd.endpoints, prefix, timeoutMs: 5000 });
    try {
      // etcd3's clients of the one member, by service; a "failure" of the member closes and drops them.
      const services = () =>
        (s.client as unknown as { pool: { hosts: { cachedServices: Record<string, unknown> }[] } }).pool
          .hosts[0]!.cachedServices;
      await s.set("warm", "x");
      const kv = services().KV;
      assert.ok(kv !== undefined);
      for (let i = 0; i < 5; i++) {
        // The key appears only after the get started watching; the get then cancels its watch, and with
        // it the watch stream.
        const pending = s.get(`k${i}`);
        await new Promise((r) => setTimeout(r, 30));
        await writer.set(`k${i}`, String(i));
        assert.equal(new TextDecoder().decode(await pending), String(i));
        await s.set("between", String(i));
      }
      assert.equal(services().KV, kv, "the member's gRPC clients were closed and made anew");
    } finally {
      await Promise.all([s.close(), writer.close()]);
    }
  });

  it("fails to connect to a port nobody serves with RDZV_CONNECTION", async () => {
    const free = await import("../src/rendezvous/free-port.js").then((m) => m.pickFreePort("127.0.0.1"));
    await rejectsWithCode(
      connectEtcdStore({ endpoints: `127.0.0.1:${free}`, connectTimeoutMs: 500 }),
      ErrorCode.Connection,
    );
  });

  it("parses member lists: default port, schemes, IPv6, protocol", () => {
    assert.deepEqual(parseEtcdEndpoints("a:1, b ,https://c:3/"), [
      "http://a:1",
      "http://b:2379",
      "https://c:3",
    ]);
    assert.deepEqual(parseEtcdEndpoints("[::1]:5", "https"), ["https://[::1]:5"]);
    assert.deepEqual(parseEtcdEndpoints(["h"]), ["http://h:2379"]);
    for (const bad of ["", " , ", "ftp://h:1", "h:x", "h:70000"]) {
      assert.throws(() => parseEtcdEndpoints(bad), { code: ErrorCode.InvalidArgument }, bad);
    }
    assert.throws(() => parseEtcdEndpoints("h", "grpc"), { code: ErrorCode.InvalidArgument });
  });
});

describe("EtcdStore: connections", () => {
  /** A single-member etcd serving TLS only, with a throwaway certificate; stopped by `stop()`. */
  async function tlsEtcd(): Promise<{ endpoint: string; cacert: string; stop: () => Promise<void> }> {
    const { spawn } = await import("node:child_process");
    const { mkdtemp, rm } = await import("node:fs/promises");
    const { tmpdir } = await import("node:os");
    const { join } = await import("node:path");
    const { makeTestCertificate } = await import("./helpers/tls-cert.js");
    const { pickFreePort } = await import("../src/rendezvous/free-port.js");
    const cert = makeTestCertificate();
    const dir = await mkdtemp(join(tmpdir(), "rdzv-etcd-tls-"));
    const [client, peer] = [await pickFreePort("127.0.0.1"), await pickFreePort("127.0.0.1")];
    const url = `https://127.0.0.1:${client}`;
    const child = spawn(
      "etcd",
      [`--data-dir=${dir}`, `--listen-client-urls=${url}`, `--advertise-client-urls=${url}`].concat(
        [
          `--listen-peer-urls=http://127.0.0.1:${peer}`,
          `--initial-advertise-peer-urls=http://127.0.0.1:${peer}`,
        ],
        [`--initial-cluster=default=http://127.0.0.1:${peer}`, "--log-level=error", "--logger=zap"],
        [`--cert-file=${cert.certPath}`, `--key-file=${cert.keyPath}`],
      ),
      { stdio: "ignore" },
    );
    const stop = async (): Promise<void> => {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((resolve) => child.once("exit", resolve));
        child.kill("SIGKILL");
        await exited;
      }
      await rm(dir, { recursive: true, force: true });
      cert.remove();
    };
    return { endpoint: url, cacert: cert.certPath, stop };
  }

  it("takes torchrun's etcd-v2 backend name and TLS keys (ca_cert, ssl_cert, ssl_cert_key)", async () => {
    const { registerBuiltinRendezvousHandlers } = await import("../src/rendezvous/builtins.js");
    const { createRendezvousHandler } = await import("../src/rendezvous/registry.js");
    registerBuiltinRendezvousHandlers();
    const etcdTls = await tlsEtcd();
    const params = (config: Record<string, string | number>) => ({
      backend: "etcd-v2",
      endpoint: etcdTls.endpoint.slice("https://".length),
      runId: "v2-names",
      minNodes: 1,
      maxNodes: 1,
      config: { last_call_timeout: 0.1, read_timeout: 10, ...config },
    });
    try {
      // Both names of one file must agree.
      await assert.rejects(
        createRendezvousHandler(params({ protocol: "https", ca_cert: etcdTls.cacert, cacert: "/other.pem" })),
        {
          code: ErrorCode.InvalidArgument,
          message: /'cacert' and 'ca_cert' name the same file and disagree/,
        },
      );
      // Without the CA the server's certificate is not trusted: ca_cert is what made the join work.
      let handler: Awaited<ReturnType<typeof createRendezvousHandler>> | undefined;
      for (let i = 0; handler === undefined; i++) {
        handler = await createRendezvousHandler(params({ protocol: "https", ca_cert: etcdTls.cacert })).catch(
          (err: unknown) => {
            if (i >= 20) throw err;
            return undefined;
          },
        );
      }
      try {
        const info = await handler.nextRendezvous();
        assert.equal(info.worldSize, 1);
      } finally {
        await handler.shutdown();
      }
    } finally {
      await etcdTls.stop();
    }
  });

  it("adds over the connection the store already has, not a second one to each member (TLS)", async () => {
    const etcdTls = await tlsEtcd();
    // grpc-js opens each connection with http2.connect (read at call time): count them.
    const http2 = (await import("node:http2")).default;
    const connect = http2.connect;
    let sessions = 0;
    http2.connect = ((...args: Parameters<typeof connect>) => {
      sessions++;
      return connect(...args);
    }) as typeof connect;
    let store: EtcdStore | undefined;
    try {
      for (let i = 0; store === undefined; i++) {
        store = await connectEtcdStore({
          endpoints: etcdTls.endpoint,
          tls: { cacert: etcdTls.cacert },
          timeoutMs: 5000,
          connectTimeoutMs: 1000,
        }).catch((err: unknown) => {
          if (i >= 20) throw err;
          return undefined;
        });
      }
      await store.set("k", "v");
      const before = sessions;
      assert.equal(await store.add("n", 1), 1);
      assert.equal(await store.add("n", 2), 3);
      // Before: add's compare-and-set went through a second etcd3 client, whose TLS credentials grpc-js
      // does not take for the first one's: a second TLS connection to the member.
      assert.equal(sessions, before, "add opened a connection of its own");
    } finally {
      http2.connect = connect;
      await store?.close();
      await etcdTls.stop();
    }
  });
});
