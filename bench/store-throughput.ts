/**
 * Store throughput and memory benchmark: rdzv's TCP store server against PyTorch's C++ TCPStore server.
 *
 *   node dist/bench/store-throughput.js [--reps 5] [--ops 5000] [--ts-ops 100000] [--idle 2000] [--quick] [--write]
 *                                       [--cpu-prof DIR]
 *
 * 1. PyTorch 2.x's Python client (1 and 4 processes) doing set/get/add of 64-byte values against PyTorch's
 *    server (libuv, the default, and legacy), against ours, and against the "Node floor" (store-floor.ts: a
 *    Node server that stores nothing), interleaved, median of `--reps` runs.
 * 2. rdzv's TS client, pipelined (batches of 1000 concurrent calls), against ours and PyTorch's.
 * 3. Server memory per idle connection (2000 of them) and per 10k keys, measured in the server's process.
 *
 * Every server runs in a process of its own (ours: this script with `--server-child`). `--write` replaces
 * the "## Store throughput" section of bench/RESULTS.md. `--cpu-prof DIR` profiles our server process.
 */

import { execFileSync, spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { cpus, loadavg } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { connectTCPStore, type TCPStore } from "../src/store/tcp/client.js";
import { createTCPStoreServer } from "../src/store/tcp/server.js";
import {
  findTorch1,
  findTorch2,
  type PyAgent,
  REPO_ROOT,
  startAgent,
  startTorchServer,
  type TorchPython,
} from "../test/helpers/torch.js";
import { median } from "./stats.js";
import { startFloorServer, storeWorkPerRequest } from "./store-floor.js";

const HOST = "127.0.0.1";
const VALUE = Buffer.alloc(64, 0x76);
const KINDS = ["set", "get", "add"] as const;
/** Measured set runs make this many times the ops of the other kinds (see `pythonRun`). */
const SET_OPS_FACTOR = 5;
/** Value sizes of the "bigger values" runs: just above V8's on-heap limit for typed arrays, and 1 KiB. */
const SIZED_VALUES = [128, 1024] as const;
type Kind = (typeof KINDS)[number];

interface Args {
  reps: number;
  ops: number;
  tsOps: number;
  idleConnections: number;
  write: boolean;
  cpuProf: string | undefined;
}

function parseArgs(argv: readonly string[]): Args {
  const value = (name: string, fallback: number): number => {
    const i = argv.indexOf(name);
    return i < 0 ? fallback : Number(argv[i + 1]);
  };
  const quick = argv.includes("--quick");
  const i = argv.indexOf("--cpu-prof");
  return {
    reps: value("--reps", quick ? 3 : 5),
    ops: value("--ops", quick ? 2000 : 5000),
    tsOps: value("--ts-ops", quick ? 50_000 : 100_000),
    idleConnections: value("--idle", 2000),
    write: argv.includes("--write"),
    cpuProf: i < 0 ? undefined : argv[i + 1],
  };
}

/** Appends `value` to the list at `key`. */
function record(runs: Record<string, number[]>, key: string, value: number): void {
  const list = runs[key];
  if (list === undefined) runs[key] = [value];
  else list.push(value);
}

// --- our server, in a child process -------------------------------------------------------------------------

/** Child mode: serve, and answer "mem" (after GC) and "stats" on stdin with one JSON line each. */
async function serverChild(): Promise<void> {
  const server = await createTCPStoreServer({ host: HOST, port: 0 });
  const gc = (globalThis as { gc?: () => void }).gc;
  process.stdout.write(`${JSON.stringify({ port: server.port, pid: process.pid })}\n`);
  for await (const line of createInterface({ input: process.stdin })) {
    if (line === "mem") {
      for (let i = 0; i < 3; i++) gc?.();
      await new Promise((r) => setTimeout(r, 50));
      gc?.();
      const m = process.memoryUsage();
      process.stdout.write(`${JSON.stringify({ rss: m.rss, heap: m.heapUsed, external: m.external })}\n`);
    } else if (line === "stats") {
      process.stdout.write(`${JSON.stringify(server.stats())}\n`);
    }
  }
  await server.close();
  process.exit(0);
}

interface Mem {
  rss: number;
  heap: number;
  external?: number;
}

interface ServerHandle {
  port: number;
  pid: number;
  mem(): Promise<Mem>;
  close(): Promise<void>;
}

/** Child mode `--floor-child`: the Node floor server, until stdin closes. */
async function floorChild(): Promise<void> {
  const server = await startFloorServer(HOST);
  const address = server.address() as { port: number };
  process.stdout.write(`${JSON.stringify({ port: address.port, pid: process.pid })}\n`);
  for await (const _ of createInterface({ input: process.stdin }));
  process.exit(0);
}

async function startOurServer(cpuProf: string | undefined, mode = "--server-child"): Promise<ServerHandle> {
  const flags = [
    "--expose-gc",
    ...(cpuProf === undefined ? [] : ["--cpu-prof", `--cpu-prof-dir=${cpuProf}`]),
  ];
  const child = spawn(process.execPath, [...flags, fileURLToPath(import.meta.url), mode], {
    stdio: ["pipe", "pipe", "inherit"],
  });
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const next = async (): Promise<Record<string, number>> => JSON.parse((await lines.next()).value as string);
  const { port, pid } = (await next()) as { port: number; pid: number };
  return {
    port,
    pid,
    mem: async () => {
      child.stdin.write("mem\n");
      return (await next()) as unknown as Mem;
    },
    close: async () => {
      child.stdin.end();
      await once(child, "exit");
    },
  };
}

/** RSS of any process, from /proc (used for PyTorch's server, which cannot report its own heap). */
function procRss(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = /VmRSS:\s+(\d+) kB/.exec(status);
  return kb === null ? Number.NaN : Number(kb[1]) * 1024;
}

/** A row of the Python-client tables: the medians of `runs` for libuv, legacy, the floor and rdzv. */
function mediansByServer(
  runs: Record<string, number[]>,
  clients: number,
  kind: Kind,
): [number, number, number, number] {
  const of = (server: string): number => median(runs[`${clients}|${kind}|${server}`]!);
  return [of("PyTorch libuv"), of("PyTorch legacy"), of("Node floor"), of("rdzv")];
}

/** Keys each Python worker cycles through (and sets first for a get loop). */
const KEYS_PER_WORKER = 1000;

/**
 * CPU time a process has used so far, in ns, over all its threads (PyTorch's servers answer on a thread
 * of their own), from the scheduler's per-thread accounting in /proc: exact to the ns, where the clock
 * ticks of /proc/PID/stat count in 10 ms steps.
 */
function cpuNs(pid: number): number {
  let total = 0;
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      total += Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, "utf8").split(" ")[0]);
    } catch {
      // The thread ended between the listing and the read: its time is in no thread's file any more,
      // which the run's figure then misses (threads of these servers live as long as the server).
    }
  }
  return total;
}

