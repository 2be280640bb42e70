/**
 * Run retention of a long-lived store server (`rdzv serve --run-ttl`): a run none of whose keys was
 * written for longer than the TTL is deleted, every key of it (run-owner.ts says which), and nothing else.
 *
 * Idle means no live agent: a member of an rdzv round bumps its keep-alive counter
 * (`rdzv/<run id>/r<R>/hb/<slot>`, `StoreRendezvousBackend.keepAlive`) every keep-alive interval (5 s by
 * default) from joining the round until it leaves it, training included; torchrun's agents (PyTorch's
 * c10d backend) rewrite the run's state key `torch.rendezvous.<run id>` with their heartbeat time every
 * `keep_alive_interval` (5 s) from their first rendezvous until shutdown (`_keep_alive` in
 * dynamic_rendezvous.py). A waiting joiner holds a ticket and beats as well. So a TTL far above the
 * keep-alive interval (the default is 24 h) only takes runs whose agents are all gone.
 *
 * Each run's clock is kept from the engine's key changes (run-activity.ts), so a sweep costs one pass over
 * the runs, plus the deletions; a write counts from the first sweep after it, so a run goes between TTL
 * and TTL plus one sweep interval after its last write. A run's keys are deleted through the engine like
 * a client's DELETE (so a data directory's journal records them, waiters stay blocked as after any
 * delete, and the run index, the monitor and the dashboard follow), at most `maxKeysPerSlice` (or
 * `maxSliceMs` worth) per turn of the event loop, the run's list key (`open`, PyTorch's state key) last:
 * a run whose deletion stops half-way (a key of it written meanwhile, a crash) stays listed, and expires
 * again once idle. A server restarted from its data directory starts every run's clock at the restart.
 *
 * Keys that come back to a run after it ended (the keep-alive of an agent that stalled through the TTL,
 * then resumed) or that a run's deletion left (its list key deleted by a client) are a remnant
 * (run-activity.ts): no run lists them, so they are deleted once idle for the TTL too, and counted as keys
 * only (`keysDeleted`, not `runsExpired`).
 */

import { InvalidArgumentError } from "../errors.js";
import { type Logger, silentLogger } from "../log.js";
import type { KvEngine } from "../store/kv-engine.js";
import { userKeyOf, WIRE_KEY_PREFIX } from "./key-reader.js";
import { type KeyChange, RunActivity, type RunGroup } from "./run-activity.js";

/** Options of `startRunRetention`. */
export interface RunRetentionOptions {
  /** Delete a run once none of its keys was written for longer than this, ms (positive). */
  ttlMs: number;
  /** Time between sweeps, ms (default min(ttlMs / 10, 60 s), at least 100 ms). */
  sweepIntervalMs?: number;
  /** Most keys deleted per turn of the event loop (default 1000). */
  maxKeysPerSlice?: number;
  /**
   * Longest a turn of deletions may take, ms (default 10, by `performance.now`, whatever `now` is): with
   * `--fsync always` each delete waits for the disk, and 1000 of them held the loop for half a second.
   */
  maxSliceMs?: number;
  /** Prefix of user keys in the engine (default "/", as on a TCP store server). */
  keyPrefix?: string;
  /** The engine's keys are UTF-8 bytes as byte strings, as a TCP store server's are (default true). */
  byteKeys?: boolean;
  /** Clock, ms (default `performance.now`: monotonic, so a stepped wall clock ages no run). */
  now?: () => number;
  /** Where each expired run is reported (default: nowhere). */
  logger?: Logger;
}

/** What retention deleted so far. */
export interface RunRetentionStats {
  /** Runs deleted (each counted once all its keys went). */
  runsExpired: number;
  /** Keys deleted with them. */
  keysDeleted: number;
}

/** Run retention attached to an engine. */
export interface RunRetention extends Disposable {
  readonly ttlMs: number;
  /** Counters since the start (a copy). */
  stats(): RunRetentionStats;
  /**
   * Sweeps now (or joins the sweep in progress); resolves with the ids of the runs it deleted (not of the
   * remnants: see the file comment). Rejects
   * when a delete failed (the engine's mutation hook threw: a data directory that cannot record it).
   */
  sweep(): Promise<string[]>;
  /** Stops the sweeps and the clocks (a sweep in progress stops at its next slice). Idempotent. */
  close(): void;
}

const MAX_SWEEP_INTERVAL_MS = 60_000;
const MIN_SWEEP_INTERVAL_MS = 100;
const RDZV = "rdzv/";
const TORCH = "torch.rendezvous.";

/**
 * Follows `engine`'s key changes (one pass over the keys it holds now, then each change) and deletes
 * idle runs every sweep interval; see the file comment. The timer does not keep the process alive.
 * Throws `InvalidArgumentError` for a `ttlMs`, `sweepIntervalMs`, `maxKeysPerSlice` or `maxSliceMs`
 * that is not a positive integer.
 */
