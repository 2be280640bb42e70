/**
 * What the agents of one job share through the rendezvous store, beside the rendezvous itself. Keys under
 * `rdzv/<runId>/launcher/` on the store behind the round's `PrefixStore`:
 *
 * | key                       | written by                        | meaning                                   |
 * | ------------------------- | --------------------------------- | ----------------------------------------- |
 * | `restarts`                | the agent that claims a failure   | failure restarts of the job (add 1 each)  |
 * | `failure/<attempt>`       | compare-and-set by failing agents | who counted the attempt's failure         |
 * | `failed`                  | the agent that gives up           | the job's failure summary (JSON)          |
 * | `closed-because`          | an agent that closes for a reason | why it closed (text): nproc mismatch      |
 * | `<attempt>/done`          | agents whose workers all exited 0 | exit barrier counter                      |
 * | `<attempt>/all-done`      | the agent completing the barrier  | every node's workers succeeded            |
 * | `<attempt>/nproc`         | the first node of the attempt     | workers per node, which all nodes match   |
 * | `<attempt>/bootstrap`     | the group rank 0 agent            | its attempt store, with `use_agent_store` |
 * | `<attempt>/started`       | every agent starting the attempt  | how many nodes started it                 |
 * | `attempts`                | first and last agent to start one | the attempts whose keys are kept (ids)    |
 *
 * An attempt is one (round, restart count) pair: `r<round>.c<restarts>`. Every member of a round reads
 * the same restart count, because a round completes only after the previous one drained, and a failing
 * agent claims before it leaves its round.
 *
 * The per-attempt keys would grow by a few every attempt, on a long-lived `rdzv serve` too, so they are
 * deleted two attempts on (`noteStarted`): once every node of attempt N started it, each of them is past
 * the attempts before N for good (an agent reads only its current attempt's keys, and a static world's
 * nodes are all members of every attempt; a dynamic round completes only once the round before drained).
 * The attempt before N is kept all the same, for a node counted dead in it that wakes (its failure claim
 * would otherwise count a restart again), as the backends keep the round before (`#cleanRound`). What
 * outlives the attempts stays: `restarts`, `failed` (the failure report) and `closed-because`.
 */

import { RendezvousStateError } from "../errors.js";
import type { Logger } from "../log.js";
import type { RendezvousInfo, RendezvousStoreInfo } from "../rendezvous/api.js";
import { bytesToText } from "../store/bytes.js";
import { PrefixStore } from "../store/prefix-store.js";
import type { CallOptions, Store } from "../store/store.js";
import { formatBootstrap, parseBootstrap } from "./attempt-store.js";
import { boundForStore, type FailureClaim, type FailureSummary } from "./policy.js";

/** The launcher's shared keys of one run; see the module comment. */
export class LauncherStore {
  readonly store: Store;
  readonly prefix: string;

  constructor(store: Store, runId: string) {
    this.store = store;
    this.prefix = `rdzv/${runId}/launcher`;
  }

  /**
   * The launcher store of a round's members: on the store under `info.store` (the round's `PrefixStore`),
   * so that it outlives the round.
   */
  static of(info: RendezvousInfo, runId: string): LauncherStore {
    const base = info.store instanceof PrefixStore ? info.store.underlyingNonPrefixStore : info.store;
    return new LauncherStore(base, runId);
  }