// --- 1. PyTorch's Python client --------------------------------------------------------------------------

interface Target {
  name: string;
  port: number;
  /** The server's process, for its CPU time per request. */
  pid: number;
}

/** One run of the Python clients against a target: aggregate ops/s, and the server's CPU µs per request. */
async function pythonRun(
  workers: PyAgent[],
  target: Target,
  kind: Kind,
  ops: number,
  rep: number,
  valueSize = VALUE.length,
): Promise<{ rate: number; cpuUs: number }> {
  // Sets have no reply and go by fast: a run of `ops` took ~40 ms, in which one rehash of the server's key
  // map or one GC decided the figure.
  const n = kind === "set" ? ops * SET_OPS_FACTOR : ops;
  const before = cpuNs(target.pid);
  const rate = await pythonClients(workers, target, kind, n, rep, valueSize);
  // Every request the server got (bench/py/worker.py): a num_keys first, the 1,000 keys a get loop sets
  // before it starts, two per get (WAIT + GET), one per set or add, and the num_keys closing a set loop.
  const perWorker = kind === "get" ? 1 + KEYS_PER_WORKER + 2 * n : kind === "set" ? n + 2 : n + 1;
  const requests = workers.length * perWorker;
  return { rate, cpuUs: (cpuNs(target.pid) - before) / 1000 / requests };
}

