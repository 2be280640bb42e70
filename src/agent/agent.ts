/**
 * The elastic agent behind `rdzv run` (PyTorch's `LocalElasticAgent` / `SimpleElasticAgent`): joins the
 * rendezvous, starts this node's workers with torchrun's environment, watches them and the round, and
 * restarts the group (after a new rendezvous) when a worker fails, a member leaves or dies, or new nodes
 * wait to be admitted. Differences from torchrun:
 *
 * - `maxRestarts` bounds the failure restarts of the whole job, not of each node (pytorch/pytorch#108158):
 *   the count lives in the rendezvous store and each failed attempt is counted once (see launcher-store.ts).
 * - When the budget is spent, the agent that counted the last failure records a summary and closes the
 *   rendezvous, so every node exits non-zero with the same report.
 * - The job succeeds when every node's workers exited 0 in the same attempt (an exit barrier); a node
 *   whose workers succeeded rejoins if the round ends before the others finish.
 * - Member loss is pushed by the store (`waitForRoundEnd`); only the rank 0 agent polls
 *   `numNodesWaiting`, so monitoring costs O(1) store requests per interval however many nodes there are
 *   (see agent-monitor.ts).
 *
 * - A rendezvous store that stays unreachable while the workers run is retried (a `rdzv serve --data-dir`
 *   restart, an etcd election) up to `storeUnreachableTimeoutMs`; then the agent stops its workers and
 *   fails (store-outage.ts). torchrun fails at the first store error of its monitor loop.
 *
 * - With `use_agent_store` (the static backend's default) every attempt's workers bootstrap from a new
 *   store that the group rank 0 agent serves (attempt-store.ts): PyTorch 2.x's `env://` no longer keeps
 *   attempts apart in one store, and torchrun 2.x's restarted workers read the failed attempt's keys.
 *
 * As torchrun, each worker gets an error file of its own (`TORCHELASTIC_ERROR_FILE`, see
 * agent-error-files.ts and error-file-dir.ts), and a failure is reported with the error a worker decorated
 * with PyTorch's `@record` wrote there; unlike torchrun, the folder is removed when the agent exits (the
 * report carries the error).
 */

import { EventEmitter } from "node:events";
import { hostname, constants as osConstants } from "node:os";
import { ErrorCode, hasErrorCode, InvalidArgumentError, RendezvousStateError } from "../errors.js";
import { type Logger, silentLogger } from "../log.js";
import type { RendezvousHandler, RendezvousInfo, RendezvousStoreInfo } from "../rendezvous/api.js";
import { AgentErrorFiles } from "./agent-error-files.js";
import { type MonitorContext, monitorAttempt, roundEndWaiter, watchRoundEnd } from "./agent-monitor.js";
import { checkAgentOptions, type ElasticAgentOptions } from "./agent-options.js";
import { AttemptBootstrap } from "./attempt-store.js";
import { mergeWorkerEnv, type WorkerGroupSpec, workerEnv, workerRanks } from "./env.js";
import type { WorkerError } from "./error-file.js";
import { attemptId, LauncherStore, noteAttemptStarted, storeKeyPrefix } from "./launcher-store.js";
import { discardWorkerOutput } from "./output.js";
import {
  type AgentResult,
  decideAfterFailure,
  rootCause,
  summarizeFailure,
  type WorkerExit,
} from "./policy.js";
import { type Reaper, startReaper } from "./reaper.js";
import { DEFAULT_STORE_UNREACHABLE_TIMEOUT_MS } from "./store-outage.js";
import { startWorkerGroup, type WorkerGroup } from "./worker-group.js";

/** How long a round's end may take to tell whether the run was closed (else it is a restart). */
const CLOSED_CHECK_MS = 2000;

export type { ElasticAgentOptions } from "./agent-options.js";

/** Why a group restarts. */
export type RestartReason = "worker-failed" | "round-ended" | "nodes-waiting";

