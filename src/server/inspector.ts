/**
 * The run inspector: lists the rendezvous runs a store holds and reads each into a `RunView`, for both
 * layouts (rdzv's dynamic rendezvous and PyTorch's own handler). Read-only; works over a server's engine
 * in-process or any `Store` (see key-reader.ts).
 */

import { InvalidArgumentError } from "../errors.js";
import type { CallOptions } from "../store/store.js";
import type { KeyReader } from "./key-reader.js";
import { type InspectOptions, inspectRdzvRun, summarizeRdzvRun } from "./rdzv-inspect.js";
import { listedRunKeys, type RunKeys, torchKey } from "./run-keys.js";
import { type RunSummary, type RunView, summarize } from "./run-view.js";
import { readTorchState } from "./torch-state.js";
import { torchRunView } from "./torch-view.js";

export type { InspectOptions, KeepAliveTimes } from "./rdzv-inspect.js";

/** A run's identity: its id and whose layout holds it. */
export interface RunRef {
  runId: string;
  source: RunView["source"];
}

/**
 * The runs `reader` holds, sorted by id (PyTorch's layout before rdzv's where an id is in both). Throws
 * `InvalidArgumentError` when the source cannot list keys and keeps no run index (then name the runs:
 * `inspectRun`).
 */
export async function listRunRefs(reader: KeyReader, options: InspectOptions = {}): Promise<RunRef[]> {
  return runRefs(await runKeysOf(reader, options));
}

/**
 * What `reader`'s keys say of its runs: its run index when it keeps one (the dashboard's), else a listing
 * of every key.
 */
async function runKeysOf(reader: KeyReader, options: CallOptions): Promise<RunKeys> {
  const indexed = reader.runKeys?.();
  if (indexed !== undefined) return indexed;
  const keys = await reader.list(options.signal === undefined ? {} : { signal: options.signal });
  if (keys === undefined) {
    throw new InvalidArgumentError(
      "this store cannot list its keys (a PyTorch server before 2.10, or the v1 dialect): name the run id",
    );
  }
  return listedRunKeys(keys);
}

/**
 * Both layouts' runs in one list, by id (UTF-16 code units, as `runIds` sorts each layout), PyTorch's first
 * where an id is in both: a merge of the two sorted lists, as sorting them again cost ~0.3 s per run list
 * at 100,000 runs (with `localeCompare`).
 */
function runRefs(runKeys: RunKeys): RunRef[] {
  const { rdzv, pytorch } = runKeys.runIds();
  const refs: RunRef[] = new Array(rdzv.length + pytorch.length);
  let r = 0;
  let p = 0;
  for (let i = 0; i < refs.length; i++) {
    if (p < pytorch.length && (r === rdzv.length || pytorch[p]! <= rdzv[r]!)) {
      refs[i] = { runId: pytorch[p++]!, source: "pytorch" };
    } else {
      refs[i] = { runId: rdzv[r++]!, source: "rdzv" };
    }
  }
  return refs;
}

/**
 * Reads run `runId` in each layout that holds it (usually one). Empty when neither does. `source` limits
 * the search to one layout.
 */
export async function inspectRun(
  reader: KeyReader,
  runId: string,
  options: InspectOptions & { source?: RunView["source"] } = {},
): Promise<RunView[]> {
  if (typeof runId !== "string" || runId === "") {
    throw new InvalidArgumentError(`a run id must be a non-empty string, got ${JSON.stringify(runId)}`);
  }
  const out: RunView[] = [];
  if (options.source !== "pytorch") {
    const view = await inspectRdzvRun(reader, runId, options);
    if (view !== undefined) out.push(view);
  }
  if (options.source !== "rdzv") {
    const call = options.signal === undefined ? {} : { signal: options.signal };
    const [value] = await reader.read([torchKey(runId)], call);
    if (value !== undefined) out.push(torchRunView(runId, readTorchState(value)));
  }
  return out;
}

/** Options of `summarizeRuns`. */
export interface SummarizeOptions extends CallOptions {
  /** Most runs summarized (default `MAX_RUNS_LISTED`); the others are only counted in `total`. */
  maxRuns?: number;
  /** Run ids to list first when there are more than `maxRuns`, e.g. the most recently changed. */
  prefer?: readonly string[];
}

/** How many runs a run list shows by default (`summarizeRuns`, rdzv status without --run-id). */
export const MAX_RUNS_LISTED = 1000;

/** A run list: at most `maxRuns` runs of `total`. */
export interface RunList {
  runs: RunSummary[];
  /** Runs the store holds (`runs` may hold fewer: `truncated`). */
  total: number;
  truncated: boolean;
}

/**
 * The summaries of the runs `reader` holds, in `listRunRefs` order, for run lists: `maxRuns` at most (the
 * `prefer`red ones first, then by id; see `pickRuns`), and each costs a few reads whatever its tickets
 * counters say, its leave markers coming from the key listing or the run index (see `summarizeRdzvRun`).
 * A listing costs what the store holds; a reader with a run index (`KeyReader.runKeys`, the dashboard's)
 * costs what the runs hold. Throws `InvalidArgumentError` when the source can neither list keys nor index.
 */
