/**
 * Rendezvous time on each dynamic backend: rdzv's TCP store (`c10d`), etcd (1 member and a 3-member
 * cluster on loopback) and Redis, with the same harness for all, on one machine.
 *
 *   node dist/bench/backends.js [--sizes 64,256,1000] [--reps 3] [--backends c10d,etcd1,etcd3,redis] [--write]
 *
 * Per run: N nodes (min = max = N) as handlers in this process, each with a connection (etcd: a client and
 * a lease; Redis: a command and a subscriber connection) of its own; the servers run in processes of
 * their own (rdzv's bench server, `etcd`, `redis-server`), started fresh per backend. Every node connects
 * first; the time is from starting every `nextRendezvous()` at once until the last one returned. Median of
 * `--reps` runs, each under a fresh run id. All clients share this process's event loop, so the figures
 * compare backends rather than show what N separate machines would see (bench/rendezvous.ts spreads the
 * nodes over worker processes for `c10d`). `--write` replaces the "## Backends" section of bench/RESULTS.md.
 */

import { spawn } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { cpus, loadavg } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { EtcdRendezvousBackend } from "../src/backends/etcd-backend.js";
import { StoreRendezvousBackend } from "../src/backends/store-backend.js";
import type { RendezvousBackend } from "../src/rendezvous/backend.js";
import {
  createDynamicRendezvousHandler,
  type DynamicRendezvousHandler,
} from "../src/rendezvous/dynamic-handler.js";
import { connectEtcdStore } from "../src/store/etcd/connect.js";
import { connectRedisStore } from "../src/store/redis/connect.js";
import type { Store } from "../src/store/store.js";
import { connectTCPStore } from "../src/store/tcp/client.js";
import { EtcdTestCluster } from "../test/helpers/etcd.js";
import { RedisTestServer } from "../test/helpers/redis.js";
import { intFlag, intListFlag, stringFlag } from "./args.js";
import { REPO_ROOT } from "./rendezvous-procs.js";
import { upperMedian } from "./stats.js";

interface Service {
  readonly label: string;
  connect(runId: string): Promise<{ backend: RendezvousBackend; close: () => Promise<void> }>;
  stop(): Promise<void>;
}

async function c10dService(): Promise<Service> {
  const child = spawn(process.execPath, [join(REPO_ROOT, "dist/bench/rendezvous-server.js")], {
    stdio: ["pipe", "pipe", "inherit"],
  });
  const line = await new Promise<string>((resolve) =>
    createInterface({ input: child.stdout! }).once("line", resolve),
  );
  const { port } = JSON.parse(line) as { port: number };
  return {
    label: "c10d (rdzv TCP store)",
    async connect(runId) {
      const store = await connectTCPStore({ host: "127.0.0.1", port, connectTimeoutMs: 60_000 });
      return { backend: new StoreRendezvousBackend(store, runId), close: () => store.close() };
    },
    async stop() {
      child.stdin!.end();
      await new Promise((r) => child.once("exit", r));
    },
  };
}

async function etcdService(members: number): Promise<Service> {
  const cluster = await EtcdTestCluster.start(members);
  return {
    label: `etcd (${members} member${members > 1 ? "s" : ""})`,
    async connect(runId) {
      const store = await connectEtcdStore({ endpoints: cluster.endpoints, timeoutMs: 120_000 });
      const backend = new EtcdRendezvousBackend(store, runId, { leaseTtlS: 15 });
      const close = async (): Promise<void> => {
        await backend.close();
        await store.close();
      };
      return { backend, close };
    },
    stop: () => cluster.stop(),
  };
}

async function redisService(): Promise<Service> {
  const server = await RedisTestServer.start();
  return {
    label: "Redis",
    async connect(runId) {
      const store: Store = await connectRedisStore({ endpoint: server.endpoint, timeoutMs: 120_000 });
      return {
        backend: new StoreRendezvousBackend(store, runId, { name: "redis" }),
        close: () => store.close(),
      };
    },
    stop: () => server.stop(),
  };
}

