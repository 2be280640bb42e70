/**
 * When each run of a store was last written, and which keys it holds: the idle clock behind
 * `rdzv serve --run-ttl` (run-retention.ts). Pure: fed key changes, asked with an injected clock.
 *
 * Keys are grouped by the run they belong to (`runOwnerOf`, run-owner.ts), whether or not that run exists
 * yet; a group is a run while it holds its run-list key (rdzv's `open`, PyTorch's state key), as the
 * dashboard's run list has it (run-keys.ts `runListKey`). A creation or an overwrite of any key of a group
 * is a write; deletions are not (the backends' own round cleaning comes with writes anyway).
 *
 * A group that was a run and is no more, its list key gone while keys of it remain, is a *remnant*: so is
 * a group of a run id whose run ended while followed here (all its keys deleted, as retention deletes
 * them) that keys come back to, such as the keep-alive of an agent that stalled through its run's expiry.
 * Nothing lists a remnant and nothing of the run reads it again, so it ages like a run (`idleRuns`). A
 * group that never was a run (keys of a run id without its list key, from before a restart too) is not
 * one: it may be a run in the making, or keys that only look like a run's. The ended run ids are
 * remembered up to `MAX_ENDED_RUNS`, the oldest forgotten first.
 *
 * A write costs a map lookup and a flag (keep-alives are most of a store's writes, and reading a clock
 * or the key's layout each time would cost more than the rest of the write): `idleRuns` turns the flags
 * into times when it passes over the runs. So a run's idle time counts from the first pass after its last
 * write (a sweep interval late at most: never early), or from when the group was first seen or became a
 * run (a restart from a data directory: the restart).
 */

import { type RunOwner, runListKeyOf, runOwnerOf } from "./run-owner.js";

/** The keys of one run (or of a run id without its run-list key) and when one was last written. */
export interface RunGroup extends RunOwner {
  /** The keys, as the caller named them (engine keys): what deleting the run deletes. */
  readonly keys: ReadonlySet<string>;
  /** The run-list key as the caller names it, while the group holds it; else `undefined` (no run). */
  readonly listKey: string | undefined;
  /** A key was written since the last pass over the runs (`idleRuns`). */
  readonly written: boolean;
  /** Clock time of the last pass that found a write, of the first sighting, or of becoming a run. */
  readonly lastWriteMs: number;
  /** A remnant of an ended run (see the file comment): no list key, yet aged like a run. */
  readonly remnant: boolean;
}

interface Group extends RunGroup {
  readonly keys: Set<string>;
  listKey: string | undefined;
  written: boolean;
  lastWriteMs: number;
  remnant: boolean;
}

/** Ended runs remembered, so that keys coming back to one make a remnant (see the file comment). */
export const MAX_ENDED_RUNS = 100_000;

/**
 * A key change as `RunActivity.note` takes it: created or overwritten, deleted, or "held": found in the
 * store when following it starts (placed in its group, not a write: its clock starts then).
 */
export type KeyChange = "written" | "deleted" | "held";

/** The idle clocks of a store's runs; see the file comment. */
export class RunActivity {
  readonly #now: () => number;
  readonly #userKey: (key: string) => string | undefined;
  /** Group of each key held that belongs to a run id. */
  readonly #byKey = new Map<string, Group>();
  /** By layout, then run id. */
  readonly #groups = { rdzv: new Map<string, Group>(), pytorch: new Map<string, Group>() };
  /** The groups holding their run-list key. */
  readonly #runs = new Set<Group>();
  /** The remnants of ended runs. */
  readonly #remnants = new Set<Group>();
  /** Runs that ended while followed (`layout` NUL `runId`), oldest first; bounded by `MAX_ENDED_RUNS`. */
  readonly #ended = new Set<string>();

  /**
   * `now`: the clock, in ms (monotonic is best: a wall clock stepped forward would age every run).
   * `userKey`: the user key that a key as the caller names it holds (`undefined`: none, as for a key
   * without the wire's "/"); default: the key itself.
   */
  constructor(now: () => number, userKey: (key: string) => string | undefined = (k) => k) {
    this.#now = now;
    this.#userKey = userKey;
  }