export function startRunRetention(engine: KvEngine, options: RunRetentionOptions): RunRetention {
  const { ttlMs } = options;
  positive("ttlMs", ttlMs);
  const intervalMs =
    options.sweepIntervalMs ??
    Math.max(MIN_SWEEP_INTERVAL_MS, Math.min(Math.floor(ttlMs / 10), MAX_SWEEP_INTERVAL_MS));
  positive("sweepIntervalMs", intervalMs);
  const perSlice = options.maxKeysPerSlice ?? 1000;
  positive("maxKeysPerSlice", perSlice);
  const sliceMs = options.maxSliceMs ?? 10;
  positive("maxSliceMs", sliceMs);
  const logger = options.logger ?? silentLogger;
  const keyPrefix = options.keyPrefix ?? WIRE_KEY_PREFIX;
  const byteKeys = options.byteKeys ?? true;
  const activity = new RunActivity(options.now ?? (() => performance.now()), (key) =>
    userKeyOf(key, keyPrefix, byteKeys),
  );
  const rdzvPrefix = keyPrefix + RDZV;
  const torchPrefix = keyPrefix + TORCH;
  const feed = (key: string, change: KeyChange): void => {
    if (key.startsWith(rdzvPrefix) || key.startsWith(torchPrefix)) activity.note(key, change);
  };
  for (const key of engine.keys()) feed(key, "held");
  const off = engine.onChange((key, _old, value) => feed(key, value === undefined ? "deleted" : "written"));

  const stats: RunRetentionStats = { runsExpired: 0, keysDeleted: 0 };
  let closed = false;
  let running: Promise<string[]> | undefined;
  let timer: NodeJS.Timeout | undefined;
  let budget = perSlice;
  let sliceEnd = 0;

  /**
   * Deletes `run`'s keys (a run's or a remnant's), list key last; false when it stopped (written
   * meanwhile, a run again or no more, or closed).
   */
  const expire = async (run: RunGroup): Promise<boolean> => {
    const idleMs = activity.idleMs(run);
    const { listKey } = run;
    const keys = [...run.keys].filter((k) => k !== listKey);
    if (listKey !== undefined) keys.push(listKey);
    let deleted = 0;
    for (const key of keys) {
      if (budget === 0 || performance.now() > sliceEnd) {
        await new Promise<void>((resolve) => setImmediate(resolve));
        budget = perSlice;
        sliceEnd = performance.now() + sliceMs;
        if (closed) return false;
        if (activity.group(run) !== run || run.written || run.listKey !== listKey) {
          logger.warn("rdzv store: a run was written while it expired; its other keys are kept", {
            runId: shown(run.runId),
            layout: run.layout,
            deletedKeys: deleted,
          });
          return false;
        }
      }
      budget--;
      if (engine.delete(key)) {
        deleted++;
        stats.keysDeleted++;
      }
    }
    const fields = {
      runId: shown(run.runId),
      layout: run.layout,
      keys: deleted,
      idleS: Math.round(idleMs / 1000),
      ttlS: ttlMs / 1000,
    };
    if (listKey === undefined) {
      logger.info(
        "rdzv store: keys of an ended run (no run-list key) not written for longer than the run TTL: deleted",
        fields,
      );
    } else {
      stats.runsExpired++;
      logger.info(
        "rdzv store: run expired (no key of it written for longer than the run TTL): keys deleted",
        fields,
      );
    }
    return true;
  };

  const sweepOnce = async (): Promise<string[]> => {
    const gone: string[] = [];
    budget = perSlice;
    sliceEnd = performance.now() + sliceMs;
    for (const run of activity.idleRuns(ttlMs)) {
      // An earlier run's deletion yielded: this one may have been written (or deleted) since.
      if (closed) break;
      // A remnant that became a run again since (its list key written) has its clock from then.
      if (activity.group(run) !== run || run.written || activity.idleMs(run) <= ttlMs) continue;
      if (run.listKey === undefined && !run.remnant) continue;
      const wasRun = run.listKey !== undefined;
      if ((await expire(run)) && wasRun) gone.push(run.runId);
    }
    return gone;
  };

  const sweep = (): Promise<string[]> => {
    if (closed) return Promise.resolve([]);
    running ??= sweepOnce().finally(() => {
      running = undefined;
    });
    return running;
  };

  const schedule = (): void => {
    if (closed) return;
    timer = setTimeout(() => {
      sweep().then(schedule, (err: unknown) => {
        // A failed delete is the data directory's failure (the server stops on it): stop sweeping.
        logger.error("rdzv store: run retention stopped: a delete failed", {
          error: err instanceof Error ? err.message : String(err),
        });
      });
    }, intervalMs);
    timer.unref();
  };
  schedule();

  const close = (): void => {
    if (closed) return;
    closed = true;
    clearTimeout(timer);
    off();
  };
  return {
    ttlMs,
    stats: () => ({ ...stats }),
    sweep,
    close,
    [Symbol.dispose]: close,
  };
}

/** A run id as logged: any length a key may have, cut at 200 characters (the log escapes the rest). */
function shown(runId: string): string {
  return runId.length > 200 ? `${runId.slice(0, 200)}...` : runId;
}

function positive(name: string, value: number): void {
  if (!Number.isSafeInteger(value) || value < 1) {
    throw new InvalidArgumentError(`${name} must be a positive integer, got ${String(value)}`);
  }
}
