/**
 * What the dashboard's run list (`GET /api/runs`, and each live push of it) costs as the store fills
 * with keys that are not rendezvous keys (workers' keys, PyTorch's keys of training jobs).
 *
 *   node dist/bench/run-list.js [--reps 15] [--runs 1000] [--extra 300000]
 *
 * An in-process `KvEngine` with `--runs` runs (rdzv's layout, four nodes each, one of them gone, and a
 * PyTorch state key for every tenth), then, for 0 and `--extra` other keys (written before the dashboard
 * starts, as a journal restore would), the median time of `GET /api/runs` through the dashboard's handler
 * (no socket) over `--reps` requests, and the time to start the dashboard over that store.
 */

import { encodeOutcome } from "../src/rendezvous/round.js";
import { createDashboardApp } from "../src/server/dashboard-app.js";
import { KvEngine } from "../src/store/kv-engine.js";
import { intFlag } from "./args.js";
import { upperMedian } from "./stats.js";

const REPS = intFlag("--reps", 15);
const RUNS = intFlag("--runs", 1000);
const EXTRA = intFlag("--extra", 300_000, 0);

function fill(engine: KvEngine, extra: number): void {
  const set = (key: string, value: string) => engine.set(`/${key}`, Buffer.from(value));
  for (let r = 0; r < RUNS; r++) {
    const run = `rdzv/job${r}`;
    set(`${run}/open`, "1");
    set(`${run}/r0/tickets`, "4");
    set(`${run}/r0/outcome`, encodeOutcome({ kind: "complete", round: 0, span: 4, excluded: [] }));
    for (let s = 0; s < 4; s++) {
      set(`${run}/r0/node/${s}`, JSON.stringify({ id: `n${s}`, addr: `10.0.0.${s}`, pid: 1000 + s }));
      set(`${run}/r0/hb/${s}`, "7");
    }
    set(`${run}/r0/gone/3`, "left");
    if (r % 10 === 0) set(`torch.rendezvous.tjob${r}`, "~");
  }
  // Workers' keys, PyTorch's process-group keys, and rounds' own stores under the run's prefix.
  for (let i = 0; i < extra; i++) {
    if (i % 3 === 0) set(`worker/${i}/status`, "running");
    else if (i % 3 === 1) set(`default_pg/${i}//cuda//0`, "x".repeat(32));
    else set(`rdzv/job${i % RUNS}/r0/store/key${i}`, "v");
  }
}

async function measure(extra: number): Promise<{ startMs: number; listMs: number; keys: number }> {
  const engine = new KvEngine();
  fill(engine, extra);
  const started = performance.now();
  const app = createDashboardApp({ engine, processMetrics: false });
  const startMs = performance.now() - started;
  const times: number[] = [];
  try {
    for (let i = 0; i < REPS; i++) {
      const t = performance.now();
      const res = await app.fetch(new Request("http://dashboard/api/runs"));
      const body = (await res.json()) as { total: number };
      times.push(performance.now() - t);
      if (body.total !== RUNS + Math.ceil(RUNS / 10)) throw new Error(`listed ${body.total} runs`);
    }
  } finally {
    app.close();
  }
  return { startMs, listMs: upperMedian(times), keys: engine.size };
}

for (const extra of [0, EXTRA]) {
  const { startMs, listMs, keys } = await measure(extra);
  process.stdout.write(
    `${keys} keys (${extra} not run keys): GET /api/runs median ${listMs.toFixed(1)} ms of ${REPS}; ` +
      `dashboard start ${startMs.toFixed(1)} ms\n`,
  );
}
