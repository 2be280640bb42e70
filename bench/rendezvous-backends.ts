/**
 * The backends bench/rendezvous.ts can measure (`--backend NAME`, default `c10d`). A backend says how to
 * start the service nodes meet at (in the bench process) and how to create one node's handler (in a
 * worker process, which looks the backend up here by name). To measure another backend (etcd, Redis),
 * add an entry: the runs, the workers and the report stay as they are.
 */

import { StoreRendezvousBackend } from "../src/backends/store-backend.js";
import {
  createDynamicRendezvousHandler,
  type DynamicRendezvousHandler,
} from "../src/rendezvous/dynamic-handler.js";
import { connectTCPStore } from "../src/store/tcp/client.js";
import { type OurServer, startOurServer } from "./rendezvous-procs.js";

/** The shared service of one run, as the bench process sees it. */
export interface BenchService extends OurServer {
  /** What every node is given to reach the service (`host:port` for c10d). */
  readonly endpoint: string;
}

/** One node in a worker process. */
export interface BenchNode {
  readonly handler: DynamicRendezvousHandler;
  /** Connections this node holds to the service right now (for the report). */
  connections(): number;
}

/** Size settings of one run. */
export interface BenchSettings {
  readonly minNodes: number;
  readonly maxNodes: number;
}

/** How to measure one backend. */
export interface BenchBackend {
  /** Starts the service; `cpuProfDir` asks for a CPU profile of it where it is a Node process. */
  startService(cpuProfDir: string | undefined): Promise<BenchService>;
  /** Creates one node (handler with connections of its own) in a worker process. */
  createNode(endpoint: string, runId: string, settings: BenchSettings): Promise<BenchNode>;
}

/** rdzv's dynamic handler over rdzv's TCP store, one client per node (the `c10d` backend). */
const c10d: BenchBackend = {
  async startService(cpuProfDir) {
    const server = await startOurServer(cpuProfDir);
    return Object.assign(server, { endpoint: `127.0.0.1:${server.port}` });
  },
  async createNode(endpoint, runId, settings) {
    const [host, port] = endpoint.split(":");
    const store = await connectTCPStore({ host: host!, port: Number(port), connectTimeoutMs: 60_000 });
    const handler = createDynamicRendezvousHandler({
      backend: new StoreRendezvousBackend(store, runId),
      runId,
      settings,
      localAddr: "127.0.0.1",
      onShutdown: () => store.close(),
    });
    return { handler, connections: () => (store.closed ? 0 : 1) + store.waitConnections };
  },
};

/** Backends by `--backend` name. */
export const BENCH_BACKENDS: Readonly<Record<string, BenchBackend>> = { c10d };

/** The backend called `name`; throws naming the known ones otherwise. */
export function benchBackend(name: string): BenchBackend {
  const backend = BENCH_BACKENDS[name];
  if (backend === undefined) {
    throw new Error(
      `unknown --backend ${JSON.stringify(name)}; known: ${Object.keys(BENCH_BACKENDS).join(", ")}`,
    );
  }
  return backend;
}
