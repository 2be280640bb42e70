/**
 * The launcher's decisions, as pure functions: how a worker group stands given its workers' exits, what a
 * failure leads to under the job-wide restart budget, the failure summary and the agent's exit code.
 * Mirrors torchrun's `SimpleElasticAgent._invoke_run` except that restarts are counted for the whole job
 * (pytorch/pytorch#108158), not per node.
 */

import { constants } from "node:os";
import { boundWorkerError, firstLine, formatTimestamp, type WorkerError } from "./error-file.js";

/** How one worker process ended. */
export interface WorkerExit {
  readonly localRank: number;
  readonly rank: number;
  readonly pid: number | undefined;
  /** Exit status, `null` when killed by a signal or never started. */
  readonly exitCode: number | null;
  /** Signal name (`SIGKILL`), `null` when it exited on its own. */
  readonly signal: string | null;
  /** The agent stopped it (restart, shutdown): not a failure of the worker. */
  readonly stoppedByAgent: boolean;
  /** Why it could not be started (e.g. `spawn foo ENOENT`); `exitCode` is then 127. */
  readonly spawnError?: string;
  /** When the agent saw it end (`Date.now()`). */
  readonly exitedAtMs: number;
}

/** Where a worker group stands: torchrun's `WorkerState` reduced to what the agent branches on. */
export type GroupState =
  | { readonly kind: "running" }
  | { readonly kind: "succeeded" }
  | { readonly kind: "failed"; readonly first: WorkerExit };

/** True when `exit` is a failure: a non-zero status or a signal the agent did not send. */
export function isFailure(exit: WorkerExit): boolean {
  return !exit.stoppedByAgent && (exit.exitCode !== 0 || exit.signal !== null);
}

/**
 * The group's state from its workers' exits, in the order they happened: failed as soon as one worker
 * failed (the first failure is the one to report), succeeded once all `size` exited 0, running otherwise.
 */
export function groupState(size: number, exits: readonly WorkerExit[]): GroupState {
  const first = exits.find(isFailure);
  if (first !== undefined) return { kind: "failed", first };
  const done = new Set(exits.filter((e) => e.exitCode === 0 && !e.stoppedByAgent).map((e) => e.localRank));
  return done.size >= size ? { kind: "succeeded" } : { kind: "running" };
}

/** A worker that ended badly, with what its error file said. */
export interface ObservedFailure {
  readonly exit: WorkerExit;
  /** Its error file's error, when it wrote a usable one. */
  readonly error?: WorkerError;
  /** Why its error file was not used, or what in it was ignored. */
  readonly errorFileNote?: string;
}

/**
 * The root cause among `failures` (in the order they exited), as torchrun's
 * `ChildFailedError.get_first_failure` picks it: the earliest time, where a worker's time is its error
 * file's timestamp (whole seconds) and, without one, when it was seen to exit (rounded down to seconds, as
 * torchrun stamps a failure without error file when it polls it). Ties go to the one that exited first.
 * A worker that wrote its error just before it failed thus wins over one that failed because of it (say, a
 * peer whose collective broke), even when that one's exit was seen first. `undefined` when empty.
 */
export function rootCause<F extends ObservedFailure>(failures: readonly F[]): F | undefined {
  const time = (f: F): number => f.error?.timestamp ?? Math.floor(f.exit.exitedAtMs / 1000);
  let best: F | undefined;
  for (const f of failures) if (best === undefined || time(f) < time(best)) best = f;
  return best;
}

/**
 * The worker's exit status as torchrun's `ProcessFailure.exitcode` (a `Popen` return code): the exit code,
 * or minus the signal number.
 */
export function exitStatus(exit: Pick<WorkerExit, "exitCode" | "signal">): number {
  if (exit.exitCode !== null) return exit.exitCode;
  const n = exit.signal === null ? undefined : constants.signals[exit.signal as NodeJS.Signals];
  return n === undefined ? 1 : -n;
}

/** Result of claiming a failure of a round (see `LauncherStore.claimFailure`). */
export interface FailureClaim {
  /** This agent counted the failure; false when another agent of the round already did. */
  readonly won: boolean;
  /** The job-wide restart count after the claim (meaningful when `won`). */
  readonly restarts: number;
}