async function pythonClients(
  workers: PyAgent[],
  target: Target,
  kind: Kind,
  ops: number,
  rep: number,
  valueSize = VALUE.length,
) {
  const startAt = Date.now() / 1000 + 0.3;
  const replies = await Promise.all(
    workers.map((w, i) =>
      w.command(
        {
          op: "bench",
          host: HOST,
          port: target.port,
          kind,
          n: ops,
          value_size: valueSize,
          prefix: `py/${kind}/${valueSize}/${rep}/${i}/`,
          keys: KEYS_PER_WORKER,
          start_at: startAt,
        },
        600_000,
      ),
    ),
  );
  const runs = replies.map((r) => {
    if (!r.ok) throw new Error(`python worker failed on ${target.name}: ${r.error.message}`);
    return r.value as { start: number; end: number; n: number };
  });
  const total = runs.reduce((a, r) => a + r.n, 0);
  const wall = Math.max(...runs.map((r) => r.end)) - Math.min(...runs.map((r) => r.start));
  return total / wall;
}

// --- 2. rdzv's TS client, pipelined ------------------------------------------------------------------------

async function tsPipelined(store: TCPStore, kind: Kind, total: number, batch: number, tag: string) {
  const keys = Array.from({ length: 1000 }, (_, i) => `ts/${tag}/${kind}/${i}`);
  if (kind === "get") await Promise.all(keys.map((k) => store.set(k, VALUE)));
  await store.numKeys();
  const started = performance.now();
  for (let done = 0; done < total; done += batch) {
    const calls: Promise<unknown>[] = [];
    for (let j = 0; j < batch; j++) {
      const key = keys[(done + j) % keys.length]!;
      calls.push(
        kind === "set" ? store.set(key, VALUE) : kind === "get" ? store.get(key) : store.add(key, 1),
      );
    }
    await Promise.all(calls);
  }
  await store.numKeys();
  return total / ((performance.now() - started) / 1000);
}

async function tsSequential(store: TCPStore, kind: Kind, total: number, tag: string) {
  const key = `ts/seq/${tag}/${kind}`;
  await store.set(key, kind === "add" ? "0" : VALUE);
  const started = performance.now();
  for (let i = 0; i < total; i++) {
    if (kind === "set") await store.set(key, VALUE);
    else if (kind === "get") await store.get(key);
    else await store.add(key, 1);
  }
  await store.numKeys();
  return total / ((performance.now() - started) / 1000);
}

// --- 3. memory -----------------------------------------------------------------------------------------------

/** Opens `n` connections that complete the v2 handshake (VALIDATE + PING) and then stay idle. */
async function openIdle(port: number, n: number): Promise<Socket[]> {
  const sockets: Socket[] = [];
  for (let i = 0; i < n; i += 100) {
    const chunk = await Promise.all(
      Array.from({ length: Math.min(100, n - i) }, async () => {
        const s = connect({ host: HOST, port });
        s.on("error", () => {});
        await once(s, "connect");
        s.write(Buffer.from([0x00, 0xce, 0xf7, 0x85, 0x3c, 0x0d, 0x01, 0x02, 0x03, 0x04]));
        await once(s, "data");
        return s;
      }),
    );
    sockets.push(...chunk);
  }
  return sockets;
}

interface MemResult {
  perConnRss: number;
  perConnHeap: number | undefined;
  per10kRss: number;
  per10kHeap: number | undefined;
}

async function memory(port: number, mem: () => Promise<Mem>, idle: number): Promise<MemResult> {
  // Keys first: they are never freed, so their pages cannot be reused memory of closed connections.
  const store = await connectTCPStore({ host: HOST, port, timeoutMs: 60_000 });
  await store.numKeys();
  const m0 = await mem();
  for (let i = 0; i < 10_000; i += 1000) {
    await Promise.all(
      Array.from({ length: 1000 }, (_, j) => store.set(`mem/key/${String(i + j).padStart(5, "0")}`, VALUE)),
    );
  }
  await store.numKeys();
  const m1 = await mem();
  const sockets = await openIdle(port, idle);
  await new Promise((r) => setTimeout(r, 300));
  const m2 = await mem();
  for (const s of sockets) s.destroy();
  await store.close();
  const heapDelta = (a: Mem, b: Mem): number | undefined =>
    Number.isNaN(a.heap) ? undefined : b.heap + (b.external ?? 0) - a.heap - (a.external ?? 0);
  const connHeap = heapDelta(m1, m2);
  return {
    perConnRss: (m2.rss - m1.rss) / idle,
    perConnHeap: connHeap === undefined ? undefined : connHeap / idle,
    per10kRss: m1.rss - m0.rss,
    per10kHeap: heapDelta(m0, m1),
  };
}

