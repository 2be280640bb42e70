/**
 * Worker of bench/launcher.ts, started by `rdzv run`. On start it writes `start-<restart>-<rank>` (its
 * `Date.now()`) into $BENCH_DIR, then waits: when `stop` appears there it exits 0; when `crash` appears,
 * rank 0 of the first attempt writes `crashed` (its `Date.now()`) and exits 1, the others keep waiting
 * (the agent stops and restarts them). It looks every 20 ms (a stat call): fs.watch would take one of the
 * 128 inotify instances this machine allows per user, which many busy processes share. The times
 * measured are the ones written, so the polling delay is not in them.
 */

import { existsSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const dir = process.env.BENCH_DIR;
if (dir === undefined)
  throw new Error("BENCH_DIR is not set: bench/launcher-worker.js runs under bench/launcher.js");
const rank = Number(process.env.RANK);
const restart = Number(process.env.TORCHELASTIC_RESTART_COUNT ?? 0);
/** Writes `name` whole or not at all (a reader never sees it empty). */
function publish(name: string, value: string): void {
  writeFileSync(join(dir!, `.${name}`), value);
  renameSync(join(dir!, `.${name}`), join(dir!, name));
}

publish(`start-${restart}-${rank}`, String(Date.now()));

function react(): void {
  if (existsSync(join(dir!, "stop"))) process.exit(0);
  if (rank === 0 && restart === 0 && existsSync(join(dir!, "crash"))) {
    publish("crashed", String(Date.now()));
    process.exit(1);
  }
}

setInterval(react, 20);
react();
process.on("SIGTERM", () => process.exit(0));
