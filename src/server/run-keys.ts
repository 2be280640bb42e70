/**
 * The key names of the two rendezvous layouts the inspector reads: rdzv's (`rdzv/<run id>/...`, written by
 * `StoreRendezvousBackend`, see src/backends/store-backend.ts) and PyTorch's c10d backend
 * (`torch.rendezvous.<run id>`). User keys, without the TCP wire's leading "/".
 */

/** A key of rdzv's layout, parsed. */
export type RdzvKey =
  | { readonly runId: string; readonly kind: "open" | "closed" }
  | {
      readonly runId: string;
      readonly kind: "outcome" | "tickets" | "lead" | "ended";
      readonly round: number;
    }
  | {
      readonly runId: string;
      readonly kind: "node" | "hb" | "gone";
      readonly round: number;
      readonly slot: number;
    };

/**
 * Longest node descriptor (`r<round>/node/<slot>`) the inspector and the monitor read; a longer one shows
 * the node by slot. rdzv's are ~100 bytes (id, address, pid); any store client can write 64 MiB there.
 */
export const MAX_DESCRIPTOR_BYTES = 4096;

const RUN_KEY = /^rdzv\/(.+)\/(open|closed)$/;
// Round and slot numbers as the backend writes them: decimal without leading zeros ("r01" is not round 1,
// whose keys views read as "r1").
const ROUND_KEY = /^rdzv\/(.+)\/r(0|[1-9]\d*)\/(outcome|tickets|lead|ended)$/;
const SLOT_KEY = /^rdzv\/(.+)\/r(0|[1-9]\d*)\/(node|hb|gone)\/(0|[1-9]\d*)$/;
/** A run id that is really a path into some round's member store (`rdzv/<id>/r<R>/store/...`). */
const INSIDE_ROUND_STORE = /\/r\d+\/store(\/|$)/;

/** Parses a key of rdzv's layout; `undefined` for any other key (a round's own store keys included). */
export function parseRdzvKey(key: string): RdzvKey | undefined {
  if (!key.startsWith("rdzv/")) return undefined;
  let m = SLOT_KEY.exec(key);
  if (m !== null) {
    const kind = m[3] as "node" | "hb" | "gone";
    return valid({ runId: m[1]!, kind, round: Number(m[2]), slot: Number(m[4]) });
  }
  m = ROUND_KEY.exec(key);
  if (m !== null) {
    const kind = m[3] as "outcome" | "tickets" | "lead" | "ended";
    return valid({ runId: m[1]!, kind, round: Number(m[2]) });
  }
  m = RUN_KEY.exec(key);
  if (m !== null) return valid({ runId: m[1]!, kind: m[2] as "open" | "closed" });
  return undefined;
}

function valid(k: RdzvKey): RdzvKey | undefined {
  if (INSIDE_ROUND_STORE.test(k.runId)) return undefined;
  if ("round" in k && !Number.isSafeInteger(k.round)) return undefined;
  if ("slot" in k && !Number.isSafeInteger(k.slot)) return undefined;
  return k;
}

/** The key of `path` under rdzv run `runId` (as `StoreRendezvousBackend.key`). */
export function rdzvKey(runId: string, path: string): string {
  return `rdzv/${runId}/${path}`;
}

/** The key of `path` in round `round` of rdzv run `runId`. */
export function rdzvRoundKey(runId: string, round: number, path: string): string {
  return `rdzv/${runId}/r${round}/${path}`;
}

const TORCH_PREFIX = "torch.rendezvous.";

/**
 * The run id of PyTorch's state key `torch.rendezvous.<run id>`, else `undefined`. PyTorch's per-round
 * store keys (`torch.rendezvous.<run id>.<round>/...`) are not state keys: ids with "/" are refused.
 */
export function parseTorchKey(key: string): string | undefined {
  if (!key.startsWith(TORCH_PREFIX)) return undefined;
  const id = key.slice(TORCH_PREFIX.length);
  return id === "" || id.includes("/") ? undefined : id;
}

/** PyTorch's state key of `runId`. */
export function torchKey(runId: string): string {
  return TORCH_PREFIX + runId;
}

