/**
 * Rendezvous scale benchmark: rdzv's dynamic rendezvous against PyTorch's own handler, on one machine.
 *
 *   node dist/bench/rendezvous.js [--backend c10d] [--sizes 64,256,1000,10000] [--reps 5] [--big-reps 3] [--workers 4]
 *                                 [--torch-sizes 64,128,256] [--torch-timeout 120] [--torch 2,1|none]
 *                                 [--recovery-reps 5] [--timeout 120] [--cpu-prof DIR] [--write] [--results FILE]
 *
 * 1. Scale: N nodes (min = max = N), spread over `--workers` node processes, each handler with a TCPStore
 *    client of its own, against rdzv's server in a process of its own. Every store connects first; then one
 *    IPC message starts every `nextRendezvous()` at once; the time is from that signal until the last node
 *    returned (`Date.now()` across processes). Median of `--reps` runs (`--big-reps` for N >= 10,000).
 * 2. Recovery: 100 nodes (min 50, max 100, other settings default) complete a round; one node, alone in its
 *    process, is SIGKILLed; the 99 survivors learn it from `waitForRoundEnd()` and re-join. Time from the
 *    kill until all 99 returned from `nextRendezvous()`.
 * 3. PyTorch: `DynamicRendezvousHandler` (create_handler) over `C10dRendezvousBackend` over PyTorch's own
 *    TCPStore server, N nodes as threads of 4 processes, each with its own TCPStore client; same start
 *    signal (a stdin line). Runs that do not finish within `--torch-timeout` s are reported as timed out.
 *
 * `--write` replaces the "## Rendezvous" section of bench/RESULTS.md (or of `--results FILE`). `--cpu-prof DIR` profiles rdzv's
 * server and node processes (one .cpuprofile per process).
 */

import { existsSync } from "node:fs";
import { loadavg } from "node:os";
import { join } from "node:path";
import { benchBackend } from "./rendezvous-backends.js";
import { REPO_ROOT } from "./rendezvous-procs.js";
import { printTables, type ReportInput, writeSection } from "./rendezvous-report.js";
import {
  type OurRun,
  type RecoveryRun,
  type RunOptions,
  runOurs,
  runRecovery,
  runTorch,
  type TorchRun,
} from "./rendezvous-runs.js";

export interface Args {
  backend: string;
  sizes: number[];
  reps: number;
  bigReps: number;
  workers: number;
  torchSizes: number[];
  torchTimeoutS: number;
  torchVersions: string[];
  recoveryReps: number;
  timeoutS: number;
  cpuProf: string | undefined;
  write: boolean;
  results: string | undefined;
}

function parseArgs(argv: readonly string[]): Args {
  const raw = (name: string): string | undefined => {
    const i = argv.indexOf(name);
    return i < 0 ? undefined : argv[i + 1];
  };
  const num = (name: string, fallback: number): number => {
    const v = raw(name);
    const n = v === undefined ? fallback : Number(v);
    if (!Number.isFinite(n) || n < 0) throw new Error(`${name} must be a non-negative number, got ${v}`);
    return n;
  };
  const list = (name: string, fallback: string): number[] => {
    const v = raw(name) ?? fallback;
    return v === "" || v === "none" ? [] : v.split(",").map(Number);
  };
  const torch = raw("--torch") ?? "2,1";
  return {
    backend: raw("--backend") ?? "c10d",
    sizes: list("--sizes", "64,256,1000,10000"),
    reps: num("--reps", 5),
    bigReps: num("--big-reps", 3),
    workers: num("--workers", 4),
    torchSizes: list("--torch-sizes", "64,128,256"),
    torchTimeoutS: num("--torch-timeout", 120),
    torchVersions: torch === "none" ? [] : torch.split(","),
    recoveryReps: num("--recovery-reps", 5),
    timeoutS: num("--timeout", 120),
    cpuProf: raw("--cpu-prof"),
    write: argv.includes("--write"),
    results: raw("--results"),
  };
}

/** Interpreters with torch: "1" = Debian's PyTorch 1.13, "2" = a 2.x venv. */
function torchPython(version: string): string | undefined {
  const candidates =
    version === "1"
      ? ["/usr/bin/python3"]
      : [
          process.env.RDZV_TORCH2_PYTHON ?? "",
          join(REPO_ROOT, ".venv-torch/bin/python"),
          "/tmp/venv-torch/bin/python",
        ];
  return candidates.find((p) => p !== "" && existsSync(p));
}

const log = (line: string): void => {
  process.stderr.write(`${line}\n`);
};

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  benchBackend(args.backend);
  const opts: RunOptions = {
    backend: args.backend,
    workers: args.workers,
    cpuProfDir: args.cpuProf,
    timeoutMs: args.timeoutS * 1000,
    connectConcurrency: 256,
  };
  const started = Date.now();
  const loadStart = loadavg()[0]!;
  const ours = new Map<number, OurRun[]>();
  for (const n of args.sizes) {
    const runs: OurRun[] = [];
    for (let rep = 0; rep < (n >= 10_000 ? args.bigReps : args.reps); rep++) {
      const run = await runOurs(n, rep, opts);
      log(
        `rdzv N=${n} rep ${rep}: ${run.elapsedMs} ms (first ${run.firstMs} ms, last ticket ${run.lastTicketMs} ms, decided ${run.decidedMs} ms, ${run.requestsPerNode.toFixed(1)} requests/node, connect ${run.connectMs} ms, peak ${run.peakConnections} conns, ${run.listenOverflows} listen overflows, ${run.synRetrans} SYN retransmits)${run.problem === undefined ? "" : ` PROBLEM ${run.problem}`}`,
      );
      runs.push(run);
    }
    ours.set(n, runs);
  }
  const recovery: RecoveryRun[] = [];
  for (let rep = 0; rep < args.recoveryReps; rep++) {
    const run = await runRecovery(100, 50, rep, opts);
    log(
      `rdzv recovery rep ${rep}: ${run.elapsedMs} ms (detect ${run.detectMs} ms)${run.problem === undefined ? "" : ` PROBLEM ${run.problem}`}`,
    );
    recovery.push(run);
  }
  const torch = new Map<string, { python: string; runs: Map<number, TorchRun[]> }>();
  for (const version of args.torchVersions) {
    const python = torchPython(version);
    if (python === undefined) {
      log(`no PyTorch ${version}.x interpreter found; skipped`);
      continue;
    }
    const runs = new Map<number, TorchRun[]>();
    for (const n of args.torchSizes) {
      const run = await runTorch(python, n, 0, 4, args.torchTimeoutS);
      log(
        `torch ${version} N=${n}: ${run.elapsedMs ?? "timeout"} ms${run.problem === undefined ? "" : ` (${run.problem})`}`,
      );
      runs.set(n, [run]);
    }
    torch.set(version, { python, runs });
  }
  const input: ReportInput = {
    args,
    ours,
    recovery,
    torch,
    totalS: (Date.now() - started) / 1000,
    load: { start: loadStart, end: loadavg()[0]! },
    argv: process.argv.slice(2),
  };
  process.stdout.write(await printTables(input));
  if (args.write) await writeSection(input, args.results);
}

await main();
