/**
 * The key table's pauses and throughput: how long one call of the store's `KvEngine` can block the event
 * loop while its key table grows to millions of keys, and what set/get/delete/list cost at 10k and 1M keys.
 *
 *   node dist/bench/kv-stall.js [--keys 2000000] [--reps 3] [--shards 1,256] [--baseline [LABEL=]PATH]...
 *
 * Each variant (a shard count of today's engine, and for each `--baseline` the `KvEngine` exported by
 * the compiled module at PATH, e.g. an older engine) runs in a fresh process of its own, the variants
 * alternated `--reps` times; medians are printed as a Markdown table.
 *
 * 1. Growth: `--keys` keys set one by one, 1000 per event-loop turn (a server handles a socket's read in
 *    one turn), then deleted the same way. The longest single call and turn, the longest of those that
 *    no GC pause overlapped (the table's own rehash: `...NoGc`, with the key count where it happened),
 *    and the longest GC pause.
 * 2. Throughput at 10k and 1M keys: get and set (overwrite) of keys decoded afresh from bytes, as a
 *    server decodes them from a socket; delete + set of an existing key; a listing of every key.
 * 3. Heap per 10k keys (V8 heap used + external, after GC): 100k keys `/mem/key/NNNNNN` of 64-byte values.
 * 4. The store's own work per GET and ADD (store-floor.ts's `storeWorkPerRequest`), with the store
 *    benchmark's 2-byte keys in an engine of two keys, and with 40-byte keys in one of 10k keys.
 *
 * GC kinds (`...WorstGcKind`, of the longest GC pause): 1 minor (scavenge), 4 major (mark-compact),
 * 8 incremental marking, 16 weak callbacks.
 */

import { spawn } from "node:child_process";
import { PerformanceObserver, performance } from "node:perf_hooks";
import { fileURLToPath, pathToFileURL } from "node:url";
import { KvEngine } from "../src/store/kv-engine.js";
import { median } from "./stats.js";
import { storeWorkPerRequest, type WorkEngine } from "./store-floor.js";

/** What a variant needs of an engine (an older `KvEngine` included). */
interface Engine extends WorkEngine {
  get(key: string): Uint8Array | undefined;
  delete(key: string): boolean;
  /** An array (a copy) today, an iterator before the key table was sharded. */
  keys(): Iterable<string>;
  readonly size: number;
}

interface Variant {
  label: string;
  /** Shards of today's engine, or the path of a module exporting an older `KvEngine`. */
  shards?: number;
  module?: string;
}

interface Args {
  keys: number;
  reps: number;
  variants: Variant[];
}

const BATCH = 1000;
const VALUE = Buffer.alloc(64, 0x76);

function parseArgs(argv: readonly string[]): Args {
  const value = (name: string): string | undefined => {
    const i = argv.indexOf(name);
    return i < 0 ? undefined : argv[i + 1];
  };
  const shards = (value("--shards") ?? "1,256").split(",").map(Number);
  const variants: Variant[] = shards.map((n) => ({ label: `${n} shard${n === 1 ? "" : "s"}`, shards: n }));
  const baselines = argv.flatMap((a, i) =>
    a === "--baseline" && argv[i + 1] !== undefined ? [argv[i + 1]!] : [],
  );
  variants.unshift(
    ...baselines.map((b) => {
      const eq = b.indexOf("=");
      return eq < 0 ? { label: "baseline", module: b } : { label: b.slice(0, eq), module: b.slice(eq + 1) };
    }),
  );
  return { keys: Number(value("--keys") ?? 2_000_000), reps: Number(value("--reps") ?? 3), variants };
}

/**
 * A key of the bench's i-th slot: a run's worker key, the varying part in the middle; a flat string
 * decoded from bytes, as a server's keys are (a template literal would be a cons string).
 */
const keyOf = (i: number): string =>
  Buffer.from(`/rdzv/bench-run-${i & 15}/r3/slot/${i}/hb`).toString("latin1");

async function makeEngine(variant: Variant): Promise<() => Engine> {
  if (variant.module === undefined) return () => new KvEngine({ keyTable: { shards: variant.shards ?? 1 } });
  const mod = (await import(pathToFileURL(variant.module).href)) as { KvEngine: new () => Engine };
  return () => new mod.KvEngine();
}

const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/** A call or event-loop turn that took more than `SLOW_MS`. */
interface Slow {
  start: number;
  ms: number;
  /** The index of the key (calls only). */
  at: number;
}

const SLOW_MS = 1;

