/**
 * Worker of bench/launcher.ts, started by `rdzv run`. On start it writes `start-<restart>-<rank>` (its
 * `Date.now()`) into $BENCH_DIR, then waits: when `stop` appears there it exits 0; when `crash` appears,
 * rank 0 of the first attempt writes `crashed` (its `Date.now()`) and exits 1, the others keep waiting
 * (the agent stops and restarts them). Waiting uses fs.watch, so idle workers cost no CPU.
 */

import { existsSync, watch, writeFileSync } from "node:fs";
import { join } from "node:path";

const dir = process.env.BENCH_DIR;
if (dir === undefined)
  throw new Error("BENCH_DIR is not set: bench/launcher-worker.js runs under bench/launcher.js");
const rank = Number(process.env.RANK);
const restart = Number(process.env.TORCHELASTIC_RESTART_COUNT ?? 0);
writeFileSync(join(dir, `start-${restart}-${rank}`), String(Date.now()));

function react(): void {
  if (existsSync(join(dir!, "stop"))) process.exit(0);
  if (rank === 0 && restart === 0 && existsSync(join(dir!, "crash"))) {
    writeFileSync(join(dir!, "crashed"), String(Date.now()));
    process.exit(1);
  }
}

const watcher = watch(dir, () => react());
react();
process.on("SIGTERM", () => {
  watcher.close();
  process.exit(0);
});