/** What an agent reports while it runs (for status lines and logs). */
export interface AgentEvents {
  joining: [{ restarts: number }];
  started: [
    {
      round: number;
      groupRank: number;
      groupWorldSize: number;
      worldSize: number;
      restarts: number;
      pids: (number | undefined)[];
    },
  ];
  workerFailed: [
    { round: number; exit: WorkerExit; stderrTail: string[]; error?: WorkerError; errorFileNote?: string },
  ];
  restarting: [{ reason: RestartReason; round: number; restarts: number }];
  finishing: [{ round: number; nodes: number }];
}

/** An elastic agent; create with `createElasticAgent`, then `run()` once. */
export class ElasticAgent extends EventEmitter<AgentEvents> {
  readonly nodeId: string;
  readonly #o: ElasticAgentOptions;
  readonly #handler: RendezvousHandler;
  readonly #logger: Logger;
  readonly #signal: AbortSignal;
  readonly #maxRestarts: number;
  readonly #monitor: MonitorContext;
  readonly #stopTimeoutMs: number;
  readonly #localAddr: string;
  #group: WorkerGroup | undefined;
  #reaper: Reaper | undefined;
  #launcher: LauncherStore | undefined;
  /** Where attempts bootstrap, and the attempt store with `useAgentStore` (attempt-store.ts). */
  readonly #bootstrap: AttemptBootstrap;
  readonly #errorFiles: AgentErrorFiles;
  /** Recording this attempt's start and deleting old attempts' keys (`LauncherStore.noteStarted`). */
  #noting: Promise<void> | undefined;
  #restarts = 0;
  #ran = false;

