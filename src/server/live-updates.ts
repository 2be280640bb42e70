/**
 * Pushes run changes to the dashboard's event-stream clients. Key changes arrive from the monitor at the
 * store's pace (a keep-alive every few seconds per node, thousands of joins at once); the hub coalesces
 * them and pushes at most once per `intervalMs` (`keepAliveIntervalMs` when only keep-alive counters moved):
 * the run list when it changed, the detail of the run a client watches when that run changed, and the
 * timeline events of that run since the last push. Nothing is read while no client is connected.
 */

import type { RunList } from "./inspector.js";
import type { RendezvousMonitor } from "./monitor.js";
import type { RunView, TimelineEvent } from "./run-view.js";
import type { SseClient } from "./sse.js";

/** A push waits this many times as long as the last one took, so pushes cannot take the server's time. */
const BUSY_FACTOR = 4;

/** What a client watches: the run list, plus one run's detail when `runId` is set. */
export interface Watch {
  runId?: string;
  source?: RunView["source"];
}

/** Reads the data the hub pushes. */
export interface LiveSource {
  now(): number;
  /** The run list (capped: it says how many runs there are). */
  summaries(): Promise<RunList>;
  views(runId: string, source: RunView["source"] | undefined): Promise<RunView[]>;
}

interface Subscriber {
  readonly client: SseClient;
  readonly watch: Watch;
  /** Timeline events of the watched run not pushed yet. */
  pending: TimelineEvent[];
  /** False until the first messages went out (pushes wait for them). */
  ready: boolean;
}

/** The push loop; see the file comment. */
export class LiveUpdates {
  readonly #subscribers = new Set<Subscriber>();
  readonly #changed = new Set<string>();
  /** Something other than a keep-alive changed since the last push: the run list may differ. */
  #structural = false;
  #timer: NodeJS.Timeout | undefined;
  #due = Number.POSITIVE_INFINITY;
  #flushing = false;
  #lastRuns = "";
  /** When the last push ended and how long it took: the next waits `BUSY_FACTOR` times that. */
  #lastFlushEnd = 0;
  #lastFlushMs = 0;
  readonly #detach: () => void;

  private readonly intervalMs: number;
  private readonly keepAliveIntervalMs: number;

  constructor(
    private readonly source: LiveSource,
    monitor: RendezvousMonitor,
    options: { intervalMs?: number; keepAliveIntervalMs?: number } = {},
  ) {
    this.intervalMs = options.intervalMs ?? 200;
    this.keepAliveIntervalMs = Math.max(this.intervalMs, options.keepAliveIntervalMs ?? 1000);
    const onChanged = (runId: string, keepAliveOnly: boolean): void => {
      if (this.#subscribers.size === 0) return;
      this.#changed.add(runId);
      if (!keepAliveOnly) this.#structural = true;
      this.#schedule(keepAliveOnly ? this.keepAliveIntervalMs : this.intervalMs);
    };
    const onEvent = (e: TimelineEvent): void => {
      for (const sub of this.#subscribers) if (sub.watch.runId === e.runId) sub.pending.push(e);
    };
    monitor.on("changed", onChanged);
    monitor.on("event", onEvent);
    this.#detach = () => {
      monitor.off("changed", onChanged);
      monitor.off("event", onEvent);
    };
  }

  /** Number of connected clients. */
  get size(): number {
    return this.#subscribers.size;
  }

  /**
   * Adds a client: it gets the run list, and the watched run with its whole timeline, at once; then
   * changes. Returns the function that removes it.
   */
  async subscribe(
    client: SseClient,
    watch: Watch,
    timeline: (runId: string) => TimelineEvent[],
  ): Promise<() => void> {
    const sub: Subscriber = { client, watch, pending: [], ready: false };
    this.#subscribers.add(sub);
    // Taken in the same tick as the subscription: every later event is in `pending`, none twice.
    const past = watch.runId === undefined ? [] : timeline(watch.runId);
    const remove = () => {
      this.#subscribers.delete(sub);
    };
    try {
      const now = this.source.now();
      client.send({ event: "runs", data: { now, ...(await this.source.summaries()) } });
      if (watch.runId !== undefined) {
        const views = await this.source.views(watch.runId, watch.source);
        client.send({ event: "run", data: { now, runId: watch.runId, views } });
        client.send({ event: "timeline", data: { now, reset: true, events: past } });
      }
    } catch (err) {
      remove();
      throw err;
    }
    sub.ready = true;
    if (sub.pending.length > 0 && watch.runId !== undefined) {
      this.#changed.add(watch.runId);
      this.#schedule(this.intervalMs);
    }
    return remove;
  }

  /** Stops pushing. */
  close(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#detach();
    this.#subscribers.clear();
  }

  /** Pushes in `delayMs`, or earlier when a push is due sooner already. */
  #schedule(delayMs: number): void {
    if (this.#subscribers.size === 0) {
      this.#changed.clear();
      return;
    }
    // A push reads the run list, a few keys per run listed (1,000 runs: ~10 ms) and every run id sorted:
    // pushes are spaced so that they take at most 1 / (BUSY_FACTOR + 1) of the server's time.
    const due = Math.max(Date.now() + delayMs, this.#lastFlushEnd + BUSY_FACTOR * this.#lastFlushMs);
    delayMs = due - Date.now();
    if (this.#timer !== undefined && this.#due <= due) return;
    clearTimeout(this.#timer);
    this.#due = due;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#due = Number.POSITIVE_INFINITY;
      void this.#flush();
    }, delayMs);
    this.#timer.unref();
  }

  async #flush(): Promise<void> {
    if (this.#flushing) {
      this.#schedule(this.intervalMs);
      return;
    }
    this.#flushing = true;
    const started = Date.now();
    const changed = new Set(this.#changed);
    this.#changed.clear();
    const structural = this.#structural;
    this.#structural = false;
    try {
      const now = this.source.now();
      let runs: RunList | undefined;
      let runsChanged = false;
      if (structural) {
        runs = await this.source.summaries();
        const runsJson = JSON.stringify(runs);
        runsChanged = runsJson !== this.#lastRuns;
        this.#lastRuns = runsJson;
      }
      const views = new Map<string, Promise<RunView[]>>();
      for (const sub of [...this.#subscribers]) {
        if (!sub.ready) continue;
        const { runId, source } = sub.watch;
        let ok = !runsChanged || sub.client.send({ event: "runs", data: { now, ...runs } });
        if (ok && runId !== undefined && changed.has(runId)) {
          const key = `${source ?? ""}:${runId}`;
          if (!views.has(key)) views.set(key, this.source.views(runId, source));
          ok = sub.client.send({ event: "run", data: { now, runId, views: await views.get(key)! } });
          const mine = sub.pending;
          sub.pending = [];
          if (ok && mine.length > 0) ok = sub.client.send({ event: "timeline", data: { now, events: mine } });
        }
        if (!ok) this.#subscribers.delete(sub);
      }
    } finally {
      this.#flushing = false;
      this.#lastFlushEnd = Date.now();
      this.#lastFlushMs = this.#lastFlushEnd - started;
    }
  }
}
