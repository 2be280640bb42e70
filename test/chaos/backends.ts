/**
 * What the chaos soak runs against: a rendezvous backend and the server behind it. The soak itself
 * (driver, nodes, checker) only needs the `RendezvousParameters` its nodes pass to
 * `createRendezvousHandler`, so another backend is one more `ChaosBackend`: start its server on a free
 * port, return `{ backend: <registered name>, endpoint }`, stop it, and list it in `CHAOS_BACKENDS`.
 */

import type { RendezvousParameters } from "../../src/index.js";
import { EtcdTestCluster } from "../helpers/etcd.js";
import { RedisTestServer } from "../helpers/redis.js";
import { type ServeProcess, startServe } from "../helpers/serve-process.js";

/** A rendezvous backend for the soak. */
export interface ChaosBackend {
  /** Name for test titles and reports. */
  readonly name: string;
  /** Starts the server; resolves with what nodes pass to `createRendezvousHandler` (runId, sizes aside). */
  start(): Promise<Pick<RendezvousParameters, "backend" | "endpoint" | "config">>;
  /** Stops the server (idempotent). */
  stop(): Promise<void>;
}

/** The `c10d` backend over `rdzv serve` (a child process running the compiled CLI). */
export function tcpStoreBackend(): ChaosBackend {
  let server: ServeProcess | undefined;
  return {
    name: "c10d over rdzv serve",
    async start() {
      server = await startServe();
      return {
        backend: "c10d",
        endpoint: `127.0.0.1:${server.port}`,
        config: { is_host: false, read_timeout: 30 },
      };
    },
    async stop() {
      await server?.kill();
    },
  };
}

/** The `etcd` backend (src/backends/etcd.ts) over a real one-member etcd (test/helpers/etcd.ts). */
export function etcdBackend(): ChaosBackend {
  let cluster: EtcdTestCluster | undefined;
  return {
    name: "etcd",
    async start() {
      cluster = await EtcdTestCluster.start(1);
      return { backend: "etcd", endpoint: cluster.endpoints, config: { read_timeout: 30 } };
    },
    async stop() {
      await cluster?.stop();
    },
  };
}

/**
 * The `redis` backend (src/backends/redis.ts) over a real redis-server (test/helpers/redis.ts). Not run by
 * default (the suite's time goes to the two the issue names); it shares the store-backed backend's
 * decision code with `c10d`, but not its connection-drop markers: a killed node is found by its
 * keep-alives stopping, as on etcd.
 */
export function redisBackend(): ChaosBackend {
  let server: RedisTestServer | undefined;
  return {
    name: "redis",
    async start() {
      server = await RedisTestServer.start();
      return { backend: "redis", endpoint: server.endpoint, config: { read_timeout: 30 } };
    },
    async stop() {
      await server?.stop();
    },
  };
}

/** Every backend the soak can run against, by the name `RDZV_CHAOS_BACKEND` selects. */
export const CHAOS_BACKENDS: Readonly<Record<string, () => ChaosBackend>> = {
  tcp: tcpStoreBackend,
  etcd: etcdBackend,
  redis: redisBackend,
};

/** The backends the soak runs when `RDZV_CHAOS_BACKEND` is not set. */
export const DEFAULT_CHAOS_BACKENDS: readonly string[] = ["tcp", "etcd"];
