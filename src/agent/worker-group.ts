/**
 * A node's worker processes: started together, each in a process group of its own (so stopping a worker
 * also stops whatever it started), watched until one fails or all succeed, stopped with SIGTERM (or the
 * signal that stopped the agent) and, after a grace period, SIGKILL. PyTorch's counterpart is `torch.distributed.elastic.multiprocessing`'s
 * `PContext`.
 */

import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import type { Readable } from "node:stream";
import { setTimeout as delay } from "node:timers/promises";
import type { StreamName, WorkerOutput } from "./output.js";
import { TailBuffer } from "./output.js";
import { type GroupState, groupState, type WorkerExit } from "./policy.js";
import type { Reaper } from "./reaper.js";

/** One worker to start. */
export interface WorkerSpec {
  readonly localRank: number;
  readonly rank: number;
  /** The worker's whole environment. */
  readonly env: Readonly<Record<string, string>>;
}

/** Options of `startWorkerGroup`. */
export interface WorkerGroupOptions {
  readonly command: string;
  readonly args: readonly string[];
  readonly workers: readonly WorkerSpec[];
  readonly output: WorkerOutput;
  readonly cwd?: string;
  readonly reaper?: Reaper | undefined;
  /** Lines of stderr kept per worker for the failure summary (default 20). */
  readonly tailLines?: number;
}

/** How long to wait for a worker's pipes to close after it exited (a grandchild may hold them). */
const PIPE_CLOSE_GRACE_MS = 500;

interface Running {
  readonly spec: WorkerSpec;
  readonly child: ChildProcess;
  readonly tail: TailBuffer;
  exit: WorkerExit | undefined;
  readonly exited: Promise<void>;
}

/** A started group; see the module comment. */
export class WorkerGroup {
  readonly #workers: Running[] = [];
  readonly #exits: WorkerExit[] = [];
  readonly #reaper: Reaper | undefined;
  #stopping = false;
  #stopped: Promise<void> | undefined;
  #onChange: (() => void) | undefined;

  /** @internal Use `startWorkerGroup`. */
  constructor(options: WorkerGroupOptions) {
    this.#reaper = options.reaper;
    for (const spec of options.workers) this.#workers.push(this.#start(options, spec));
  }

  /** Process ids of the workers (`undefined` for one that could not start). */
  get pids(): (number | undefined)[] {
    return this.#workers.map((w) => w.child.pid);
  }

  get size(): number {
    return this.#workers.length;
  }

  /** Exits recorded so far, in the order they happened. */
  get exits(): readonly WorkerExit[] {
    return this.#exits;
  }

