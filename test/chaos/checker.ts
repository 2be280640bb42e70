/**
 * Judges a chaos soak from what every node reported and what the driver did (a `SoakRecord`):
 *
 * - one membership per round: every member reports the same world size and the same member list, and
 *   stands in it at its own rank; ranks are unique and within 0..W-1 (dense: the list has W entries);
 * - min <= W <= max;
 * - each node's rounds only go up;
 * - never two completed rounds at once: when round r' completes, every member of the previous completed
 *   round r has left it (reported `joining` again, or was killed). A member that was hung while r ran is
 *   exempt (from when it set out to join r): the others may rightly declare it dead (or, when it is rank
 *   0, give up on r before it published where to bootstrap), and it learns so only once it runs again; it
 *   may even report completing r after the next round completed. Hung means stopped by the driver
 *   (SIGSTOP), or starved by the machine: it reported a `stall` long enough to miss the keep-alives that
 *   count it dead (all but one of `keep_alive_max_attempt`);
 * - liveness: after every burst of faults with at least `minNodes` healthy nodes, a round of them formed
 *   within the settle deadline;
 * - no node died of an unexpected error, and nodes printed nothing but reports.
 */

import { FaultKind, type NodeEvent, type SoakRecord } from "./record.js";

/** Figures of a soak. */
export interface SoakStats {
  readonly seconds: number;
  /** Node slots, and node processes started over the soak (incarnations). */
  readonly nodes: number;
  readonly processes: number;
  /** Distinct completed rounds, and completions reported (one per member and round). */
  readonly rounds: number;
  readonly completions: number;
  readonly faults: Readonly<Record<string, number>>;
  readonly settles: number;
  readonly settleMsMax: number;
  readonly settleMsMedian: number;
  /** Errors nodes reported and retried (join timeouts while too few nodes were healthy, ...), by code. */
  readonly retriedErrors: Readonly<Record<string, number>>;
  /** Stretches in which a node process ran nothing for over half a second (SIGSTOPs included). */
  readonly stalls: number;
  readonly stallMsMax: number;
}

/** What `checkSoak` found. */
export interface SoakVerdict {
  readonly violations: readonly string[];
  readonly stats: SoakStats;
}

function groupBy<K, V>(items: Iterable<V>, key: (v: V) => K): Map<K, V[]> {
  const map = new Map<K, V[]>();
  for (const item of items) {
    const k = key(item);
    const list = map.get(k);
    if (list === undefined) map.set(k, [item]);
    else list.push(item);
  }
  return map;
}