// --- report --------------------------------------------------------------------------------------------------

const fmt = (n: number): string => Math.round(n).toLocaleString("en-US");
const kb = (n: number | undefined): string => (n === undefined ? "n/a" : `${(n / 1024).toFixed(1)} KiB`);
const mib = (n: number | undefined): string =>
  n === undefined ? "n/a" : `${(n / 1024 / 1024).toFixed(2)} MiB`;

function environment(t2: TorchPython, t1: TorchPython | undefined): string[] {
  let nproc = String(cpus().length);
  try {
    nproc = execFileSync("nproc", { encoding: "utf8" }).trim();
  } catch {}
  return [
    `- Machine: \`nproc\` = ${nproc}, CPU ${cpus()[0]?.model ?? "unknown"}, Linux loopback`,
    `- Node ${process.version}; PyTorch ${t2.version} (Python client and C++ server)${t1 ? `; PyTorch ${t1.version} installed (not benchmarked)` : ""}`,
    `- Date: ${new Date().toISOString().slice(0, 10)}`,
  ];
}

function writeResults(section: string): void {
  const path = join(REPO_ROOT, "bench", "RESULTS.md");
  const old = existsSync(path) ? readFileSync(path, "utf8") : "# Benchmark results\n";
  const start = old.indexOf("## Store throughput");
  let text: string;
  if (start < 0) text = `${old.trimEnd()}\n\n${section}`;
  else {
    const next = old.indexOf("\n## ", start + 1);
    text = old.slice(0, start) + section + (next < 0 ? "" : `\n${old.slice(next + 1)}`);
  }
  writeFileSync(path, `${text.trimEnd()}\n`);
}