/** Sets or deletes `keys` one by one, BATCH per turn: the calls and turns longer than `SLOW_MS`. */
async function timedPass(keys: readonly string[], op: (key: string) => void) {
  const calls: Slow[] = [];
  const turns: Slow[] = [];
  const started = performance.now();
  for (let b = 0; b < keys.length; b += BATCH) {
    await turn();
    const turnStart = performance.now();
    const end = Math.min(keys.length, b + BATCH);
    for (let i = b; i < end; i++) {
      const t = performance.now();
      op(keys[i]!);
      const ms = performance.now() - t;
      if (ms > SLOW_MS) calls.push({ start: t, ms, at: i });
    }
    const ms = performance.now() - turnStart;
    if (ms > SLOW_MS) turns.push({ start: turnStart, ms, at: -1 });
  }
  return { calls, turns, totalMs: performance.now() - started };
}

interface GcPause {
  start: number;
  ms: number;
  kind: number;
}

/** The longest of `slow`, and the longest that no GC pause overlapped (the table's own work). */
function worst(slow: readonly Slow[], gcs: readonly GcPause[]): { all: Slow; noGc: Slow } {
  const none: Slow = { start: 0, ms: 0, at: -1 };
  let all = none;
  let noGc = none;
  for (const s of slow) {
    if (s.ms > all.ms) all = s;
    const overlaps = gcs.some((g) => g.start < s.start + s.ms && s.start < g.start + g.ms);
    if (!overlaps && s.ms > noGc.ms) noGc = s;
  }
  return { all, noGc };
}

async function growth(make: () => Engine, n: number): Promise<Record<string, number>> {
  const keys = Array.from({ length: n }, (_, i) => keyOf(i));
  let gcs: GcPause[] = [];
  const observer = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      const kind = (e as { detail?: { kind?: number } }).detail?.kind ?? 0;
      gcs.push({ start: e.startTime, ms: e.duration, kind });
    }
  });
  observer.observe({ entryTypes: ["gc"] });
  const engine = make();
  const out: Record<string, number> = {};
  const report = (name: string, pass: Awaited<ReturnType<typeof timedPass>>): void => {
    const calls = worst(pass.calls, gcs);
    const turns = worst(pass.turns, gcs);
    const gc = gcs.reduce((a, g) => (g.ms > a.ms ? g : a), { start: 0, ms: 0, kind: 0 });
    Object.assign(out, {
      [`${name}WorstMs`]: calls.all.ms,
      [`${name}WorstNoGcMs`]: calls.noGc.ms,
      [`${name}WorstNoGcAt`]: calls.noGc.at,
      [`${name}WorstTurnMs`]: turns.all.ms,
      [`${name}WorstTurnNoGcMs`]: turns.noGc.ms,
      [`${name}WorstGcMs`]: gc.ms,
      [`${name}WorstGcKind`]: gc.kind,
      [`${name}MeanUs`]: (pass.totalMs * 1000) / n,
    });
    gcs = [];
  };
  const set = await timedPass(keys, (k) => engine.set(k, VALUE));
  await turn();
  report("set", set);
  if (engine.size !== n) throw new Error(`the engine holds ${engine.size} keys, not ${n}`);
  const del = await timedPass(keys, (k) => engine.delete(k));
  await turn();
  report("delete", del);
  observer.disconnect();
  if (engine.size !== 0) throw new Error(`the engine holds ${engine.size} keys after deleting all`);
  return out;
}

/** ns per op of `op(i)` for i in 0..ops, best of 3 (the machine is shared). */
function nsPerOp(ops: number, op: (i: number) => void): number {
  let best = Number.POSITIVE_INFINITY;
  for (let rep = 0; rep < 3; rep++) {
    const started = performance.now();
    for (let i = 0; i < ops; i++) op(i);
    best = Math.min(best, ((performance.now() - started) * 1e6) / ops);
  }
  return best;
}

