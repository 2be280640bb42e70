/**
 * The run inspector: lists the rendezvous runs a store holds and reads each into a `RunView`, for both
 * layouts (rdzv's dynamic rendezvous and PyTorch's own handler). Read-only; works over a server's engine
 * in-process or any `Store` (see key-reader.ts).
 */

import { InvalidArgumentError } from "../errors.js";
import type { CallOptions } from "../store/store.js";
import type { KeyReader } from "./key-reader.js";
import { type InspectOptions, inspectRdzvRun, summarizeRdzvRun } from "./rdzv-inspect.js";
import { findLeaveMarkers, findRunIds, torchKey } from "./run-keys.js";
import { type RunSummary, type RunView, summarize } from "./run-view.js";
import { decodeTorchState } from "./torch-state.js";
import { torchRunView } from "./torch-view.js";

export type { InspectOptions, KeepAliveTimes } from "./rdzv-inspect.js";

/** A run's identity: its id and whose layout holds it. */
export interface RunRef {
  runId: string;
  source: RunView["source"];
}

/**
 * The runs `reader` holds, sorted by id (PyTorch's layout before rdzv's where an id is in both). Throws
 * `InvalidArgumentError` when the source cannot list keys (then name the runs: `inspectRuns`).
 */
export async function listRunRefs(reader: KeyReader, options: InspectOptions = {}): Promise<RunRef[]> {
  return runRefs(await listKeys(reader, options));
}

async function listKeys(reader: KeyReader, options: CallOptions): Promise<string[]> {
  const keys = await reader.list(options.signal === undefined ? {} : { signal: options.signal });
  if (keys === undefined) {
    throw new InvalidArgumentError(
      "this store cannot list its keys (a PyTorch server before 2.10, or the v1 dialect): name the run id",
    );
  }
  return keys;
}

function runRefs(keys: readonly string[]): RunRef[] {
  const { rdzv, pytorch } = findRunIds(keys);
  const refs: RunRef[] = [
    ...rdzv.map((runId) => ({ runId, source: "rdzv" as const })),
    ...pytorch.map((runId) => ({ runId, source: "pytorch" as const })),
  ];
  return refs.sort((a, b) => a.runId.localeCompare(b.runId) || a.source.localeCompare(b.source));
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
    if (value !== undefined) out.push(torchRunView(runId, decodeTorchState(value)));
  }
  return out;
}

/**
 * The summary of every run `reader` holds, in `listRunRefs` order, for run lists. rdzv runs cost a few
 * reads each, whatever their tickets counters say: their leave markers come from the key listing (see
 * `summarizeRdzvRun`). Throws `InvalidArgumentError` when the source cannot list keys.
 */
export async function summarizeRuns(reader: KeyReader, options: CallOptions = {}): Promise<RunSummary[]> {
  const keys = await listKeys(reader, options);
  const markers = findLeaveMarkers(keys);
  const out: RunSummary[] = [];
  for (const ref of runRefs(keys)) {
    if (ref.source === "rdzv") {
      const summary = await summarizeRdzvRun(reader, ref.runId, markers.get(ref.runId), options);
      if (summary !== undefined) out.push(summary);
    } else {
      out.push(...(await inspectRun(reader, ref.runId, { ...options, source: ref.source })).map(summarize));
    }
  }
  return out;
}

/** Reads every run `reader` holds (see `listRunRefs`). */
export async function inspectAllRuns(reader: KeyReader, options: InspectOptions = {}): Promise<RunView[]> {
  const refs = await listRunRefs(reader, options);
  const views: RunView[] = [];
  for (const ref of refs)
    views.push(...(await inspectRun(reader, ref.runId, { ...options, source: ref.source })));
  return views;
}