async function main(): Promise<void> {
  if (process.argv.includes("--server-child")) return serverChild();
  if (process.argv.includes("--floor-child")) return floorChild();
  const args = parseArgs(process.argv.slice(2));
  const log = (line: string): void => void process.stderr.write(`${line}\n`);
  const t2 = await findTorch2();
  const t1 = await findTorch1().catch(() => undefined);
  const [ours, floor, libuv, legacy, ...workers] = await Promise.all([
    startOurServer(args.cpuProf),
    startOurServer(undefined, "--floor-child"),
    startTorchServer(t2, { useLibuv: true }),
    startTorchServer(t2, { useLibuv: false }),
    ...Array.from({ length: 4 }, () =>
      startAgent(t2, { script: join(REPO_ROOT, "bench", "py", "worker.py") }),
    ),
  ]);
  const pidOf = (agent: PyAgent): number => {
    if (agent.pid === undefined) throw new Error("a PyTorch server agent has no pid");
    return agent.pid;
  };
  const targets: Target[] = [
    { name: "PyTorch libuv", port: libuv.port, pid: pidOf(libuv) },
    { name: "PyTorch legacy", port: legacy.port, pid: pidOf(legacy) },
    { name: "Node floor", port: floor.port, pid: floor.pid },
    { name: "rdzv", port: ours.port, pid: ours.pid },
  ];
  const lines: string[] = [];
  // The machine is shared: sample the 1-minute load average through the run, for the report.
  const loads: number[] = [loadavg()[0] ?? 0];
  const sampler = setInterval(() => loads.push(loadavg()[0] ?? 0), 5000);
  sampler.unref();
  try {
    // Warm-up, not measured: JIT tiers of our server and client, page faults of every server. A Node
    // server's CPU per request from PyTorch's client keeps falling for its first 20,000-30,000 requests
    // (rdzv: about 21 µs of user time per ADD over the first 20,000, then 10-12; the floor 13, then 8),
    // so every server first gets `ops` of each kind from each of 4 client processes.
    const storeFor = (port: number) => connectTCPStore({ host: HOST, port, timeoutMs: 60_000 });
    const [toOurs, toLibuv] = await Promise.all([storeFor(ours.port), storeFor(libuv.port)]);
    for (const kind of KINDS) {
      for (const target of targets) await pythonClients(workers.slice(0, 4), target, kind, args.ops, -1);
      for (const store of [toOurs, toLibuv]) await tsPipelined(store, kind, args.tsOps / 4, 1000, "warm");
    }
    // 1. Python client.
    const py: Record<string, number[]> = {};
    const cpu: Record<string, number[]> = {};
    for (const clients of [1, 4]) {
      for (const kind of KINDS) {
        for (let rep = 0; rep < args.reps; rep++) {
          for (const target of targets) {
            const run = await pythonRun(workers.slice(0, clients) as PyAgent[], target, kind, args.ops, rep);
            record(py, `${clients}|${kind}|${target.name}`, run.rate);
            record(cpu, `${clients}|${kind}|${target.name}`, run.cpuUs);
          }
        }
        const m = (t: string): number => median(py[`${clients}|${kind}|${t}`]!);
        log(
          `python x${clients} ${kind}: libuv ${fmt(m("PyTorch libuv"))}, legacy ${fmt(m("PyTorch legacy"))}, floor ${fmt(m("Node floor"))}, rdzv ${fmt(m("rdzv"))} ops/s`,
        );
      }
    }
    // 1b. Values above V8's 64-byte limit for typed arrays in its heap (docs/tcpstore-compat.md,
    // "Throughput"), with 4 client processes: libuv and rdzv only.
    const sized: Record<string, number[]> = {};
    const sizedCpu: Record<string, number[]> = {};
    const sizedTargets = targets.filter((t) => t.name === "PyTorch libuv" || t.name === "rdzv");
    for (const size of SIZED_VALUES) {
      for (const kind of ["set", "get"] as const) {
        for (let rep = 0; rep < args.reps; rep++) {
          for (const target of sizedTargets) {
            const run = await pythonRun(workers.slice(0, 4) as PyAgent[], target, kind, args.ops, rep, size);
            record(sized, `${size}|${kind}|${target.name}`, run.rate);
            record(sizedCpu, `${size}|${kind}|${target.name}`, run.cpuUs);
          }
        }
        const m = (t: string): number => median(sized[`${size}|${kind}|${t}`]!);
        log(`python x4 ${kind} ${size} B: libuv ${fmt(m("PyTorch libuv"))}, rdzv ${fmt(m("rdzv"))} ops/s`);
      }
    }
    // 2. TS client, from this process, against the servers the Python runs filled.
    const keysAtTs = await toOurs.numKeys();
    const ts: Record<string, number[]> = {};
    for (const kind of KINDS) {
      for (let rep = 0; rep < args.reps; rep++) {
        record(ts, `pipe|${kind}|rdzv`, await tsPipelined(toOurs, kind, args.tsOps, 1000, `r${rep}`));
        record(ts, `pipe|${kind}|libuv`, await tsPipelined(toLibuv, kind, args.tsOps, 1000, `l${rep}`));
        record(ts, `seq|${kind}|rdzv`, await tsSequential(toOurs, kind, args.ops, `r${rep}`));
        record(ts, `seq|${kind}|libuv`, await tsSequential(toLibuv, kind, args.ops, `l${rep}`));
      }
      log(
        `ts pipelined ${kind}: rdzv ${fmt(median(ts[`pipe|${kind}|rdzv`]!))}, libuv ${fmt(median(ts[`pipe|${kind}|libuv`]!))} ops/s`,
      );
    }
    await Promise.all([toOurs.close(), toLibuv.close()]);
    // 3. Memory, on fresh servers (freed memory of the runs above would hide growth).
    const [memServer, memTorch] = await Promise.all([startOurServer(undefined), startTorchServer(t2)]);
    const torchPid = memTorch.pid!;
    const memOurs = await memory(memServer.port, memServer.mem, args.idleConnections);
    const memLibuv = await memory(
      memTorch.port,
      async () => ({ rss: procRss(torchPid), heap: Number.NaN }),
      args.idleConnections,
    );
    await Promise.all([memServer.close(), memTorch.close()]);
    log(`memory: rdzv ${kb(memOurs.perConnRss)}/conn, ${mib(memOurs.per10kRss)}/10k keys`);

    const cmd = `node dist/bench/store-throughput.js ${process.argv
      .slice(2)
      .filter((a) => a !== "--write")
      .join(" ")}`.trim();
    lines.push(
      "## Store throughput",
      "",
      ...environment(t2, t1),
      `- Command: \`npm run build && ${cmd}\``,
      `- Every figure is the median of ${args.reps} runs, after an unmeasured warm-up of every server (each kind: 4 Python client processes x ${args.ops.toLocaleString("en-US")} ops, then ${(args.tsOps / 4).toLocaleString("en-US")} pipelined TS ops). Servers each run in their own process; clients in others.`,
      `- Load average (1 min, sampled every 5 s through the run): median ${median(loads).toFixed(2)}, max ${Math.max(...loads).toFixed(2)}, on ${cpus().length} CPUs. The machine is shared with other jobs: a load above the CPU count means the servers competed for CPU, and single rows can swing by ±50% between runs.`,
      "",
      `### PyTorch's Python client (${t2.version}), 64-byte values, ${fmt(args.ops)} ops per process per run (set: ${fmt(args.ops * SET_OPS_FACTOR)})`,
      "",
      "Aggregate ops/s over all client processes (first start to last end). `get` is WAIT + GET (two round trips), `set` has no reply (a `num_keys` round trip closes each run). *Node floor* (bench/store-floor.ts) is a Node server that parses these requests and answers at once without storing anything: the most any Node.js server can do here, so `rdzv / floor` is what the store itself costs. Both read through Node's `onread` socket option, not the Readable stream (src/store/tcp/server-reads.ts), and write to the socket's handle, not the Writable (server-writes.ts).",
      "",
      "| clients | op | PyTorch libuv | PyTorch legacy | Node floor | rdzv | rdzv / libuv | rdzv / legacy | rdzv / floor |",
      "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    );
    for (const clients of [1, 4]) {
      for (const kind of KINDS) {
        const [a, b, f, c] = mediansByServer(py, clients, kind);
        lines.push(
          `| ${clients} | ${kind} | ${fmt(a)} | ${fmt(b)} | ${fmt(f)} | ${fmt(c)} | ${(c / a).toFixed(2)} | ${(c / b).toFixed(2)} | ${(c / f).toFixed(2)} |`,
        );
      }
    }
    const rows = [1, 4].flatMap((c) => KINDS.map((k) => [c, k] as const));
    const ratio = (c: number, k: Kind, t: string): number =>
      median(py[`${c}|${k}|rdzv`]!) / median(py[`${c}|${k}|${t}`]!);
    const met = rows.filter(([c, k]) => ratio(c, k, "PyTorch libuv") >= 1).length;
    const floorMin = Math.min(...rows.map(([c, k]) => ratio(c, k, "Node floor")));
    const work = storeWorkPerRequest();
    const us = (x: number): string => `${x.toFixed(2)} µs`;
    lines.push(
      "",
      `Target rdzv / PyTorch libuv >= 1.0: met in ${met} of ${rows.length} rows; rdzv / Node floor is at least ${floorMin.toFixed(2)} in every row.`,
      `The store's own work per request (decode, engine, reply; no socket, measured in this run): ${us(work.add)} per ADD, ${us(work.get)} per GET, against a round trip of ${us(1e6 / median(py["1|add|rdzv"]!))} per ADD with one client.`,
      floorMin >= 0.85
        ? "So in these latency-bound loops what separates a Node server from PyTorch's C++ one is Node's per-request I/O path (the floor column), not the store."
        : `rdzv / floor went as low as ${floorMin.toFixed(2)} in this run although the store's work is a few µs per request: on this shared machine single rows swing with other processes' load (compare the load averages above); rerun on a quiet machine before reading more into a row.`,
    );
    lines.push(
      "",
      "Server CPU time per request in the same runs (µs, median; all of the server process's threads, from the scheduler's accounting in /proc; every request of the run counts: a `get` is two, WAIT and GET, and a get run first sets its 1,000 keys per client). Unlike ops/s, this does not depend on how the clients and the other processes shared the 2 CPUs, so it shows what each server costs.",
      "",
      "| clients | op | PyTorch libuv | PyTorch legacy | Node floor | rdzv | rdzv / libuv |",
      "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    );
    for (const clients of [1, 4]) {
      for (const kind of KINDS) {
        const [a, b, f, c] = mediansByServer(cpu, clients, kind);
        const u = (x: number): string => x.toFixed(2);
        lines.push(
          `| ${clients} | ${kind} | ${u(a)} | ${u(b)} | ${u(f)} | ${u(c)} | ${(c / a).toFixed(2)} |`,
        );
      }
    }
    lines.push(
      "",
      `### Bigger values: PyTorch's Python client, 4 processes, ${fmt(args.ops)} ops per process per run (set: ${fmt(args.ops * SET_OPS_FACTOR)})`,
      "",
      "V8 keeps a typed array of up to 64 bytes inside its heap and gives a bigger one a backing store of its own, which costs a Node server microseconds per value unless it pools them (rdzv copies values of 65 bytes to 4 KiB into shared slabs; docs/tcpstore-compat.md). PyTorch's own values are often bigger than 64 bytes (an NCCL unique id is 128). Same runs, libuv and rdzv only.",
      "",
      "| value | op | PyTorch libuv | rdzv | rdzv / libuv | server CPU µs per request: libuv | rdzv |",
      "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    );
    for (const size of SIZED_VALUES) {
      for (const kind of ["set", "get"] as const) {
        const of = (runs: Record<string, number[]>, t: string): number =>
          median(runs[`${size}|${kind}|${t}`]!);
        const [a, c] = [of(sized, "PyTorch libuv"), of(sized, "rdzv")];
        lines.push(
          `| ${size} B | ${kind} | ${fmt(a)} | ${fmt(c)} | ${(c / a).toFixed(2)} | ${of(sizedCpu, "PyTorch libuv").toFixed(2)} | ${of(sizedCpu, "rdzv").toFixed(2)} |`,
        );
      }
    }
    lines.push(
      "",
      `### rdzv's TS client, ${fmt(args.tsOps)} ops per run`,
      "",
      "Pipelined: batches of 1000 concurrent calls. Sequential: one call at a time. The TS `get` sends one GET_ASYNC to the rdzv server (rdzv extension, docs/tcpstore-compat.md) and CHECK + GET to PyTorch's. A TS `set` resolves once the reply to the PING its client sends behind each write of sets arrives (so it was applied), which makes a sequential `set` a round trip; before 2026-12-03 it resolved once written (sequential set 72,606 / 73,593 ops/s then).",
      `These runs come after the Python runs, on the same servers (rdzv's held ${fmt(keysAtTs)} keys when they began), from the benchmark's own process, whose connections did the warm-up's sets and adds first.`,
      "",
      "| mode | op | rdzv server | PyTorch libuv server | rdzv / libuv |",
      "| --- | --- | ---: | ---: | ---: |",
    );
    for (const mode of ["pipe", "seq"]) {
      for (const kind of KINDS) {
        const a = median(ts[`${mode}|${kind}|rdzv`]!);
        const b = median(ts[`${mode}|${kind}|libuv`]!);
        lines.push(
          `| ${mode === "pipe" ? "pipelined x1000" : "sequential"} | ${kind} | ${fmt(a)} | ${fmt(b)} | ${(a / b).toFixed(2)} |`,
        );
      }
    }
    lines.push(
      "",
      "### Server memory",
      "",
      `Measured in the server's process, on fresh servers: 10k keys of 64-byte values (keys \`/mem/key/NNNNN\`), then ${fmt(args.idleConnections)} idle v2 connections (VALIDATE + PING done). rdzv: after GC; heap = V8 heap used + external. PyTorch: process RSS only.`,
      "",
      "| | rdzv RSS | rdzv heap | PyTorch libuv RSS |",
      "| --- | ---: | ---: | ---: |",
      `| per idle connection | ${kb(memOurs.perConnRss)} | ${kb(memOurs.perConnHeap)} | ${kb(memLibuv.perConnRss)} |`,
      `| per 10k keys | ${mib(memOurs.per10kRss)} | ${mib(memOurs.per10kHeap)} | ${mib(memLibuv.per10kRss)} |`,
      "",
    );
  } finally {
    await Promise.all([
      ours.close(),
      floor.close(),
      libuv.close(),
      legacy.close(),
      ...workers.map((w) => w.close()),
    ]);
  }
  const section = lines.join("\n");
  process.stdout.write(`${section}\n`);
  if (args.write) writeResults(section);
}

await main();
