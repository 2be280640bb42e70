/**
 * The launcher's decisions, as pure functions: how a worker group stands given its workers' exits, what a
 * failure leads to under the job-wide restart budget, the failure summary and the agent's exit code.
 * Mirrors torchrun's `SimpleElasticAgent._invoke_run` except that restarts are counted for the whole job
 * (pytorch/pytorch#108158), not per node.
 */

import { constants } from "node:os";

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
  readonly round: number;
  /** Failure restarts the job made before giving up (the failure count minus the one that gave up). */
  readonly restarts: number;
  readonly maxRestarts: number;
}

/** "exit code 7", "signal SIGKILL", or the spawn error. */
export function describeExit(exit: Pick<WorkerExit, "exitCode" | "signal" | "spawnError">): string {
  if (exit.spawnError !== undefined) return `could not start: ${exit.spawnError}`;
  if (exit.signal !== null) return `killed by signal ${exit.signal}`;
  return `exit code ${exit.exitCode ?? "unknown"}`;
}

/** The multi-line failure report an agent prints when the job fails. */
export function formatFailure(summary: FailureSummary): string {
  const s = summary;
  const lines = [
    `job failed after ${s.restarts} restart${s.restarts === 1 ? "" : "s"} (--max-restarts ${s.maxRestarts})`,
    `  first failure: rank ${s.rank} (local rank ${s.localRank} on node ${s.groupRank}, ${s.node}, ` +
      `pid ${s.pid ?? "none"}, round ${s.round}): ${describeExit(s)}`,
  ];
  if (s.stderrTail.length === 0) lines.push("  (no stderr output)");
  else lines.push("  last stderr lines:", ...s.stderrTail.map((l) => `    ${l}`));
  return lines.join("\n");
}

/** How `rdzv run` ended. */
export type AgentResult =
  | { readonly kind: "succeeded"; readonly round: number; readonly restarts: number }
  /** The job failed; `local` when this node's worker is the one reported. */
  | { readonly kind: "failed"; readonly summary: FailureSummary; readonly local: boolean }
  /** Another node closed the rendezvous without recording a failure (e.g. it was stopped). */
  | { readonly kind: "closed" }
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