export async function summarizeRuns(reader: KeyReader, options: SummarizeOptions = {}): Promise<RunList> {
  const runKeys = await runKeysOf(reader, options);
  const all = runRefs(runKeys);
  const shown = pickRuns(all, options.maxRuns ?? MAX_RUNS_LISTED, options.prefer ?? []);
  const call: CallOptions = options.signal === undefined ? {} : { signal: options.signal };
  const runs: RunSummary[] = [];
  for (const ref of shown) {
    if (ref.source === "rdzv") {
      const summary = await summarizeRdzvRun(reader, ref.runId, runKeys.leaveMarkers(ref.runId), call);
      if (summary !== undefined) runs.push(summary);
    } else {
      runs.push(...(await inspectRun(reader, ref.runId, { ...call, source: ref.source })).map(summarize));
    }
  }
  return { runs, total: all.length, truncated: shown.length < all.length };
}

/**
 * Longest run id a run list holds, UTF-16 units: longer ones are only counted (`total`, `truncated`; a
 * run's detail is still read by its id). Real ids are job names; a store key may be 64 KiB, and 1000 runs
 * of 60 KB ids made /api/runs a 60 MB answer.
 */
export const MAX_LISTED_RUN_ID = 1024;

/**
 * At most `max` of `refs` (sorted), those of `prefer`red ids first, in `refs` order; ids past
 * `MAX_LISTED_RUN_ID` are left out.
 */
export function pickRuns(refs: readonly RunRef[], max: number, prefer: readonly string[] = []): RunRef[] {
  if (!Number.isSafeInteger(max) || max < 0) {
    throw new InvalidArgumentError(`maxRuns must be a non-negative integer, got ${String(max)}`);
  }
  if (refs.some((r) => r.runId.length > MAX_LISTED_RUN_ID)) {
    refs = refs.filter((r) => r.runId.length <= MAX_LISTED_RUN_ID);
  }
  if (refs.length <= max) return [...refs];
  const wanted = new Set<string>();
  for (const id of prefer) {
    if (wanted.size >= max) break;
    wanted.add(id);
  }
  const picked = new Set(refs.filter((r) => wanted.has(r.runId)).slice(0, max));
  for (const r of refs) {
    if (picked.size >= max) break;
    picked.add(r);
  }
  return refs.filter((r) => picked.has(r));
}

/** Keys read per call of `inspectRunList` by default, all runs together (3 per slot shown). */
export const MAX_KEYS_PER_LIST = 300_000;

/** Options of `inspectRunList`. */
export interface InspectListOptions extends InspectOptions {
  /** Most runs read (default `MAX_RUNS_LISTED`), by id. */
  maxRuns?: number;
  /**
   * Most keys read for the runs' slots, all runs together (default `MAX_KEYS_PER_LIST`): each run reads
   * at most what the runs before it left (and `maxSlots` a round); a run given fewer slots than it has is
   * `capped`, with a note. Each run also reads a few keys of its own (more for a stale open-round hint,
   * up to `MAX_ROUNDS_WALKED`).
   */
  maxKeysTotal?: number;
}

/**
 * Reads the runs `reader` holds, as `inspectAllRuns`, in bounded work: `maxRuns` runs and about
 * `maxKeysTotal` keys, whatever the store's counters say. `total` counts every run.
 */
export async function inspectRunList(
  reader: KeyReader,
  options: InspectListOptions = {},
): Promise<{ views: RunView[]; total: number; truncated: boolean }> {
  const { maxRuns, maxKeysTotal, ...inspect } = options;
  const all = await listRunRefs(reader, inspect);
  const refs = pickRuns(all, maxRuns ?? MAX_RUNS_LISTED);
  let left = maxKeysTotal ?? MAX_KEYS_PER_LIST;
  const counted: KeyReader = {
    read: (keys, call) => {
      left -= keys.length;
      return reader.read(keys, call);
    },
    list: (call) => reader.list(call),
  };
  const perRound = inspect.maxSlots ?? 20_000;
  const views: RunView[] = [];
  for (const ref of refs) {
    // Two rounds of up to three keys a slot.
    const maxSlots = Math.max(0, Math.min(perRound, Math.floor(left / 6)));
    views.push(...(await inspectRun(counted, ref.runId, { ...inspect, maxSlots, source: ref.source })));
  }
  return { views, total: all.length, truncated: refs.length < all.length };
}

/** Reads every run `reader` holds (see `listRunRefs`), however many; `inspectRunList` bounds the work. */
export async function inspectAllRuns(reader: KeyReader, options: InspectOptions = {}): Promise<RunView[]> {
  const refs = await listRunRefs(reader, options);
  const views: RunView[] = [];
  for (const ref of refs)
    views.push(...(await inspectRun(reader, ref.runId, { ...options, source: ref.source })));
  return views;
}