  /** Runs known (groups holding their run-list key). */
  get runCount(): number {
    return this.#runs.size;
  }

  /** Remnants of ended runs known (see the file comment). */
  get remnantCount(): number {
    return this.#remnants.size;
  }

  /** Groups known, runs or not. */
  get groupCount(): number {
    return this.#groups.rdzv.size + this.#groups.pytorch.size;
  }

  /** `key` was created or overwritten, or deleted, or is held (see `KeyChange`). Keys of no run are ignored. */
  note(key: string, change: KeyChange): void {
    const known = this.#byKey.get(key);
    if (known !== undefined) {
      if (change === "written") known.written = true;
      else if (change === "deleted") this.#delete(known, key);
      return;
    }
    if (change === "deleted") return;
    const user = this.#userKey(key);
    const owner = user === undefined ? undefined : runOwnerOf(user);
    if (owner === undefined) return;
    const groups = this.#groups[owner.layout];
    let group = groups.get(owner.runId);
    if (group === undefined) {
      const remnant = this.#ended.has(endedKey(owner));
      group = {
        ...owner,
        keys: new Set(),
        listKey: undefined,
        written: false,
        lastWriteMs: this.#now(),
        remnant,
      };
      groups.set(owner.runId, group);
      if (remnant) this.#remnants.add(group);
    } else if (change === "written") group.written = true;
    group.keys.add(key);
    this.#byKey.set(key, group);
    if (user === runListKeyOf(owner)) {
      group.listKey = key;
      group.written = false;
      group.lastWriteMs = this.#now();
      this.#runs.add(group);
      if (group.remnant) {
        // The run id is a run again: neither remnant nor ended.
        group.remnant = false;
        this.#remnants.delete(group);
        this.#ended.delete(endedKey(group));
      }
    }
  }

  #delete(group: Group, key: string): void {
    group.keys.delete(key);
    this.#byKey.delete(key);
    if (group.listKey === key) {
      group.listKey = undefined;
      this.#runs.delete(group);
      group.remnant = true;
      this.#remnants.add(group);
    }
    if (group.keys.size === 0) {
      this.#groups[group.layout].delete(group.runId);
      if (group.remnant) {
        this.#remnants.delete(group);
        this.#endRun(group);
      }
    }
  }

  /** Remembers that `owner`'s run ended, as its newest entry; forgets the oldest past the bound. */
  #endRun(owner: RunOwner): void {
    const key = endedKey(owner);
    this.#ended.delete(key);
    this.#ended.add(key);
    if (this.#ended.size > MAX_ENDED_RUNS) this.#ended.delete(this.#ended.values().next().value!);
  }

  /** The group of `owner`, if it holds any key. */
  group(owner: RunOwner): RunGroup | undefined {
    return this.#groups[owner.layout].get(owner.runId);
  }

  /**
   * Passes over the runs and the remnants of ended runs (one written since the last pass was written
   * now) and returns those not written for more than `ttlMs`, the longest idle first.
   */
  idleRuns(ttlMs: number): RunGroup[] {
    const now = this.#now();
    const out: Group[] = [];
    for (const groups of [this.#runs, this.#remnants]) {
      for (const run of groups) {
        if (run.written) {
          run.written = false;
          run.lastWriteMs = now;
        } else if (now - run.lastWriteMs > ttlMs) out.push(run);
      }
    }
    return out.sort((a, b) => a.lastWriteMs - b.lastWriteMs);
  }

  /** How long `group` has gone unwritten, ms, by the clock now (0 when written since the last pass). */
  idleMs(group: RunGroup): number {
    return group.written ? 0 : this.#now() - group.lastWriteMs;
  }
}

function endedKey(owner: RunOwner): string {
  return `${owner.layout}\0${owner.runId}`;
}