function sameList(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** Checks one round's reports; returns its members (ids) for the exclusivity check. */
function checkRound(
  round: number,
  completed: readonly NodeEvent[],
  members: readonly NodeEvent[],
  record: SoakRecord,
  out: string[],
): Set<string> {
  const { minNodes, maxNodes } = record.params;
  const sizes = new Set(completed.map((e) => e.worldSize));
  if (sizes.size > 1) out.push(`round ${round}: members report world sizes ${[...sizes].join(", ")}`);
  const w = completed[0]!.worldSize!;
  if (w < minNodes || w > maxNodes)
    out.push(`round ${round}: world size ${w} outside ${minNodes}..${maxNodes}`);
  const ranks = completed.map((e) => e.rank!);
  if (new Set(ranks).size !== ranks.length) out.push(`round ${round}: duplicate ranks ${ranks.join(", ")}`);
  for (const e of completed) {
    if (e.rank! < 0 || e.rank! >= w) out.push(`round ${round}: ${e.id} has rank ${e.rank} of ${w}`);
  }
  const lists = members.map((e) => e.members!);
  const first = lists[0];
  if (first !== undefined) {
    for (const [i, list] of lists.entries()) {
      if (!sameList(list, first)) {
        out.push(
          `round ${round}: ${members[i]!.id} believes ${list.join(",")}, ${members[0]!.id} ${first.join(",")}`,
        );
      }
    }
    if (first.length !== w) out.push(`round ${round}: ${first.length} members listed, world size ${w}`);
    for (const e of completed) {
      if (first[e.rank!] !== e.id)
        out.push(`round ${round}: ${e.id} has rank ${e.rank}, the list has ${first[e.rank!]}`);
    }
  }
  return new Set([...completed.map((e) => e.id), ...(first ?? [])]);
}

/**
 * Whether `events` (one node's) hold a stall between `from` and `to` long enough for the others to count
 * the node dead: its keep-alives then stopped for (max attempts - 1) intervals plus the one in progress.
 */
function starved(events: readonly NodeEvent[], from: number, to: number, record: SoakRecord): boolean {
  const { keep_alive_interval: interval, keep_alive_max_attempt: attempts } = record.params.config;
  if (typeof interval !== "number" || typeof attempts !== "number") return false;
  const longEnough = interval * 1000 * (attempts - 1);
  return events.some(
    (e) =>
      e.ev === "stall" && e.from !== undefined && e.from <= to && e.t >= from && e.t - e.from >= longEnough,
  );
}

/** Never two completed rounds at once (see the module comment). */
function checkExclusive(
  rounds: readonly number[],
  firstCompletion: ReadonlyMap<number, number>,
  membersOf: ReadonlyMap<number, Set<string>>,
  record: SoakRecord,
  out: string[],
): void {
  const byId = groupBy(record.events, (e) => e.id);
  const faultsById = groupBy(record.faults, (f) => f.id);
  for (let i = 0; i + 1 < rounds.length; i++) {
    const r = rounds[i]!;
    const next = rounds[i + 1]!;
    const began = firstCompletion.get(r)!;
    const nextAt = firstCompletion.get(next)!;
    for (const id of membersOf.get(r)!) {
      const faults = faultsById.get(id) ?? [];
      const events = byId.get(id) ?? [];
      const ownCompletion = events.findIndex((e) => e.ev === "completed" && e.round === r);
      // Its membership began when it last set out to join before learning of r: a node hung in between
      // learns of r only once it runs again, after the others may have moved on without it.
      const joinedAt = events.slice(0, Math.max(0, ownCompletion)).findLast((e) => e.ev === "joining")?.t;
      const since = Math.min(joinedAt ?? began, began);
      const hung = faults.some(
        (f, k) =>
          f.kind === FaultKind.Stop &&
          f.t <= nextAt &&
          (faults.slice(k + 1).find((g) => g.kind !== FaultKind.Stop)?.t ?? Number.POSITIVE_INFINITY) >=
            since,
      );
      if (hung || starved(events, since, nextAt, record)) continue;
      const killedAt = faults.find((f) => f.kind === FaultKind.Kill)?.t ?? Number.POSITIVE_INFINITY;
      const rejoined =
        events.slice(Math.max(0, ownCompletion)).find((e) => e.ev === "joining" && e.t >= began)?.t ??
        Number.POSITIVE_INFINITY;
      const leftAt = Math.min(killedAt, rejoined);
      if (leftAt > nextAt) {
        const when = Number.isFinite(leftAt) ? `${leftAt - nextAt} ms later` : "never";
        out.push(`round ${next} completed while ${id} was still a member of round ${r} (it left ${when})`);
      }
    }
  }
}

/** Checks a soak; `violations` is empty when every property held. */
export function checkSoak(record: SoakRecord): SoakVerdict {
  const out: string[] = [];
  const completed = record.events.filter((e) => e.ev === "completed");
  const byRound = groupBy(completed, (e) => e.round!);
  const membersByRound = groupBy(
    record.events.filter((e) => e.ev === "members"),
    (e) => e.round!,
  );
  const rounds = [...byRound.keys()].sort((a, b) => a - b);
  const membersOf = new Map<number, Set<string>>();
  const firstCompletion = new Map<number, number>();
  for (const r of rounds) {
    const reports = byRound.get(r)!;
    membersOf.set(r, checkRound(r, reports, membersByRound.get(r) ?? [], record, out));
    firstCompletion.set(r, Math.min(...reports.map((e) => e.t)));
  }
  for (const [r, lists] of membersByRound) {
    if (!byRound.has(r)) out.push(`round ${r}: ${lists[0]!.id} listed members of a round nobody completed`);
  }
  for (const [id, events] of groupBy(completed, (e) => e.id)) {
    const seq = events.map((e) => e.round!);
    if (seq.some((r, i) => i > 0 && r <= seq[i - 1]!))
      out.push(`${id} completed rounds out of order: ${seq.join(", ")}`);
  }
  checkExclusive(rounds, firstCompletion, membersOf, record, out);
  const { settleDeadlineMs } = record.params;
  for (const s of record.settles) {
    if (s.notStarted !== undefined && s.notStarted.length > 0) {
      out.push(`node processes ${s.notStarted.join(", ")} did not start (is the machine overloaded?)`);
    } else if (s.expectRound && s.settledAt === undefined) {
      out.push(
        `no round of the ${s.healthy.length} healthy nodes (${s.healthy.join(", ")}) within ${settleDeadlineMs} ms`,
      );
    }
  }
  const errors = record.events.filter((e) => e.ev === "error");
  for (const e of errors.filter((x) => x.fatal === true)) out.push(`${e.id} died: ${e.code} ${e.message}`);
  for (const line of record.noise) out.push(`unexpected output: ${line}`);
  const times = record.settles
    .filter((s) => s.settledAt !== undefined)
    .map((s) => s.settledAt! - s.from)
    .sort((a, b) => a - b);
  const stalls = record.events.filter((e) => e.ev === "stall").map((e) => e.t - (e.from ?? e.t));
  const count = (list: readonly { kind?: string; code?: string }[], key: "kind" | "code") =>
    Object.fromEntries([...groupBy(list, (x) => x[key] ?? "?")].map(([k, v]) => [k, v.length]));
  return {
    violations: out,
    stats: {
      seconds: Math.round((record.endedAt - record.startedAt) / 1000),
      nodes: record.params.nodes,
      processes: new Set(record.faults.filter((f) => f.kind === FaultKind.Spawn).map((f) => f.id)).size,
      rounds: rounds.length,
      completions: completed.length,
      faults: count(record.faults, "kind"),
      settles: record.settles.length,
      settleMsMax: times.at(-1) ?? 0,
      settleMsMedian: times[Math.floor(times.length / 2)] ?? 0,
      stalls: stalls.length,
      stallMsMax: Math.max(0, ...stalls),
      retriedErrors: count(
        errors.filter((e) => e.fatal !== true),
        "code",
      ),
    },
  };
}