/** What an agent does after its workers failed. */
export type FailureDecision =
  /** Re-rendezvous and restart; the job has used `restarts` of its budget. */
  | { readonly kind: "restart"; readonly restarts: number }
  /** The budget is spent: record the failure, close the rendezvous, exit non-zero. */
  | { readonly kind: "give-up"; readonly restarts: number }
  /** Another agent counted this round's failure and decides for the job: just re-rendezvous. */
  | { readonly kind: "follow" };

/**
 * Decides after a local failure. Exactly one agent per round wins the claim, so N agents failing together
 * spend one restart; the winner gives up when the count exceeds `maxRestarts` (0 means no restart, as
 * torchrun's default).
 */
export function decideAfterFailure(claim: FailureClaim, maxRestarts: number): FailureDecision {
  if (!claim.won) return { kind: "follow" };
  return claim.restarts > maxRestarts
    ? { kind: "give-up", restarts: claim.restarts }
    : { kind: "restart", restarts: claim.restarts };
}

/** Everything the job's failure report says: which worker, how it ended, what it printed last. */
export interface FailureSummary {
  readonly rank: number;
  readonly localRank: number;
  readonly groupRank: number;
  /** The node's advertised address. */
  readonly node: string;
  readonly pid: number | undefined;
  readonly exitCode: number | null;
  readonly signal: string | null;
  readonly spawnError?: string;
  /** Last lines the worker wrote to stderr. */
  readonly stderrTail: readonly string[];
  /** The worker's error from its error file (`TORCHELASTIC_ERROR_FILE`), when it wrote a usable one. */
  readonly error?: WorkerError;
  /** Why its error file was not used (malformed, too big, ...), or what in it was ignored. */
  readonly errorFileNote?: string;
  /** The node's other workers that failed in the same attempt (torchrun's "Failures"), at most 8. */
  readonly otherFailures?: readonly OtherFailure[];
  readonly round: number;
  /** Failure restarts the job made before giving up (the failure count minus the one that gave up). */
  readonly restarts: number;
  readonly maxRestarts: number;
}

/** Another failed worker of the failing node, in short. */
export interface OtherFailure {
  readonly rank: number;
  readonly localRank: number;
  readonly pid: number | undefined;
  readonly exitCode: number | null;
  readonly signal: string | null;
  readonly spawnError?: string;
  /** The first line of its error file's message. */
  readonly message?: string;
}

/** How many other failures a summary lists. */
const MAX_OTHER_FAILURES = 8;

/**
 * The failure summary of a node whose workers failed: `root` is the one reported (see `rootCause`), the
 * rest of `failures` are listed in short. `node`, `groupRank` and the counts come from the agent.
 */
export function summarizeFailure(
  root: ObservedFailure,
  failures: readonly ObservedFailure[],
  stderrTail: readonly string[],
  context: Pick<FailureSummary, "groupRank" | "node" | "round" | "restarts" | "maxRestarts">,
): FailureSummary {
  const e = root.exit;
  const others = failures
    .filter((f) => f !== root)
    .slice(0, MAX_OTHER_FAILURES)
    .map(
      (f): OtherFailure => ({
        rank: f.exit.rank,
        localRank: f.exit.localRank,
        pid: f.exit.pid,
        exitCode: f.exit.exitCode,
        signal: f.exit.signal,
        ...(f.exit.spawnError === undefined ? {} : { spawnError: f.exit.spawnError }),
        ...(f.error === undefined ? {} : { message: firstLine(f.error.message) }),
      }),
    );
  return {
    rank: e.rank,
    localRank: e.localRank,
    groupRank: context.groupRank,
    node: context.node,
    pid: e.pid,
    exitCode: e.exitCode,
    signal: e.signal,
    ...(e.spawnError === undefined ? {} : { spawnError: e.spawnError }),
    stderrTail,
    ...(root.error === undefined ? {} : { error: root.error }),
    ...(root.errorFileNote === undefined ? {} : { errorFileNote: root.errorFileNote }),
    ...(others.length === 0 ? {} : { otherFailures: others }),
    round: context.round,
    restarts: context.restarts,
    maxRestarts: context.maxRestarts,
  };
}