  get state(): GroupState {
    return groupState(this.#workers.length, this.#exits);
  }

  /** Last stderr lines of local worker `localRank`. */
  stderrTail(localRank: number): string[] {
    return this.#workers.find((w) => w.spec.localRank === localRank)?.tail.lines() ?? [];
  }

  /** Resolves once the group failed or succeeded (never while workers run healthily). */
  async settled(): Promise<GroupState> {
    for (;;) {
      const state = this.state;
      if (state.kind !== "running") return state;
      await new Promise<void>((resolve) => {
        this.#onChange = resolve;
      });
    }
  }

  /**
   * Stops every worker: `signal` (default SIGTERM; torchrun passes on the signal that stops it, so that
   * Ctrl-C is a KeyboardInterrupt in Python workers) to each process group, SIGKILL to those still running
   * after `graceMs` (and to the groups of workers that already exited, for stragglers they left behind).
   * Idempotent (the first call's signal counts); exits recorded from now on count as stopped by the
   * agent, not as failures.
   */
  stop(graceMs: number, signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
    this.#stopping = true;
    this.#stopped ??= this.#stop(graceMs, signal);
    return this.#stopped;
  }

  /** SIGKILLs every group at once (a second Ctrl-C); `stop()` still resolves when they are gone. */
  kill(): void {
    this.#stopping = true;
    for (const w of this.#workers) signalGroup(w.child, "SIGKILL");
  }

  async #stop(graceMs: number, signal: NodeJS.Signals): Promise<void> {
    const running = this.#workers.filter((w) => w.exit === undefined);
    for (const w of running) signalGroup(w.child, signal);
    const all = Promise.all(this.#workers.map((w) => w.exited));
    const stop = new AbortController();
    const timedOut = await Promise.race([
      all.then(() => false),
      delay(graceMs, true, { signal: stop.signal }).catch(() => false),
    ]);
    stop.abort();
    for (const w of this.#workers) signalGroup(w.child, "SIGKILL");
    if (timedOut) await all;
    for (const w of this.#workers) if (w.child.pid !== undefined) this.#reaper?.unwatch(w.child.pid);
  }

  #start(options: WorkerGroupOptions, spec: WorkerSpec): Running {
    const child = spawn(options.command, [...options.args], {
      env: spec.env,
      detached: true,
      // The agent's stdin, as torchrun's workers have it (`echo y | rdzv run ...`, pdb); output is piped.
      stdio: ["inherit", "pipe", "pipe"],
      ...(options.cwd === undefined ? {} : { cwd: options.cwd }),
    });
    if (child.pid !== undefined) this.#reaper?.watch(child.pid);
    const tail = new TailBuffer(options.tailLines ?? 20);
    const streams: [StreamName, Readable][] = [
      ["stdout", child.stdout!],
      ["stderr", child.stderr!],
    ];
    // Bytes, not text: worker output is passed on as it was written (binary, other encodings).
    for (const [name, stream] of streams) {
      if (name === "stderr") stream.on("data", (chunk: Buffer) => tail.push(chunk));
      options.output.attach(spec.rank, name, stream);
    }
    // Created now, so that no 'close' is missed: the exit is recorded once all output was read.
    const drained = Promise.all(streams.map(([, stream]) => once(stream, "close").catch(() => undefined)));
    return { spec, child, tail, exit: undefined, exited: this.#watch(spec, child, drained) };
  }

  async #watch(spec: WorkerSpec, child: ChildProcess, drained: Promise<unknown>): Promise<void> {
    const ended = await new Promise<{ code: number | null; signal: string | null; error?: Error }>(
      (resolve) => {
        child.once("exit", (code, signal) => resolve({ code, signal }));
        child.once("error", (error) => {
          if (child.pid === undefined) resolve({ code: 127, signal: null, error });
        });
      },
    );
    const stoppedByAgent = this.#stopping;
    const exitedAtMs = Date.now();
    if (ended.error === undefined) await settledWithin(drained, PIPE_CLOSE_GRACE_MS);
    const exit: WorkerExit = {
      localRank: spec.localRank,
      rank: spec.rank,
      pid: child.pid,
      exitCode: ended.code,
      signal: ended.signal,
      stoppedByAgent,
      ...(ended.error === undefined ? {} : { spawnError: ended.error.message }),
      exitedAtMs,
    };
    const running = this.#workers.find((w) => w.child === child);
    if (running !== undefined) running.exit = exit;
    this.#exits.push(exit);
    const notify = this.#onChange;
    this.#onChange = undefined;
    notify?.();
  }
}

/** Starts `options.workers` now; see `WorkerGroup`. Spawn failures show up as exits with `spawnError`. */
export function startWorkerGroup(options: WorkerGroupOptions): WorkerGroup {
  return new WorkerGroup(options);
}

function signalGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    // The group is gone (ESRCH).
  }
}

/** Waits for `promise`, at most `ms` (a grandchild holding the worker's pipes must not stall the agent). */
async function settledWithin(promise: Promise<unknown>, ms: number): Promise<void> {
  const stop = new AbortController();
  await Promise.race([promise, delay(ms, undefined, { signal: stop.signal }).catch(() => undefined)]);
  stop.abort();
}
