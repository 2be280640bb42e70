/**
 * How an elastic agent watches an attempt (torchrun: `SimpleElasticAgent._invoke_run`'s loop): its workers,
 * the round's end and nodes waiting to join, and a stop. Member loss is pushed by the store
 * (`waitForRoundEnd`); only the rank 0 agent polls `numNodesWaiting`, so monitoring costs O(1) store
 * requests per interval however many nodes there are. Failed store calls are retried while workers run, up
 * to the bound on an unreachable store (store-outage.ts); then the attempt, and the agent, end with an error.
 */

import { setTimeout as delay } from "node:timers/promises";
import type { Logger } from "../log.js";
import type { RendezvousHandler, RendezvousInfo } from "../rendezvous/api.js";
import type { LauncherStore } from "./launcher-store.js";
import type { WorkerExit } from "./policy.js";
import { StoreOutage } from "./store-outage.js";
import type { WorkerGroup } from "./worker-group.js";

/** What ends an attempt (see `monitorAttempt`). */
export type MonitorEvent =
  | { readonly kind: "failed"; readonly first: WorkerExit }
  | { readonly kind: "succeeded" }
  | { readonly kind: "round-ended" }
  | { readonly kind: "nodes-waiting"; readonly count: number }
  | { readonly kind: "stop" };

/** Resolves `true` when the round ends, `false` when `timeoutMs` passes first. */
export type RoundEndWaiter = (options: { timeoutMs: number; signal?: AbortSignal }) => Promise<boolean>;

const ROUND_END_WAIT_MS = 30_000;

/** What the monitor works with: the agent's handler and logger. */
export interface MonitorContext {
  readonly handler: RendezvousHandler;
  readonly logger: Logger;
  /** How often the rank 0 agent asks whether nodes wait to join; also the pause before retrying a wait. */
  readonly monitorIntervalMs: number;
  /** How long the store may stay unreachable before the watch gives up (see store-outage.ts). */
  readonly storeUnreachableTimeoutMs: number;
  /** The store as messages name it (`c10d at host:29400`). */
  readonly storeName: string;
}

/** A fresh outage tracker for `m`'s store. */
export function storeOutage(m: MonitorContext): StoreOutage {
  return new StoreOutage(m.storeUnreachableTimeoutMs, m.storeName);
}

/** The attempt `monitorAttempt` watches. */
export interface MonitoredAttempt {
  readonly group: WorkerGroup;
  readonly info: RendezvousInfo;
  readonly launcher: LauncherStore;
  /** The attempt's id (`attemptId`). */
  readonly attempt: string;
}

/**
 * Waits for the first thing that ends the attempt: the workers, the round, waiting nodes, a stop (`stop`
 * fires). Once some node's workers all succeeded in this attempt (it arrived at the exit barrier), neither
 * the round's end nor waiting nodes restart the group: that node's work is done and it may have left, so a
 * restart could never gather it again, and torchrun lets the other nodes' workers run to their end too. The
 * exit barrier, or a worker failure, then decides. Rejects when the store is gone, or unreachable past its
 * bound (store-outage.ts): the agent then stops the workers and fails.
 */