/**
 * `summary` as recorded in the store for the other nodes: the error's message and traceback cut to
 * `RECORD_LIMITS` (in the middle, with a line saying so), so that a huge traceback never makes the record
 * too big for a store value (etcd takes 1.5 MiB by default). The local report keeps them whole.
 */
export function boundForStore(summary: FailureSummary): FailureSummary {
  if (summary.error === undefined) return summary;
  return { ...summary, error: boundWorkerError(summary.error, `the report of node ${summary.node}`) };
}

/** "exit code 7", "signal SIGKILL", or the spawn error. */
export function describeExit(exit: Pick<WorkerExit, "exitCode" | "signal" | "spawnError">): string {
  if (exit.spawnError !== undefined) return `could not start: ${exit.spawnError}`;
  if (exit.signal !== null) return `killed by signal ${exit.signal}`;
  return `exit code ${exit.exitCode ?? "unknown"}`;
}

/**
 * The multi-line failure report an agent prints when the job fails. With an error from the worker's error
 * file it shows torchrun's root-cause section (time, error file, traceback) instead of the stderr tail;
 * without one (or with only the plain message form), the stderr tail.
 */
export function formatFailure(summary: FailureSummary): string {
  const s = summary;
  const lines = [
    `job failed after ${s.restarts} restart${s.restarts === 1 ? "" : "s"} (--max-restarts ${s.maxRestarts})`,
    `  first failure: rank ${s.rank} (local rank ${s.localRank} on node ${s.groupRank}, ${s.node}, ` +
      `pid ${s.pid ?? "none"}, round ${s.round}): ${describeExit(s)}`,
  ];
  if (s.error !== undefined) lines.push(...formatError(s.error));
  if (s.errorFileNote !== undefined) lines.push(`    note      : ${s.errorFileNote}`);
  if (s.error?.traceback === undefined) {
    if (s.stderrTail.length === 0) lines.push("  (no stderr output)");
    else lines.push("  last stderr lines:", ...s.stderrTail.map((l) => `    ${l}`));
  }
  if (s.otherFailures !== undefined && s.otherFailures.length > 0) {
    lines.push("  other failures:");
    for (const o of s.otherFailures) {
      const message = o.message === undefined ? "" : `: ${o.message}`;
      lines.push(
        `    rank ${o.rank} (local rank ${o.localRank}, pid ${o.pid ?? "none"}): ${describeExit(o)}${message}`,
      );
    }
  }
  return lines.join("\n");
}

/** torchrun's root-cause fields, aligned as it aligns them; multi-line values indented under the first line. */
function formatError(error: WorkerError): string[] {
  const field = (name: string, value: string): string => `    ${name.padEnd(10)}: ${indent(value.trimEnd())}`;
  const lines = [field("error", error.message)];
  if (error.timestamp !== undefined) lines.push(field("time", formatTimestamp(error.timestamp)));
  lines.push(field("error file", error.file));
  if (error.traceback !== undefined) lines.push(field("traceback", error.traceback));
  return lines;
}

function indent(text: string): string {
  return text.replaceAll("\n", `\n${" ".repeat(16)}`);
}

/** How `rdzv run` ended. */
export type AgentResult =
  | { readonly kind: "succeeded"; readonly round: number; readonly restarts: number }
  /** The job failed; `local` when this node's worker is the one reported. */
  | { readonly kind: "failed"; readonly summary: FailureSummary; readonly local: boolean }
  /**
   * The rendezvous was closed without a recorded failure: by another node (`reason` says why when that
   * node recorded it, see `LauncherStore.recordCloseReason`), or before this node joined a round.
   */
  | { readonly kind: "closed"; readonly reason?: string }
  /** Stopped by a signal (SIGINT/SIGTERM/SIGHUP) or an abort. */
  | { readonly kind: "stopped"; readonly signal: string | undefined };

/** The exit code for a result: 0, 1 for failures and closes, 128 + signal number when stopped by a signal. */
export function exitCodeOf(result: AgentResult): number {
  switch (result.kind) {
    case "succeeded":
      return 0;
    case "failed":
    case "closed":
      return 1;
    case "stopped": {
      const n = result.signal === undefined ? undefined : constants.signals[result.signal as NodeJS.Signals];
      return n === undefined ? 1 : 128 + n;
    }
  }
}