  constructor(options: ElasticAgentOptions) {
    super();
    checkAgentOptions(options);
    this.#o = options;
    this.#handler = options.handler;
    this.#logger = options.logger ?? silentLogger;
    this.#signal = options.signal ?? new AbortController().signal;
    this.#maxRestarts = options.maxRestarts ?? 0;
    this.#monitor = {
      handler: this.#handler,
      logger: this.#logger,
      monitorIntervalMs: options.monitorIntervalMs ?? 1000,
      storeUnreachableTimeoutMs: options.storeUnreachableTimeoutMs ?? DEFAULT_STORE_UNREACHABLE_TIMEOUT_MS,
      storeName: options.storeName ?? this.#handler.getBackend(),
    };
    this.#stopTimeoutMs = options.stopTimeoutMs ?? 30_000;
    this.#localAddr = options.localAddr ?? hostname();
    this.#errorFiles = new AgentErrorFiles(this.#logger);
    this.#bootstrap = new AttemptBootstrap(this.#handler, this.#localAddr, this.#logger);
    this.nodeId = `${this.#localAddr}_${process.pid}_${Math.random().toString(36).slice(2, 10)}`;
  }

  /**
   * Runs the job on this node until it succeeds, fails for good, is stopped (`signal`) or the rendezvous
   * is closed; then stops the workers and leaves the rendezvous (`shutdown()`, after `setClosed()` with
   * `closeOnExit`). Rejects with the rendezvous error when a rendezvous fails (join timeout, store lost),
   * after the same clean-up. May be called once.
   */
  async run(): Promise<AgentResult> {
    if (this.#ran) throw new RendezvousStateError("ElasticAgent.run() may be called once");
    this.#ran = true;
    if (this.#o.reaper !== false) this.#reaper = startReaper(this.#stopTimeoutMs, this.#logger);
    this.#errorFiles.create(this.#handler.getRunId(), this.#o.errorFileParent, this.#reaper);
    let result: AgentResult | undefined;
    let thrown: unknown;
    try {
      for (;;) {
        if (this.#signal.aborted) {
          result = this.#stopped();
          return result;
        }
        try {
          result = await this.#attempt();
        } catch (err) {
          // A stop request aborts whatever store call was in flight: that is a stop, not a failure.
          if (!this.#signal.aborted) throw err;
          result = this.#stopped();
        } finally {
          // The attempt's workers are stopped (or succeeded on every node): its store has served.
          await this.#group?.stop(this.#stopTimeoutMs, this.#stopSignal());
          await this.#bootstrap.close();
          await this.#noting;
        }
        if (result !== undefined) return result;
      }
    } catch (err) {
      thrown = err;
      throw err;
    } finally {
      await this.#group?.stop(this.#stopTimeoutMs, this.#stopSignal());
      await this.#leave(result);
      this.#errorFiles.remove();
      this.#reaper?.removeOnDeath(undefined);
      await this.#reaper?.close();
      await this.#errorFiles.writeOwn(this.#o.errorFile, result, thrown);
    }
  }

  /** SIGKILLs the running workers now (a second Ctrl-C); `run()` then finishes as usual. */
  killWorkers(): void {
    this.#group?.kill();
  }

  async #attempt(): Promise<AgentResult | undefined> {
    this.emit("joining", { restarts: this.#restarts });
    let info: RendezvousInfo;
    try {
      info = await this.#handler.nextRendezvous({ signal: this.#signal });
    } catch (err) {
      return this.#rendezvousFailed(err);
    }
    const launcher = LauncherStore.of(info, this.#handler.getRunId());
    this.#launcher = launcher;
    const restarts = await launcher.restartCount({ signal: this.#signal });
    this.#restarts = restarts;
    // In the background; the attempt's end waits for it.
    this.#noting = noteAttemptStarted(launcher, attemptId(info.round, restarts), info.worldSize, {
      logger: this.#logger,
      signal: this.#signal,
    });
    const bootstrap = await this.#bootstrap.open(
      info,
      launcher,
      attemptId(info.round, restarts),
      this.#signal,
    );
    const spec = this.#spec(info, restarts, bootstrap);
    await this.#checkNproc(launcher, info, attemptId(info.round, restarts), spec.nprocPerNode);
    const group = this.#startGroup(spec);
    this.emit("started", {
      round: info.round,
      groupRank: info.rank,
      groupWorldSize: info.worldSize,
      worldSize: info.worldSize * spec.nprocPerNode,
      restarts,
      pids: group.pids,
    });
    const monitored = { group, info, launcher, attempt: attemptId(info.round, restarts) };
    const event = await monitorAttempt(this.#monitor, monitored, this.#signal);
    switch (event.kind) {
      case "stop":
        return this.#stopped();
      case "round-ended":
      case "nodes-waiting":
        // A round that ended because the job ended (a failure elsewhere, a mismatch) is not a restart:
        // the next rendezvous finds the run closed and says why.
        if (
          event.kind === "nodes-waiting" ||
          !(await this.#handler
            .isClosed({ signal: AbortSignal.any([this.#signal, AbortSignal.timeout(CLOSED_CHECK_MS)]) })
            .catch(() => false))
        ) {
          this.emit("restarting", { reason: event.kind, round: info.round, restarts });
        }
        await group.stop(this.#stopTimeoutMs);
        return undefined;
      case "failed":
        return this.#failed(event.first, group, info, launcher);
      case "succeeded":
        return this.#succeeded(group, info, launcher, attemptId(info.round, restarts));
    }
  }

  /**
   * Ranks are group rank x workers per node + local rank, so every node must start as many workers. A
   * node that differs from the attempt's first closes the rendezvous (every node stops) and fails with
   * a message saying so, instead of handing out ranks that overlap or leave gaps; it records why first,
   * so that the other nodes say so too when they find the rendezvous closed.
   */
  async #checkNproc(
    launcher: LauncherStore,
    info: RendezvousInfo,
    attempt: string,
    nprocPerNode: number,
  ): Promise<void> {
    const agreed = await launcher.agreeNproc(attempt, nprocPerNode, { signal: this.#signal });
    if (agreed === nprocPerNode) return;
    const rule =
      "every node must start the same number (ranks are node rank x workers per node + local rank)";
    const reason =
      `node ${info.rank} (${this.#localAddr}) starts ${workers(nprocPerNode)} (--nproc-per-node) ` +
      `but another node of the job starts ${agreed}: ${rule}`;
    await launcher.recordCloseReason(reason, { signal: this.#signal }).catch((err: unknown) => {
      this.#logger.warn("could not record why the rendezvous closes", { error: String(err) });
    });
    await this.#handler.setClosed().catch(() => undefined);
    throw new InvalidArgumentError(
      `this node starts ${workers(nprocPerNode)} (--nproc-per-node) but another node of the job starts ${agreed}: ${rule}`,
    );
  }

  #spec(info: RendezvousInfo, restarts: number, bootstrap: RendezvousStoreInfo): WorkerGroupSpec {
    const endpoint = this.#o.storeEndpoint;
    // A static rendezvous hands out the same store on every restart: give each attempt a fresh namespace.
    const attempt = this.#handler.getBackend() === "static" ? `/attempt_${restarts}` : "";
    return {
      nprocPerNode: this.#o.nprocPerNode,
      groupRank: info.rank,
      groupWorldSize: info.worldSize,
      role: this.#o.role ?? "default",
      round: info.round,
      restartCount: restarts,
      maxRestarts: this.#maxRestarts,
      runId: this.#handler.getRunId(),
      masterAddr: bootstrap.masterAddr,
      masterPort: bootstrap.masterPort,
      useAgentStore: this.#handler.useAgentStore,
      ...(endpoint === undefined
        ? {}
        : {
            store: { addr: endpoint.host, port: endpoint.port, prefix: storeKeyPrefix(info.store) + attempt },
          }),
    };
  }

  #startGroup(groupSpec: WorkerGroupSpec): WorkerGroup {
    const base = this.#o.env ?? process.env;
    const attemptDir = this.#errorFiles.prepareAttempt(groupSpec);
    const spec = attemptDir === undefined ? groupSpec : { ...groupSpec, errorFileDir: attemptDir };
    const workers = Array.from({ length: spec.nprocPerNode }, (_, localRank) => ({
      localRank,
      rank: workerRanks(spec, localRank).rank,
      env: mergeWorkerEnv(base, workerEnv(spec, localRank), spec.nprocPerNode),
    }));
    this.#group = startWorkerGroup({
      command: this.#o.command,
      args: this.#o.args ?? [],
      workers,
      output: this.#o.output ?? discardWorkerOutput,
      reaper: this.#reaper,
      ...(this.#o.cwd === undefined ? {} : { cwd: this.#o.cwd }),
    });
    return this.#group;
  }

  async #failed(
    first: WorkerExit,
    group: WorkerGroup,
    info: RendezvousInfo,
    launcher: LauncherStore,
  ): Promise<AgentResult | undefined> {
    await group.stop(this.#stopTimeoutMs);
    const failures = await this.#errorFiles.observeFailures(group.exits, first);
    const root = rootCause(failures) ?? { exit: first };
    const stderrTail = group.stderrTail(root.exit.localRank);
    this.emit("workerFailed", {
      round: info.round,
      exit: root.exit,
      stderrTail,
      ...(root.error === undefined ? {} : { error: root.error }),
      ...(root.errorFileNote === undefined ? {} : { errorFileNote: root.errorFileNote }),
    });
    const attempt = attemptId(info.round, this.#restarts);
    const claim = await launcher.claimFailure(attempt, this.nodeId, { signal: this.#signal });
    const decision = decideAfterFailure(claim, this.#maxRestarts);
    if (decision.kind !== "give-up") {
      this.emit("restarting", { reason: "worker-failed", round: info.round, restarts: claim.restarts });
      return undefined;
    }
    const summary = summarizeFailure(root, failures, stderrTail, {
      groupRank: info.rank,
      node: this.#localAddr,
      round: info.round,
      restarts: decision.restarts - 1,
      maxRestarts: this.#maxRestarts,
    });
    this.#errorFiles.keepRootCause(root);
    // Record first: the other agents read the record once they find the rendezvous closed.
    await launcher.recordFailure(summary);
    await this.#handler.setClosed();
    return { kind: "failed", summary, local: true };
  }

  /** The exit barrier: succeeded once every node's workers succeeded in this attempt. */
  async #succeeded(
    group: WorkerGroup,
    info: RendezvousInfo,
    launcher: LauncherStore,
    attempt: string,
  ): Promise<AgentResult | undefined> {
    await group.stop(this.#stopTimeoutMs);
    this.emit("finishing", { round: info.round, nodes: info.worldSize });
    const done = new AbortController();
    const signal = AbortSignal.any([done.signal, this.#signal]);
    // The whole barrier, arrival included, takes at most its timeout. It cannot turn workers that
    // succeeded into a failure: when the store is gone it is given up, as torchrun gives up its barrier.
    const timeoutMs = this.#o.exitBarrierTimeoutMs ?? 300_000;
    const deadline = Date.now() + timeoutMs;
    const waits: Promise<"done" | "timeout" | "ended">[] = [];
    let outcome: "done" | "timeout" | "ended" | "failed";
    try {
      await launcher.arrive(attempt, info.worldSize, { timeoutMs, signal });
      const left = Math.max(0, deadline - Date.now());
      waits.push(
        launcher.waitAllDone(attempt, { timeoutMs: left, signal }).then(
          () => "done",
          (err: unknown) => {
            if (hasErrorCode(err, ErrorCode.Timeout)) return "timeout";
            throw err;
          },
        ),
      );
      const roundEnd = roundEndWaiter(this.#handler);
      if (roundEnd !== undefined)
        waits.push(watchRoundEnd(this.#monitor, roundEnd, signal).then(() => "ended"));
      outcome = await Promise.race(waits);
    } catch (err) {
      if (this.#signal.aborted) return this.#stopped();
      if (!hasErrorCode(err, ErrorCode.Timeout)) {
        this.#logger.warn("exit barrier failed; the workers here succeeded", { error: String(err) });
      }
      outcome = hasErrorCode(err, ErrorCode.Timeout) ? "timeout" : "failed";
    } finally {
      done.abort();
      for (const w of waits) w.catch(() => undefined);
    }
    if (outcome === "timeout") {
      this.#logger.warn("exit barrier timed out: not every node finished", { timeoutMs, round: info.round });
    }
    if (outcome === "ended" && !(await launcher.allDone(attempt).catch(() => false))) {
      // Another node failed or left before finishing: the job restarts as a whole.
      this.emit("restarting", { reason: "round-ended", round: info.round, restarts: this.#restarts });
      return undefined;
    }
    return { kind: "succeeded", round: info.round, restarts: this.#restarts };
  }

  async #rendezvousFailed(err: unknown): Promise<AgentResult> {
    if (this.#signal.aborted) return this.#stopped();
    if (!hasErrorCode(err, ErrorCode.Closed)) throw err;
    const summary = await this.#launcher?.readFailure().catch(() => undefined);
    if (summary !== undefined) return { kind: "failed", summary, local: false };
    const reason = await this.#launcher?.readCloseReason().catch(() => undefined);
    return reason === undefined ? { kind: "closed" } : { kind: "closed", reason };
  }

  /**
   * The signal that stops the workers: the one that stopped the agent (`signal`'s reason, a signal name as
   * `rdzv run` aborts it), as torchrun passes its own on (`_shutdown(death_sig)`); else SIGTERM.
   */
  #stopSignal(): NodeJS.Signals {
    const reason: unknown = this.#signal.aborted ? this.#signal.reason : undefined;
    return typeof reason === "string" && Object.hasOwn(osConstants.signals, reason)
      ? (reason as NodeJS.Signals)
      : "SIGTERM";
  }

  #stopped(): AgentResult {
    const reason: unknown = this.#signal.reason;
    return { kind: "stopped", signal: typeof reason === "string" ? reason : undefined };
  }

  async #leave(result: AgentResult | undefined): Promise<void> {
    // A failed job's rendezvous is closed already (by the agent that gave up).
    const alreadyClosed = result?.kind === "closed" || result?.kind === "failed";
    if (this.#o.closeOnExit === true && !alreadyClosed) {
      await this.#handler.setClosed().catch((err: unknown) => {
        this.#logger.warn("could not close the rendezvous", { error: String(err) });
      });
    }
    const clean = await this.#handler.shutdown().catch((err: unknown) => {
      this.#logger.warn("could not leave the rendezvous", { error: String(err) });
      return false;
    });
    if (!clean) this.#logger.warn("the rendezvous was not left cleanly");
  }
}

/** Creates an agent; throws `InvalidArgumentError` for bad options. */
export function createElasticAgent(options: ElasticAgentOptions): ElasticAgent {
  return new ElasticAgent(options);
}

/** "1 worker", "2 workers". */
function workers(n: number): string {
  return `${n} worker${n === 1 ? "" : "s"}`;
}
