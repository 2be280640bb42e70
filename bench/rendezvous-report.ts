/**
 * Tables of bench/rendezvous.ts, and its "## Rendezvous" section of bench/RESULTS.md (the rest of the file
 * belongs to other benchmarks and is kept as it is).
 */

import { execFileSync } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { cpus } from "node:os";
import { join } from "node:path";
import type { Args } from "./rendezvous.js";
import { REPO_ROOT } from "./rendezvous-procs.js";
import type { OurRun, RecoveryRun, TorchRun } from "./rendezvous-runs.js";
import { median } from "./stats.js";

export interface ReportInput {
  args: Args;
  argv: string[];
  ours: Map<number, OurRun[]>;
  recovery: RecoveryRun[];
  torch: Map<string, { python: string; runs: Map<number, TorchRun[]> }>;
  totalS: number;
  /** 1-minute load averages at the start and the end of the run (the machine may be shared). */
  load: { start: number; end: number };
}

/** Default file of `writeSection`. */
export const RESULTS_FILE = join(REPO_ROOT, "bench", "RESULTS.md");
const HEADING = "## Rendezvous";
const TARGETS_MS = new Map([
  [1000, 1000],
  [10_000, 5000],
]);
const RECOVERY_TARGET_MS = 2000;

const ms = (x: number): string => (Number.isFinite(x) ? (x >= 100 ? x.toFixed(0) : x.toFixed(1)) : "—");
const secs = (x: number): string => (x >= 10_000 ? `${(x / 1000).toFixed(1)} s` : `${ms(x)} ms`);

/** The commit measured, and whether src/ had uncommitted changes. */
function revision(): string {
  try {
    const git = (...a: string[]): string =>
      execFileSync("git", ["-C", REPO_ROOT, ...a], { encoding: "utf8" }).trim();
    const dirty = git("status", "--porcelain", "src") === "" ? "" : " with uncommitted changes in src/";
    return `commit ${git("rev-parse", "--short", "HEAD")}${dirty}`;
  } catch {
    return "unknown commit";
  }
}

function torchVersion(python: string): string {
  try {
    const out = execFileSync(python, ["-c", "import importlib.metadata as m; print(m.version('torch'))"], {
      encoding: "utf8",
    });
    return out.trim();
  } catch {
    return "?";
  }
}

function torchLabel(version: string): string {
  return version === "1" ? "PyTorch 1.13" : "PyTorch 2.x";
}

/** A PyTorch cell and its ratio to `oursMs` for size `n`. */
function torchCells(
  runs: Map<number, TorchRun[]> | undefined,
  n: number,
  oursMs: number,
  timeoutS: number,
): string[] {
  const list = runs?.get(n);
  if (list === undefined || list.length === 0) return ["not run", "—"];
  const done = list.filter((r) => r.elapsedMs !== undefined).map((r) => r.elapsedMs!);
  if (done.length < list.length)
    return [
      `> ${timeoutS} s (timed out)`,
      Number.isFinite(oursMs) ? `> ${((timeoutS * 1000) / oursMs).toFixed(0)}×` : "—",
    ];
  const m = median(done);
  const suffix = list.length > 1 ? ` (${list.length} runs)` : "";
  return [`${secs(m)}${suffix}`, Number.isFinite(oursMs) ? `${(m / oursMs).toFixed(1)}×` : "—"];
}

function scaleTable(input: ReportInput): string[] {
  const versions = [...input.torch.keys()];
  const head = ["N", "rdzv median", "rdzv runs (ms)", "first node", "target", "peak server conns"];
  for (const v of versions) head.push(torchLabel(v), "ratio");
  const sizes = [
    ...new Set([...input.ours.keys(), ...[...input.torch.values()].flatMap((t) => [...t.runs.keys()])]),
  ].sort((a, b) => a - b);
  const rows = sizes.map((n) => {
    const runs = input.ours.get(n) ?? [];
    const ok = runs.filter((r) => r.problem === undefined);
    const m = median(ok.map((r) => r.elapsedMs));
    const target = TARGETS_MS.get(n);
    const targetCell = target === undefined ? "—" : `< ${secs(target)} ${m < target ? "met" : "**missed**"}`;
    const runCells = runs.map((r) => (r.problem === undefined ? ms(r.elapsedMs) : "failed")).join(", ");
    const row = [
      String(n),
      runs.length === 0 ? "not run" : ok.length === 0 ? "**failed**" : `**${secs(m)}**`,
      runCells || "—",
      ms(median(ok.map((r) => r.firstMs))),
      targetCell,
      runs.length === 0 ? "—" : String(Math.max(...runs.map((r) => r.peakConnections))),
    ];
    for (const v of versions)
      row.push(...torchCells(input.torch.get(v)?.runs, n, m, input.args.torchTimeoutS));
    return row;
  });
  return table(head, rows);
}

function table(head: string[], rows: string[][]): string[] {
  return [
    `| ${head.join(" | ")} |`,
    `| ${head.map(() => "---").join(" | ")} |`,
    ...rows.map((r) => `| ${r.join(" | ")} |`),
  ];
}