function throughput(make: () => Engine, n: number): Record<string, number> {
  const engine = make();
  const bytes = Array.from({ length: n }, (_, i) => Buffer.from(keyOf(i), "latin1"));
  for (const b of bytes) engine.set(b.toString("latin1"), VALUE);
  const ops = 500_000;
  // A stride through the keys, so that a big table is not read in cache order.
  const at = (i: number): Buffer => bytes[(i * 7919) % n]!;
  const fresh = (i: number): string => at(i).toString("latin1");
  let missing = 0;
  const get = nsPerOp(ops, (i) => {
    if (engine.get(fresh(i)) === undefined) missing++;
  });
  if (missing !== 0) throw new Error(`${missing} gets missed`);
  const decode = nsPerOp(ops, (i) => {
    if (fresh(i).length === 0) missing++;
  });
  const set = nsPerOp(ops, (i) => engine.set(fresh(i), VALUE));
  const churn = nsPerOp(ops, (i) => {
    const k = fresh(i);
    engine.delete(k);
    engine.set(k, VALUE);
  });
  const listed: number[] = [];
  const list = nsPerOp(Math.max(1, Math.floor(2_000_000 / n)), () => {
    // As the server's LIST_KEYS: the engine's array as it is, an older engine's iterator into one.
    const keys = engine.keys();
    listed.push((Array.isArray(keys) ? keys : Array.from(keys)).length);
  });
  if (listed.some((l) => l !== n)) throw new Error(`a listing missed keys: ${listed.join(",")}`);
  return {
    getNs: get - decode,
    setNs: set - decode,
    churnNs: churn - decode,
    decodeNs: decode,
    listNsPerKey: list / n,
  };
}

function heapPer10k(make: () => Engine): number {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (gc === undefined) throw new Error("run with --expose-gc");
  const used = (): number => {
    for (let i = 0; i < 3; i++) gc();
    const m = process.memoryUsage();
    return m.heapUsed + m.external;
  };
  const before = used();
  const engine = make();
  for (let i = 0; i < 100_000; i++)
    engine.set(`/mem/key/${String(i).padStart(6, "0")}`, Buffer.alloc(64, 0x76));
  const after = used();
  if (engine.size !== 100_000) throw new Error("lost keys");
  return (after - before) / 10;
}

async function child(variant: Variant, n: number): Promise<void> {
  const make = await makeEngine(variant);
  const result: Record<string, number> = { heapPer10kBytes: heapPer10k(make) };
  // The store benchmark's "store's own work per request" (keys /k, /n, in an engine of two keys), and
  // with 40-byte keys in an engine holding 10k keys (a sharded table).
  const big = make();
  for (let i = 0; i < 10_000; i++) big.set(keyOf(i), VALUE);
  for (const [engine, suffix, label] of [
    [make(), "", ""],
    [big, "/rdzv/bench-run-3/r3/slot/123456/hb", "@40B,10k"],
  ] as const) {
    const work = storeWorkPerRequest(200_000, engine, suffix);
    result[`workGetUs${label}`] = work.get;
    result[`workAddUs${label}`] = work.add;
  }
  Object.assign(result, await growth(make, n));
  for (const size of [10_000, 1_000_000]) {
    for (const [k, v] of Object.entries(throughput(make, size))) result[`${k}@${size}`] = v;
  }
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

function runChild(variant: Variant, n: number): Promise<Record<string, number>> {
  const self = fileURLToPath(import.meta.url);
  const proc = spawn(
    process.execPath,
    ["--expose-gc", "--max-old-space-size=8192", self, "--child", JSON.stringify(variant), String(n)],
    { stdio: ["ignore", "pipe", "inherit"] },
  );
  let out = "";
  proc.stdout.on("data", (d: Buffer) => {
    out += d.toString();
  });
  return new Promise((resolve, reject) => {
    proc.on("exit", (code) => {
      if (code !== 0) reject(new Error(`${variant.label}: exit ${code}`));
      else resolve(JSON.parse(out) as Record<string, number>);
    });
  });
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  if (argv[0] === "--child") return child(JSON.parse(argv[1]!) as Variant, Number(argv[2]));
  const args = parseArgs(argv);
  const runs = new Map<string, Record<string, number>[]>();
  for (let rep = 0; rep < args.reps; rep++) {
    for (const v of args.variants) {
      const r = await runChild(v, args.keys);
      process.stderr.write(`rep ${rep + 1} ${v.label}: ${JSON.stringify(r)}\n`);
      runs.set(v.label, [...(runs.get(v.label) ?? []), r]);
    }
  }
  const labels = args.variants.map((v) => v.label);
  const metrics = Object.keys(runs.get(labels[0]!)![0]!);
  console.log(
    `${args.keys.toLocaleString("en-US")} keys, medians of ${args.reps} runs per variant, alternated`,
  );
  console.log(`| metric | ${labels.join(" | ")} |\n| --- |${labels.map(() => " ---: |").join("")}`);
  for (const m of metrics) {
    const cells = labels.map((l) => median(runs.get(l)!.map((r) => r[m]!)));
    console.log(
      `| ${m} | ${cells.map((c) => (Math.abs(c) >= 100 ? c.toFixed(0) : c.toFixed(2))).join(" | ")} |`,
    );
  }
}

await main();