  #key(path: string): string {
    return `${this.prefix}/${path}`;
  }

  /** The job's failure restarts so far. */
  restartCount(options?: CallOptions): Promise<number> {
    return this.store.add(this.#key("restarts"), 0, options);
  }

  /**
   * Claims the failure of `attempt` for `nodeId`: the first claimant counts it (adds 1 to the restart
   * count); later ones, whose workers failed in the same attempt, do not. Retrying with the same `nodeId`
   * (after a lost reply) is safe only before the add; a duplicate add would spend one restart too many.
   */
  async claimFailure(attempt: string, nodeId: string, options?: CallOptions): Promise<FailureClaim> {
    const held = bytesToText(
      await this.store.compareSet(this.#key(`failure/${attempt}`), "", nodeId, options),
    );
    if (held !== nodeId) return { won: false, restarts: await this.restartCount(options) };
    return { won: true, restarts: await this.store.add(this.#key("restarts"), 1, options) };
  }

  /**
   * Records the job's failure, for the agents that learn of it by the rendezvous closing; the worker's
   * error is cut to fit a store value (`boundForStore`).
   */
  async recordFailure(summary: FailureSummary, options?: CallOptions): Promise<void> {
    await this.store.set(this.#key("failed"), JSON.stringify(boundForStore(summary)), options);
  }

  /** The recorded failure, if any. */
  async readFailure(options?: CallOptions): Promise<FailureSummary | undefined> {
    const key = this.#key("failed");
    if (!(await this.store.check([key], options))) return undefined;
    const text = bytesToText(await this.store.get(key, options));
    try {
      return JSON.parse(text) as FailureSummary;
    } catch (err) {
      throw new RendezvousStateError(`corrupt failure record ${JSON.stringify(text.slice(0, 80))}`, {
        cause: err,
      });
    }
  }

  /**
   * Records why this agent closes the rendezvous when it is not a failure of its workers (those are
   * `recordFailure`'s), for the agents that learn of it by the rendezvous closing. Cut to
   * `MAX_CLOSE_REASON_CHARS`.
   */
  async recordCloseReason(reason: string, options?: CallOptions): Promise<void> {
    const text =
      reason.length > MAX_CLOSE_REASON_CHARS ? `${reason.slice(0, MAX_CLOSE_REASON_CHARS - 3)}...` : reason;
    await this.store.set(this.#key("closed-because"), text, options);
  }

  /** The recorded reason for closing the rendezvous, if any. */
  async readCloseReason(options?: CallOptions): Promise<string | undefined> {
    const key = this.#key("closed-because");
    if (!(await this.store.check([key], options))) return undefined;
    return bytesToText(await this.store.get(key, options));
  }

  /**
   * Arrives at the exit barrier of `attempt`; the last of `worldSize` arrivals releases it. The job is
   * then over: its restart count goes, so that a later job under the same run id (on a long-running
   * `rdzv serve`) starts with its whole budget.
   */
  async arrive(attempt: string, worldSize: number, options?: CallOptions): Promise<void> {
    const n = await this.store.add(this.#key(`${attempt}/done`), 1, options);
    if (n < worldSize) return;
    await this.store.deleteKey(this.#key("restarts"), options);
    await this.store.set(this.#key(`${attempt}/all-done`), "1", options);
  }

  /**
   * The workers per node of `attempt`: the first node's `nprocPerNode` (compare-and-set), which every
   * other node must match (ranks are laid out as group rank x workers per node + local rank).
   */
  async agreeNproc(attempt: string, nprocPerNode: number, options?: CallOptions): Promise<number> {
    const held = await this.store.compareSet(
      this.#key(`${attempt}/nproc`),
      "",
      String(nprocPerNode),
      options,
    );
    return Number(bytesToText(held));
  }

  /** Publishes where the workers of `attempt` bootstrap (the rank 0 agent's attempt store, attempt-store.ts). */
  async publishBootstrap(attempt: string, info: RendezvousStoreInfo, options?: CallOptions): Promise<void> {
    await this.store.set(this.#key(`${attempt}/bootstrap`), formatBootstrap(info), options);
  }

  /** Where the workers of `attempt` bootstrap; waits until the rank 0 agent published it (the store's timeout). */
  async readBootstrap(attempt: string, options?: CallOptions): Promise<RendezvousStoreInfo> {
    const text = bytesToText(await this.store.get(this.#key(`${attempt}/bootstrap`), options));
    const info = parseBootstrap(text);
    if (info === undefined)
      throw new RendezvousStateError(`corrupt bootstrap record ${JSON.stringify(text.slice(0, 80))}`);
    return info;
  }

  /**
   * Counts this node's start of `attempt` (called once it read the restart count: it reads no earlier
   * attempt's keys any more) out of the attempt's `worldSize` nodes. The first node to start it records
   * it in `attempts`; the last one, once every node started it, also deletes the keys of the recorded
   * attempts before the one before it (see the module comment). Resolves to the ids of the attempts whose
   * keys it deleted. `attempts` is updated by compare-and-set, so nodes of attempts that overlap (a node
   * slow to record) never drop each other's ids, and only attempts older than one that every node
   * started are deleted.
   */
  async noteStarted(attempt: string, worldSize: number, options?: CallOptions): Promise<string[]> {
    const started = await this.store.add(this.#key(`${attempt}/started`), 1, options);
    if (started !== 1 && started < worldSize) return [];
    const key = this.#key("attempts");
    let held = "";
    for (let tries = 0; tries < MAX_RECORD_TRIES; tries++) {
      const { kept, dropped } = keptAttempts(held, attempt, started >= worldSize);
      if (kept === held) return [];
      const now = bytesToText(await this.store.compareSet(key, held, kept, options));
      if (now === kept) {
        await Promise.all(
          dropped.flatMap((a) => attemptKeys(a)).map((k) => this.store.deleteKey(this.#key(k), options)),
        );
        return dropped;
      }
      held = now;
    }
    throw new RendezvousStateError(`could not record attempt ${attempt}: ${key} kept changing`);
  }

  /** How many nodes arrived at the exit barrier of `attempt` (their workers all succeeded). */
  arrivals(attempt: string, options?: CallOptions): Promise<number> {
    return this.store.add(this.#key(`${attempt}/done`), 0, options);
  }

  /** Whether every node arrived at the exit barrier of `attempt`. */
  allDone(attempt: string, options?: CallOptions): Promise<boolean> {
    return this.store.check([this.#key(`${attempt}/all-done`)], options);
  }

  /** Waits for the exit barrier of `attempt` (rejects with `RDZV_TIMEOUT` / `RDZV_ABORTED`). */
  waitAllDone(attempt: string, options: CallOptions & { timeoutMs: number }): Promise<void> {
    return this.store.wait([this.#key(`${attempt}/all-done`)], options);
  }
}

/** The longest close reason recorded: a line or two of text, never a store value's worth. */
export const MAX_CLOSE_REASON_CHARS = 4096;

/** How long each store call of `noteAttemptStarted` may take. */
const NOTE_STARTED_MS = 5000;

/**
 * `launcher.noteStarted` as the agent calls it: best effort, as old attempts' keys only take room (a
 * failure is logged at debug), and each store call takes `NOTE_STARTED_MS` at most. Never rejects.
 */
export async function noteAttemptStarted(
  launcher: LauncherStore,
  attempt: string,
  worldSize: number,
  { logger, signal }: { logger: Logger; signal: AbortSignal },
): Promise<void> {
  try {
    const deleted = await launcher.noteStarted(attempt, worldSize, { signal, timeoutMs: NOTE_STARTED_MS });
    if (deleted.length > 0) logger.debug("deleted old attempts' launcher keys", { attempts: deleted });
  } catch (err) {
    logger.debug("could not record the attempt's start", { attempt, error: String(err) });
  }
}

/** Compare-and-set tries of `noteStarted` (each loses only to another node's record). */
const MAX_RECORD_TRIES = 16;

/** The keys of `attempt` (under the launcher's prefix); see the module comment. */
function attemptKeys(attempt: string): string[] {
  return ["done", "all-done", "nproc", "bootstrap", "started"]
    .map((k) => `${attempt}/${k}`)
    .concat(`failure/${attempt}`);
}

/**
 * The `attempts` record with `attempt` added (`held` is the current one), in attempt order; with `prune`
 * (every node started `attempt`), without the attempts before the one before `attempt`, which are
 * `dropped`. Text that is no attempt id is dropped from the record, and its keys are left alone.
 */
export function keptAttempts(
  held: string,
  attempt: string,
  prune: boolean,
): { kept: string; dropped: string[] } {
  const ids = new Set(held.split(" ").filter((a) => parseAttemptId(a) !== undefined));
  ids.add(attempt);
  const sorted = [...ids].sort(compareAttempts);
  const at = sorted.indexOf(attempt);
  const from = prune ? Math.max(0, at - 1) : 0;
  return { kept: sorted.slice(from).join(" "), dropped: sorted.slice(0, from) };
}

/** The (round, restart count) of an attempt id; `undefined` for other text. */
export function parseAttemptId(id: string): { round: number; restarts: number } | undefined {
  const m = /^r(\d+)\.c(\d+)$/.exec(id);
  return m === null ? undefined : { round: Number(m[1]), restarts: Number(m[2]) };
}

/** Attempt order: by round, then restart count (a static rendezvous has round 0 only). */
function compareAttempts(a: string, b: string): number {
  const x = parseAttemptId(a);
  const y = parseAttemptId(b);
  if (x === undefined || y === undefined) return 0;
  return x.round - y.round || x.restarts - y.restarts;
}

/** The attempt id of a round: `r<round>.c<restartCount>` (see the module comment). */
export function attemptId(round: number, restartCount: number): string {
  return `r${round}.c${restartCount}`;
}

/**
 * The full key prefix of `store` on the TCP store under it (nested `PrefixStore`s joined innermost first,
 * as PyTorch nests them); `""` when `store` is not a `PrefixStore`.
 */
export function storeKeyPrefix(store: Store): string {
  const parts: string[] = [];
  let s: Store = store;
  while (s instanceof PrefixStore) {
    parts.unshift(s.prefix);
    s = s.underlyingStore;
  }
  return parts.join("/");
}
