/**
 * Launcher benchmark: `rdzv run --standalone` on this machine.
 *
 *   node dist/bench/launcher.js [--workers 1,4,16] [--reps 5] [--write] [--results FILE]
 *
 * 1. Start-up: from spawning `rdzv run --standalone --nproc-per-node K -- node launcher-worker.js` until
 *    the last of its K workers is running (each worker writes its `Date.now()` first thing).
 * 2. Recovery: with K workers running, rank 0 exits 1; time from that exit until all K workers of the
 *    next attempt are running (the agent stops the others, re-rendezvous, and restarts the group).
 * Medians of `--reps` runs. `--write` replaces the "## Launcher" section of bench/RESULTS.md.
 */

import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { cpus, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { REPO_ROOT } from "./rendezvous-procs.js";
import { replaceSection } from "./rendezvous-report.js";
import { median } from "./stats.js";

const CLI = join(REPO_ROOT, "dist", "src", "cli", "main.js");
const WORKER = fileURLToPath(new URL("./launcher-worker.js", import.meta.url));
const STEP_TIMEOUT_MS = 60_000;

interface Args {
  workers: number[];
  reps: number;
  write: boolean;
  results: string | undefined;
}

function parseArgs(argv: readonly string[]): Args {
  const raw = (name: string): string | undefined => {
    const i = argv.indexOf(name);
    return i < 0 ? undefined : argv[i + 1];
  };
  const workers = (raw("--workers") ?? "1,4,16").split(",").map(Number);
  const reps = Number(raw("--reps") ?? 5);
  if (workers.some((k) => !Number.isInteger(k) || k < 1))
    throw new Error(`--workers must list positive integers`);
  if (!Number.isInteger(reps) || reps < 1)
    throw new Error(`--reps must be a positive integer, got ${raw("--reps")}`);
  return { workers, reps, write: argv.includes("--write"), results: raw("--results") };
}

/**
 * Resolves once `ready()` holds, checked every 10 ms (the figures are the times the workers wrote, not
 * when this noticed them); rejects after STEP_TIMEOUT_MS or when `rdzv run` exits first.
 */
async function until<T>(ready: () => T | undefined, what: string, child: ChildProcess): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const done = (err: Error | undefined, value?: T): void => {
      clearTimeout(timer);
      clearInterval(poll);
      child.off("exit", onExit);
      if (err === undefined) resolve(value as T);
      else reject(err);
    };
    const check = (): void => {
      const value = ready();
      if (value !== undefined) done(undefined, value);
    };
    const onExit = (code: number | null): void => done(new Error(`rdzv run exited (${code}) before ${what}`));
    const poll = setInterval(check, 10);
    const timer = setTimeout(
      () => done(new Error(`no ${what} within ${STEP_TIMEOUT_MS} ms`)),
      STEP_TIMEOUT_MS,
    );
    child.once("exit", onExit);
    check();
  });
}

/** Latest start time of attempt `restart`, once all `k` workers of it started. */
function allStarted(dir: string, restart: number, k: number): number | undefined {
  const files = readdirSync(dir).filter((f) => f.startsWith(`start-${restart}-`));
  if (files.length < k) return undefined;
  return Math.max(...files.map((f) => Number(readFileSync(join(dir, f), "utf8"))));
}

interface Rep {
  startMs: number;
  recoveryMs: number;
}

async function oneRep(k: number): Promise<Rep> {
  const dir = mkdtempSync(join(tmpdir(), "rdzv-launcher-bench-"));
  const t0 = Date.now();
  const child = spawn(
    process.execPath,
    [
      CLI,
      "run",
      "--standalone",
      "--nproc-per-node",
      String(k),
      "--max-restarts",
      "1",
      "--no-status",
      "--",
      process.execPath,
      WORKER,
    ],
    { env: { ...process.env, BENCH_DIR: dir }, stdio: ["ignore", "ignore", "pipe"] },
  );
  let stderr = "";
  child.stderr!.on("data", (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-600);
  });
  try {
    const started = await until(() => allStarted(dir, 0, k), `${k} workers started`, child);
    writeFileSync(join(dir, "crash"), "");
    const restarted = await until(() => allStarted(dir, 1, k), `${k} workers restarted`, child);
    const crashed = Number(readFileSync(join(dir, "crashed"), "utf8"));
    const exited = once(child, "exit");
    writeFileSync(join(dir, "stop"), "");
    const [code] = (await exited) as [number | null];
    if (code !== 0) throw new Error(`rdzv run exited with ${code} after the workers were stopped`);
    return { startMs: started - t0, recoveryMs: restarted - crashed };
  } catch (err) {
    throw new Error(`${err instanceof Error ? err.message : String(err)}; rdzv run said: ${stderr.trim()}`);
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  }
}

function render(args: Args, results: Map<number, Rep[]>, load: { start: number; end: number }): string {
  const cell = (xs: number[]): string =>
    `**${median(xs).toFixed(0)} ms** (${xs.map((x) => x.toFixed(0)).join(", ")})`;
  const rows = [...results].map(
    ([k, reps]) => `| ${k} | ${cell(reps.map((r) => r.startMs))} | ${cell(reps.map((r) => r.recoveryMs))} |`,
  );
  return [
    `Run ${new Date().toISOString().slice(0, 10)} on ${cpus().length} CPUs (${cpus()[0]?.model ?? "?"}), Node ${process.version}; load average (1 min) ${load.start.toFixed(2)} at the start, ${load.end.toFixed(2)} at the end (other work shared the machine).`,
    "",
    "```",
    "npm run build",
    `node dist/bench/launcher.js ${process.argv.slice(2).join(" ")}`.trimEnd(),
    "```",
    "",
    "Start-up: from spawning `rdzv run --standalone --nproc-per-node K --max-restarts 1 -- node dist/bench/launcher-worker.js` until the last of the K workers is running (each writes `Date.now()` first thing; so Node's own start-up of the launcher and of the workers is included). Recovery: rank 0 exits 1; from its exit until all K workers of the next attempt are running (the agent stops the others with SIGTERM, re-rendezvous, restarts the group). Medians of " +
      `${args.reps} runs (all runs in parentheses).`,
    "",
    "| workers (K) | start-up to all workers running | worker crash to all workers restarted |",
    "| --- | --- | --- |",
    ...rows,
    "",
  ].join("\n");
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const start = loadavg()[0]!;
  const results = new Map<number, Rep[]>();
  const failures: string[] = [];
  for (const k of args.workers) {
    const reps: Rep[] = [];
    for (let i = 0; i < args.reps; i++) {
      try {
        const rep = await oneRep(k);
        process.stderr.write(`K=${k} rep ${i}: start ${rep.startMs} ms, recovery ${rep.recoveryMs} ms\n`);
        reps.push(rep);
      } catch (err) {
        process.stderr.write(`K=${k} rep ${i}: FAILED ${String(err)}\n`);
        failures.push(`K=${k} run ${i + 1}: ${err instanceof Error ? err.message : String(err)}`);
      }
    }
    results.set(k, reps);
  }
  let body = render(args, results, { start, end: loadavg()[0]! });
  if (failures.length > 0)
    body += `\nFailed runs (not in the medians):\n\n${failures.map((f) => `- ${f}`).join("\n")}\n`;
  process.stdout.write(`## Launcher\n\n${body}`);
  if (args.write) replaceSection("## Launcher", body, args.results);
}

await main();
