/**
 * What run retention (`rdzv serve --run-ttl`, src/server/run-retention.ts) costs the store.
 *
 *   node dist/bench/run-retention.js [--writes 1000000] [--runs 10000] [--extra 300000]
 *
 * 1. The write path: `--writes` keep-alives (an ADD of an rdzv slot's `hb` key) and as many writes of a
 *    key of no run, on an in-process `KvEngine`, without and with retention following its changes (ns per
 *    write, median of 5).
 * 2. A sweep: `--runs` idle runs (rdzv's layout, four nodes, a round store and launcher keys: 20 keys
 *    each) among `--extra` keys of no run; the time to attach (one pass over every key, as after a
 *    restart), the sweep's time, and the longest the event loop was held between two of its turns.
 */

import { startRunRetention } from "../src/server/run-retention.js";
import { KvEngine } from "../src/store/kv-engine.js";
import { intFlag } from "./args.js";
import { upperMedian } from "./stats.js";

const WRITES = intFlag("--writes", 1_000_000);
const RUNS = intFlag("--runs", 10_000);
const EXTRA = intFlag("--extra", 300_000, 0);

function nsPerWrite(retention: boolean, key: string): number {
  const engine = new KvEngine();
  const r = retention ? startRunRetention(engine, { ttlMs: 3_600_000 }) : undefined;
  engine.add("/rdzv/job/open", 0n);
  const start = process.hrtime.bigint();
  for (let i = 0; i < WRITES; i++) engine.add(key, 1n);
  const ns = Number(process.hrtime.bigint() - start) / WRITES;
  r?.close();
  return ns;
}

function fill(engine: KvEngine): void {
  const set = (key: string, value: string) => engine.set(`/${key}`, Buffer.from(value));
  for (let r = 0; r < RUNS; r++) {
    const run = `rdzv/job${r}`;
    for (const p of ["open", "closed", "r0/tickets", "r0/outcome", "r0/lead", "r0/ended"])
      set(`${run}/${p}`, "1");
    for (let s = 0; s < 4; s++) for (const k of ["node", "hb", "gone"]) set(`${run}/r0/${k}/${s}`, "1");
    for (const p of ["r0/store/MASTER_ADDR", "launcher/restarts"]) set(`${run}/${p}`, "1");
  }
  for (let i = 0; i < EXTRA; i++) set(`worker/${i % 64}/key${i}`, "x");
}

async function sweep(): Promise<void> {
  const engine = new KvEngine();
  fill(engine);
  const keys = engine.size;
  let clock = 0;
  const t0 = performance.now();
  const retention = startRunRetention(engine, { ttlMs: 1000, sweepIntervalMs: 3_600_000, now: () => clock });
  const attachMs = performance.now() - t0;
  clock = 2000;
  let longest = 0;
  let last = performance.now();
  let turning = true;
  const tick = (): void => {
    const now = performance.now();
    longest = Math.max(longest, now - last);
    last = now;
    if (turning) setImmediate(tick);
  };
  setImmediate(tick);
  const t1 = performance.now();
  last = t1;
  const gone = await retention.sweep();
  const sweepMs = performance.now() - t1;
  turning = false;
  retention.close();
  console.log(
    `sweep: ${keys} keys, ${RUNS} idle runs: attach ${attachMs.toFixed(0)} ms; sweep ${sweepMs.toFixed(0)} ms, ` +
      `${gone.length} runs and ${keys - engine.size} keys deleted, event loop held at most ${longest.toFixed(1)} ms`,
  );
}

const rows: [string, string][] = [
  ["keep-alive (rdzv/job/r0/hb/3)", "/rdzv/job/r0/hb/3"],
  ["key of no run (worker/3/x)", "/worker/3/x"],
];
for (const [label, key] of rows) {
  const without: number[] = [];
  const withR: number[] = [];
  for (let i = 0; i < 5; i++) {
    without.push(nsPerWrite(false, key));
    withR.push(nsPerWrite(true, key));
  }
  console.log(
    `${label}: ${upperMedian(without).toFixed(0)} ns per ADD without retention, ${upperMedian(withR).toFixed(0)} ns with`,
  );
}
await sweep();