function problems(input: ReportInput): string[] {
  const out: string[] = [];
  for (const [n, runs] of input.ours) {
    for (const [i, r] of runs.entries())
      if (r.problem !== undefined) out.push(`- rdzv N=${n} run ${i + 1}: ${r.problem}`);
  }
  for (const [i, r] of input.recovery.entries())
    if (r.problem !== undefined) out.push(`- recovery run ${i + 1}: ${r.problem}`);
  for (const [v, t] of input.torch) {
    for (const [n, runs] of t.runs) {
      for (const r of runs) if (r.problem !== undefined) out.push(`- ${torchLabel(v)} N=${n}: ${r.problem}`);
    }
  }
  return out;
}

/** The section's body (without the heading). */
export async function render(input: ReportInput): Promise<string> {
  const cpu = cpus()[0]?.model ?? "?";
  const versions = [...input.torch.entries()].map(
    ([v, t]) => `${torchLabel(v)}: ${torchVersion(t.python)} (${t.python})`,
  );
  const rec = input.recovery.filter((r) => r.problem === undefined);
  const recM = median(rec.map((r) => r.elapsedMs));
  const lines = [
    `Run ${new Date().toISOString().slice(0, 10)} (${revision()}) on ${cpus().length} CPUs (${cpu}), Node ${process.version}` +
      `${versions.length > 0 ? `; ${versions.join("; ")}` : ""}; all processes on one machine, loopback.`,
    "",
    "```",
    "npm run build",
    `node dist/bench/rendezvous.js ${input.argv.join(" ")}`.trimEnd(),
    "```",
    "",
    `Whole run: ${input.totalS.toFixed(0)} s. Backend: \`${input.args.backend}\`. Load average (1 min) of the machine: ${input.load.start.toFixed(2)} at the start, ${input.load.end.toFixed(2)} at the end (other work shared its 2 CPUs; figures are medians of several runs for that reason).`,
    "",
    "### Time to a complete round (min = max = N)",
    "",
    `From one start signal to the last of N nodes returning from \`nextRendezvous()\`. rdzv: N handlers over ${input.args.workers} node processes, each handler with its own TCPStore client, rdzv's server in its own process; the stores connect before the signal. PyTorch: \`create_handler\` + \`C10dRendezvousBackend\` over PyTorch's own TCPStore server, N handlers as threads of 4 processes, each with its own TCPStore client. Ratio = PyTorch / rdzv.`,
    "",
    ...scaleTable(input),
    "",
    "### Recovery after a node is killed",
    "",
    "100 nodes (min 50, max 100, other settings default: keep-alive 5 s, last call 30 s) complete round 0; one node, alone in its process, is SIGKILLed; the 99 survivors wait in `waitForRoundEnd()` and then call `nextRendezvous()`. Time from the kill until all 99 returned (round 1, world size 99).",
    "",
    ...table(
      ["runs", "median", "all runs (ms)", "loss seen by all (median)", "target"],
      [
        [
          String(input.recovery.length),
          rec.length === 0 ? "**failed**" : `**${secs(recM)}**`,
          input.recovery.map((r) => (r.problem === undefined ? ms(r.elapsedMs) : "failed")).join(", ") || "—",
          `${ms(median(rec.map((r) => r.detectMs)))} ms`,
          `< ${secs(RECOVERY_TARGET_MS)} ${recM < RECOVERY_TARGET_MS ? "met" : "**missed**"}`,
        ],
      ],
    ),
  ];
  const issues = problems(input);
  if (issues.length > 0) lines.push("", "### Problems", "", ...issues);
  return `${lines.join("\n")}\n`;
}

export async function printTables(input: ReportInput): Promise<string> {
  return `${HEADING}\n\n${await render(input)}`;
}

/** Replaces (or appends) the "## Rendezvous" section of bench/RESULTS.md, re-reading the file first. */
export async function writeSection(input: ReportInput, file = RESULTS_FILE): Promise<void> {
  replaceSection(HEADING, await render(input), file);
}

/**
 * Replaces (or appends) section `heading` ("## Name") of `file` with `body`, re-reading the file first and
 * keeping every other section as it is.
 */
export function replaceSection(heading: string, sectionBody: string, file = RESULTS_FILE): void {
  const body = `${heading}\n\n${sectionBody}`;
  const text = existsSync(file)
    ? readFileSync(file, "utf8")
    : "# Benchmark results\n\n## Store throughput\n\nNot run yet: `npm run build && node dist/bench/store-throughput.js --write`.\n";
  const start = text.indexOf(`\n${heading}\n`);
  let next: string;
  if (start < 0) {
    next = `${text.trimEnd()}\n\n${body}`;
  } else {
    const after = text.indexOf("\n## ", start + heading.length + 1);
    next = `${text.slice(0, start + 1)}${body}${after < 0 ? "" : `\n${text.slice(after + 1)}`}`;
  }
  writeFileSync(file, next);
}
