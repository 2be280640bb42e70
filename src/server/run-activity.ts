/**
 * When each run of a store was last written, and which keys it holds: the idle clock behind
 * `rdzv serve --run-ttl` (run-retention.ts). Pure: fed key changes, asked with an injected clock.
 *
 * Keys are grouped by the run they belong to (`runOwnerOf`, run-owner.ts), whether or not that run exists
 * yet; a group is a run while it holds its run-list key (rdzv's `open`, PyTorch's state key), as the
 * dashboard's run list has it (run-keys.ts `runListKey`). A creation or an overwrite of any key of a group
 * is a write; deletions are not (the backends' own round cleaning comes with writes anyway).
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
}

interface Group extends RunGroup {
  readonly keys: Set<string>;
  listKey: string | undefined;
  written: boolean;
  lastWriteMs: number;
}

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
      group = { ...owner, keys: new Set(), listKey: undefined, written: false, lastWriteMs: this.#now() };
      groups.set(owner.runId, group);
    } else if (change === "written") group.written = true;
    group.keys.add(key);
    this.#byKey.set(key, group);
    if (user === runListKeyOf(owner)) {
      group.listKey = key;
      group.written = false;
      group.lastWriteMs = this.#now();
      this.#runs.add(group);
    }
  }

  #delete(group: Group, key: string): void {
    group.keys.delete(key);
    this.#byKey.delete(key);
    if (group.listKey === key) {
      group.listKey = undefined;
      this.#runs.delete(group);
    }
    if (group.keys.size === 0) this.#groups[group.layout].delete(group.runId);
  }

  /** The group of `owner`, if it holds any key. */
  group(owner: RunOwner): RunGroup | undefined {
    return this.#groups[owner.layout].get(owner.runId);
  }

  /**
   * Passes over the runs (a run written since the last pass was written now) and returns those not
   * written for more than `ttlMs`, the longest idle first.
   */
  idleRuns(ttlMs: number): RunGroup[] {
    const now = this.#now();
    const out: Group[] = [];
    for (const run of this.#runs) {
      if (run.written) {
        run.written = false;
        run.lastWriteMs = now;
      } else if (now - run.lastWriteMs > ttlMs) out.push(run);
    }
    return out.sort((a, b) => a.lastWriteMs - b.lastWriteMs);
  }

  /** How long `group` has gone unwritten, ms, by the clock now (0 when written since the last pass). */
  idleMs(group: RunGroup): number {
    return group.written ? 0 : this.#now() - group.lastWriteMs;
  }
}