export async function monitorAttempt(
  m: MonitorContext,
  { group, info, launcher, attempt }: MonitoredAttempt,
  stop: AbortSignal,
): Promise<MonitorEvent> {
  const done = new AbortController();
  const signal = AbortSignal.any([done.signal, stop]);
  const unlessFinished = async (event: Promise<MonitorEvent>): Promise<MonitorEvent> => {
    const e = await event;
    // (When the count cannot be read, the round's end restarts the group as it always did.)
    const finished = await launcher.arrivals(attempt, { signal }).then(
      (n) => n > 0,
      () => false,
    );
    if (!finished) return e;
    m.logger.info("a node finished its workers; the workers here run on (the exit barrier decides)", {
      round: info.round,
      ignored: e.kind,
    });
    await aborted(signal, new AbortController().signal);
    throw signal.reason;
  };
  const waits: Promise<MonitorEvent>[] = [
    group
      .settled()
      .then((s) => (s.kind === "failed" ? { kind: "failed", first: s.first } : { kind: "succeeded" })),
    aborted(stop, done.signal).then(() => ({ kind: "stop" })),
  ];
  // One outage for both watches: they ask the same store, and either one's answer ends it.
  const outage = storeOutage(m);
  const roundEnd = roundEndWaiter(m.handler);
  if (roundEnd !== undefined) waits.push(unlessFinished(watchRoundEnd(m, roundEnd, signal, outage)));
  // Members learn of a round's end from the store; only rank 0 needs to look for waiting nodes.
  if (roundEnd === undefined || info.rank === 0) waits.push(unlessFinished(pollWaiting(m, signal, outage)));
  try {
    return await Promise.race(waits);
  } finally {
    done.abort();
    for (const w of waits) w.catch(() => undefined);
  }
}

/**
 * Resolves when the round ends (`wait` says so): `nodes-waiting` when nodes wait to join, else
 * `round-ended`. A failed wait is retried after `monitorIntervalMs` (with a warning) while `outage` allows;
 * rejects with its error once the store is gone or unreachable past the bound, and once `signal` fires.
 */
export async function watchRoundEnd(
  m: MonitorContext,
  wait: RoundEndWaiter,
  signal: AbortSignal,
  outage: StoreOutage = storeOutage(m),
): Promise<MonitorEvent> {
  for (;;) {
    try {
      const ended = await outage.bounded(signal, (s) => wait({ timeoutMs: ROUND_END_WAIT_MS, signal: s }));
      outage.answered();
      if (ended) {
        // The round also "ends" for nodes waiting to join; tell the two apart for the user.
        const count = await m.handler.numNodesWaiting({ signal }).catch(() => 0);
        return count > 0 ? { kind: "nodes-waiting", count } : { kind: "round-ended" };
      }
    } catch (err) {
      if (signal.aborted) throw err;
      const fatal = outage.failed(err);
      if (fatal !== undefined) throw fatal;
      // The store may come back (the client reconnects); healthy workers keep running meanwhile.
      m.logger.warn("watching the round failed; retrying", { error: String(err), leftMs: outage.leftMs() });
      await delay(Math.min(m.monitorIntervalMs, outage.leftMs() ?? m.monitorIntervalMs), undefined, {
        signal,
      });
    }
  }
}

async function pollWaiting(
  m: MonitorContext,
  signal: AbortSignal,
  outage: StoreOutage,
): Promise<MonitorEvent> {
  for (;;) {
    await delay(m.monitorIntervalMs, undefined, { signal });
    try {
      const count = await outage.bounded(signal, (s) => m.handler.numNodesWaiting({ signal: s }));
      outage.answered();
      if (count > 0) return { kind: "nodes-waiting", count };
    } catch (err) {
      if (signal.aborted) throw err;
      const fatal = outage.failed(err);
      if (fatal !== undefined) throw fatal;
      m.logger.warn("numNodesWaiting failed; retrying", { error: String(err), leftMs: outage.leftMs() });
    }
  }
}

/** The handler's push-based round-end signal, when it has one (the dynamic handler's `waitForRoundEnd`). */
export function roundEndWaiter(handler: RendezvousHandler): RoundEndWaiter | undefined {
  const h = handler as RendezvousHandler & { waitForRoundEnd?: RoundEndWaiter };
  return typeof h.waitForRoundEnd === "function" ? h.waitForRoundEnd.bind(handler) : undefined;
}

/** Resolves when `signal` fires; rejects (dropping its listener) once `until` fires first. */
function aborted(signal: AbortSignal, until: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const onAbort = (): void => {
      until.removeEventListener("abort", onUntil);
      resolve();
    };
    const onUntil = (): void => {
      signal.removeEventListener("abort", onAbort);
      reject(until.reason);
    };
    signal.addEventListener("abort", onAbort, { once: true });
    until.addEventListener("abort", onUntil, { once: true });
  });
}