/**
 * What one key says of the run list: it makes an rdzv run exist (`rdzv/<run id>/open`: every run has it,
 * `enter()` reads the hint with add(open, 0) before it takes a ticket), makes a PyTorch run exist (its
 * state key), or is a leave marker of an rdzv run. Any other key says nothing. A key has one role at most.
 */
export type RunListKey =
  | { readonly role: "rdzv" | "pytorch"; readonly runId: string }
  | { readonly role: "gone"; readonly runId: string; readonly round: number; readonly slot: number };

/**
 * The role of user key `key` in the run list, or `undefined` (most keys: quick tests first, keep-alives
 * included). The one place that says which keys make which run: key listings (`findRunIds`,
 * `findLeaveMarkers`) and the dashboard's run index (run-index.ts) both ask it.
 */
export function runListKey(key: string): RunListKey | undefined {
  if (key.startsWith("rdzv/")) {
    if (!key.endsWith("/open") && !key.includes("/gone/")) return undefined;
    const k = parseRdzvKey(key);
    if (k?.kind === "open") return { role: "rdzv", runId: k.runId };
    // parseRdzvKey takes no leading zeros: "r01" or "gone/07" is not a marker (before, a listing counted it,
    // so a run's summary could count a leave twice and disagree with its view, which reads "r1/gone/7").
    if (k?.kind === "gone") return { role: "gone", runId: k.runId, round: k.round, slot: k.slot };
    return undefined;
  }
  const id = parseTorchKey(key);
  return id === undefined ? undefined : { role: "pytorch", runId: id };
}

/**
 * The leave markers of one rdzv run: round -> slots with a `gone/<slot>` key (in no particular order). With
 * them a run's counts cost a few reads, however many tickets its counters claim (`summarizeRdzvRun`).
 */
export type LeaveMarkers = ReadonlyMap<number, readonly number[]>;

/**
 * What a store's keys say of its runs, however it was learned: from a key listing (`listedRunKeys`) or
 * kept up to date from the keys' changes (`RunIndex`, run-index.ts).
 */
export interface RunKeys {
  /** Every run id, by layout, sorted (by UTF-16 code units). */
  runIds(): { rdzv: readonly string[]; pytorch: readonly string[] };
  /** The leave markers of rdzv run `runId`; `undefined` when it has none. */
  leaveMarkers(runId: string): LeaveMarkers | undefined;
}

/** The `RunKeys` of a key listing: each answer costs what `keys` holds (the markers once, on first use). */
export function listedRunKeys(keys: readonly string[]): RunKeys {
  let markers: Map<string, Map<number, number[]>> | undefined;
  return {
    runIds: () => findRunIds(keys),
    leaveMarkers: (runId) => {
      markers ??= findLeaveMarkers(keys);
      return markers.get(runId);
    },
  };
}

/** Every run id found in `keys`, by layout, sorted. */
export function findRunIds(keys: Iterable<string>): { rdzv: string[]; pytorch: string[] } {
  const rdzv = new Set<string>();
  const pytorch = new Set<string>();
  for (const key of keys) {
    const k = runListKey(key);
    if (k?.role === "rdzv") rdzv.add(k.runId);
    else if (k?.role === "pytorch") pytorch.add(k.runId);
  }
  return { rdzv: [...rdzv].sort(), pytorch: [...pytorch].sort() };
}

/**
 * The leave markers (`rdzv/<run id>/r<round>/gone/<slot>`, numbers without leading zeros) found in `keys`:
 * run id -> round -> slots, in the order listed (each slot once: keys are unique).
 */
export function findLeaveMarkers(keys: Iterable<string>): Map<string, Map<number, number[]>> {
  const out = new Map<string, Map<number, number[]>>();
  for (const key of keys) {
    const k = runListKey(key);
    if (k?.role !== "gone") continue;
    let rounds = out.get(k.runId);
    if (rounds === undefined) {
      rounds = new Map();
      out.set(k.runId, rounds);
    }
    const slots = rounds.get(k.round);
    if (slots === undefined) rounds.set(k.round, [k.slot]);
    else slots.push(k.slot);
  }
  return out;
}