/** One rendezvous of `n` nodes; milliseconds from the start until the last node returned. */
async function runOnce(service: Service, n: number, runId: string): Promise<number> {
  const conns = await Promise.all(Array.from({ length: n }, () => service.connect(runId)));
  const handlers: DynamicRendezvousHandler[] = conns.map((c) =>
    createDynamicRendezvousHandler({
      backend: c.backend,
      runId,
      settings: { minNodes: n, maxNodes: n, joinTimeoutMs: 300_000, lastCallTimeoutMs: 30_000 },
      localAddr: "127.0.0.1",
      onShutdown: c.close,
    }),
  );
  try {
    const start = Date.now();
    const infos = await Promise.all(handlers.map((h) => h.nextRendezvous()));
    const elapsed = Date.now() - start;
    const ranks = new Set(infos.map((i) => i.rank));
    if (ranks.size !== n || infos.some((i) => i.worldSize !== n))
      throw new Error(`bad ranks in a run of ${n}`);
    return elapsed;
  } finally {
    await Promise.all(handlers.map((h) => h.shutdown()));
  }
}

const sizes = intListFlag("--sizes", [64, 256, 1000]);
const reps = intFlag("--reps", 3);
const makers: Record<string, () => Promise<Service>> = {
  c10d: c10dService,
  etcd1: () => etcdService(1),
  etcd3: () => etcdService(3),
  redis: redisService,
};
const rows: string[] = [];
const load = loadavg()[0]!.toFixed(1);
for (const name of stringFlag("--backends", "c10d,etcd1,etcd3,redis").split(",")) {
  const make = makers[name];
  if (make === undefined)
    throw new Error(`unknown backend ${name}; known: ${Object.keys(makers).join(", ")}`);
  const service = await make();
  try {
    const cells: string[] = [];
    for (const n of sizes) {
      const times: number[] = [];
      for (let r = 0; r < reps; r++) times.push(await runOnce(service, n, `bench-${n}-${r}`));
      console.log(`${service.label} N=${n}: ${times.join(", ")} ms`);
      cells.push(`${upperMedian(times)} ms`);
    }
    rows.push(`| ${service.label} | ${cells.join(" | ")} |`);
  } finally {
    await service.stop();
  }
}
const table = [
  `| backend | ${sizes.map((n) => `N = ${n}`).join(" | ")} |`,
  `| --- | ${sizes.map(() => "---:").join(" | ")} |`,
  ...rows,
].join("\n");
console.log(table);
if (process.argv.includes("--write")) {
  const path = join(REPO_ROOT, "bench/RESULTS.md");
  const section =
    `## Backends\n\nRendezvous time (median of ${reps}) of N nodes, min = max = N, on each dynamic backend: ` +
    `\`node dist/bench/backends.js --sizes ${sizes.join(",")} --reps ${reps}\` (bench/backends.ts), ` +
    `${new Date().toISOString().slice(0, 10)}, ${cpus().length} cores (${cpus()[0]?.model.trim()}), load ${load} at the start, ` +
    `Node ${process.version}, etcd ${"3.4"} and Redis 7.0 from Debian. Every node is a handler in one Node process ` +
    "with a connection of its own; servers in processes of their own (etcd with --heartbeat-interval=50 " +
    "--election-timeout=500, on /dev/shm; Redis without persistence). All clients share one event loop: " +
    "the figures compare the backends, they are not what N machines would see.\n\n" +
    `${table}\n`;
  const text = readFileSync(path, "utf8");
  const start = text.indexOf("## Backends");
  let next = start < 0 ? -1 : text.indexOf("\n## ", start + 1);
  if (next >= 0) next += 1;
  const updated =
    start < 0
      ? `${text.trimEnd()}\n\n${section}`
      : `${text.slice(0, start)}${section}${next < 0 ? "" : `\n${text.slice(next)}`}`;
  writeFileSync(path, updated);
}
