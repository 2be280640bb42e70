/**
 * Durability for a `KvEngine` (`rdzv serve --data-dir DIR`): an append-only journal of mutations,
 * replayed at start, compacted into a snapshot when it grows.
 *
 * Every mutation is written to the journal (a `write(2)` into the page cache) before it is applied, so
 * before its reply exists: a server killed in any way (SIGKILL included) loses nothing it acknowledged.
 * What a machine crash or power loss may lose depends on the fsync policy:
 *
 * - `always`: fdatasync after every mutation; nothing acknowledged is lost (slow: one disk flush each).
 * - `interval` (default): fdatasync every `fsyncIntervalMs` (100 ms) when something was written; at
 *   most that window of acknowledged mutations is lost.
 * - `never`: the kernel writes back when it likes (Linux: within ~30 s).
 *
 * Files in DIR: `LOCK` (pid of the owner), `snapshot-<G>` (the whole store at generation G, absent for
 * G = 0) and `journal-<G>` (mutations since; a multi-set is one batch record, restored whole or not at
 * all). A bad last record is dropped with a warning: one cut short (a write that did not finish,
 * whatever record-shaped bytes its value holds), or one complete by its length but damaged (a machine
 * crash can leave a full-length tail of garbage), whose bytes are first saved to
 * `journal-<G>.dropped-<offset>` (journal-dropped.ts; each open keeps the newest 5 such files). A bad
 * record with intact records after it is a `JournalCorruptError` (`repairable`: the `repair` option
 * keeps what comes before it); anything else unreadable is one too. Waiters, watches and on-disconnect
 * registrations belong to connections and are not kept.
 */

import { closeSync, fdatasyncSync, openSync } from "node:fs";
import { join } from "node:path";
import { InvalidArgumentError } from "../errors.js";
import { modeOpenToOthers } from "../file-mode.js";
import { type Logger, silentLogger } from "../log.js";
import { encodeHeader, encodeMutation, HEADER_BYTES, JOURNAL_MAGIC } from "./journal-codec.js";
import { type Loaded, loadDataDir, removeGeneration, snapshotChunks } from "./journal-files.js";
import { fsError, lockDataDir, prepareDataDir, writeAll, writeFileAtomic } from "./journal-lock.js";
import { type KvEngine, type Mutation, StorageFailedError } from "./kv-engine.js";

export { JournalCorruptError } from "./journal-codec.js";
export { StorageFailedError } from "./kv-engine.js";

/** When the journal is flushed to disk (see the module comment). */
export const FsyncPolicy = { Always: "always", Interval: "interval", Never: "never" } as const;
export type FsyncPolicy = (typeof FsyncPolicy)[keyof typeof FsyncPolicy];

/** Options of `openJournal`. */
export interface JournalOptions {
  /** The data directory (created when missing). */
  readonly dir: string;
  /** Default `interval`. */
  readonly fsync?: FsyncPolicy;
  /** The period of `interval`, ms (default 100). */
  readonly fsyncIntervalMs?: number;
  /** Compact once the journal is past this many bytes and past the last snapshot's size (default 64 MiB). */
  readonly compactBytes?: number;
  readonly logger?: Logger;
  /**
   * Start on a journal corrupted before its end (a bad record with intact records after it, which is
   * otherwise a `JournalCorruptError` with `repairable` set): keep the records before the bad one, save
   * the bytes from it on to `journal-<G>.dropped-<offset>`, truncate there, and warn saying what was
   * kept and dropped (`stats.droppedTail`). Default false. Other damage is refused all the same.
   */
  readonly repair?: boolean;
  /**
   * How many `journal-<G>.dropped-*` files (bytes dropped at an open, kept for forensics) stay in the
   * directory: each open removes all but the newest this many, logging their names; the file it saved
   * itself is always kept, as one of them (default 5, at least 1).
   */
  readonly keepDroppedFiles?: number;
  /**
   * Called once when the journal cannot be written (disk full, I/O error, a file-size limit): a
   * `StorageFailedError` naming the file and the error code. From then on every mutation throws that
   * error (so nothing unrecorded is acknowledged); the owner should stop serving.
   */
  readonly onError?: (err: StorageFailedError) => void;
}

/** Journal bytes dropped at open (see `DecodedJournal.tail` in journal-codec.ts). */
export interface DroppedTail {
  /**
   * `cut short`: a last record that reaches past the end of the file (a write that did not finish);
   * `damaged`: a last record complete by its length, with a bad checksum or contents; `corrupt` (only
   * with `repair`): a bad record with intact records after it, dropped with everything after it.
   */
  readonly kind: "cut short" | "damaged" | "corrupt";
  /** Where the dropped bytes began in the journal, which was truncated there. */
  readonly offset: number;
  readonly bytes: number;
  /** Intact-looking records among them (see `DecodedJournal.droppedRecords`). */
  readonly records: number;
  /** For `corrupt`: what was wrong. */
  readonly reason?: string;
  /**
   * The file (`journal-<G>.dropped-<offset>`) the dropped bytes were saved to before truncation: all but
   * a plain write cut short (one without record-shaped bytes), which a killed server leaves.
   */
  readonly savedTo?: string;
}

/** What a journal did, for logs and tests. */
export interface JournalStats {
  generation: number;
  /** Records replayed at open: from the snapshot, and from the journal. */
  snapshotRecords: number;
  journalRecords: number;
  /** The bad last journal record dropped at open, if there was one. */
  droppedTail: DroppedTail | undefined;
  journalBytes: number;
  compactions: number;
}

const DEFAULTS = {
  fsync: FsyncPolicy.Interval,
  fsyncIntervalMs: 100,
  compactBytes: 64 * 1024 * 1024,
  repair: false,
  keepDroppedFiles: 5,
};
const POLICIES = new Set<string>(Object.values(FsyncPolicy));

type ResolvedOptions = Required<Omit<JournalOptions, "onError">> & Pick<JournalOptions, "onError">;

/** An open journal attached to an engine. Create it with `openJournal`. */
export class Journal implements Disposable {
  readonly dir: string;
  readonly stats: JournalStats;
  readonly #engine: KvEngine;
  readonly #options: ResolvedOptions;
  readonly #release: () => void;
  #fd: number;
  #timer: NodeJS.Timeout | undefined;
  #dirty = false;
  #snapshotBytes = 0;
  #compacting = false;
  #failure: StorageFailedError | undefined;
  #closed = false;

  /** @internal Use `openJournal`. */
  constructor(engine: KvEngine, options: ResolvedOptions, release: () => void, loaded: Loaded) {
    this.dir = options.dir;
    this.#engine = engine;
    this.#options = options;
    this.#release = release;
    this.#fd = loaded.fd;
    this.stats = loaded.stats;
    engine.setMutationHook((m) => this.record(m));
    if (options.fsync === FsyncPolicy.Interval) {
      this.#timer = setInterval(() => this.flush(), options.fsyncIntervalMs);
      this.#timer.unref();
    }
  }

  /** The error that stopped the journal, if one did. */
  get failure(): StorageFailedError | undefined {
    return this.#failure;
  }

  /** fdatasyncs what was written since the last flush. */
  flush(): void {
    if (!this.#dirty || this.#failure !== undefined || this.#closed) return;
    this.#dirty = false;
    try {
      fdatasyncSync(this.#fd);
    } catch (err) {
      this.fail(this.journalPath(), "fdatasync", err);
    }
  }

  /**
   * Detaches from the engine (later mutations are not recorded), flushes and closes the file and
   * releases the directory. Idempotent.
   */
  close(): void {
    if (this.#closed) return;
    this.#engine.setMutationHook(undefined);
    clearInterval(this.#timer);
    if (this.#failure === undefined) {
      this.#dirty = true;
      this.flush();
    }
    this.#closed = true;
    closeSync(this.#fd);
    this.#release();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  private record(m: Mutation): void {
    if (this.#failure !== undefined) throw this.#failure;
    const bytes = encodeMutation(m);
    try {
      writeAll(this.#fd, bytes);
      if (this.#options.fsync === FsyncPolicy.Always) fdatasyncSync(this.#fd);
      else this.#dirty = true;
    } catch (err) {
      throw this.fail(this.journalPath(), "write", err);
    }
    this.stats.journalBytes += bytes.length;
    const threshold = Math.max(this.#options.compactBytes, this.#snapshotBytes);
    if (this.stats.journalBytes > threshold && !this.#compacting) {
      this.#compacting = true;
      // After the mutation being recorded is applied, so that the snapshot holds it.
      setImmediate(() => this.compact());
    }
  }

  /** Writes a snapshot of the engine as generation G+1, starts journal G+1, drops generation G. */
  compact(): void {
    this.#compacting = false;
    if (this.#closed || this.#failure !== undefined) return;
    const { dir } = this;
    const old = this.stats.generation;
    const next = old + 1;
    let file = join(dir, `snapshot-${next}`);
    try {
      this.#snapshotBytes = writeFileAtomic(dir, `snapshot-${next}`, snapshotChunks(this.#engine, next));
      file = join(dir, `journal-${next}`);
      writeFileAtomic(dir, `journal-${next}`, [encodeHeader(JOURNAL_MAGIC, next)]);
      const fd = openSync(file, "a", 0o600);
      closeSync(this.#fd);
      this.#fd = fd;
      this.#dirty = false;
    } catch (err) {
      // Past the snapshot's rename, generation G is no longer what a restart reads: stop recording.
      this.fail(file, "compaction", err);
      return;
    }
    this.stats.generation = next;
    this.stats.journalBytes = HEADER_BYTES;
    this.stats.compactions++;
    removeGeneration(dir, old, this.#options.logger);
    this.#options.logger.info("journal compacted", {
      dir,
      generation: next,
      snapshotBytes: this.#snapshotBytes,
    });
  }

  private journalPath(): string {
    return join(this.dir, `journal-${this.stats.generation}`);
  }

  /** Stops recording for good: `file` could not be written (`step`: write, fdatasync, compaction). */
  private fail(file: string, step: string, err: unknown): StorageFailedError {
    if (this.#failure !== undefined) return this.#failure;
    const errno = (err as NodeJS.ErrnoException).code;
    const { message } = fsError(`cannot ${step === "compaction" ? "compact into" : step} ${file}`, err);
    this.#failure = new StorageFailedError(message, file, { cause: err });
    this.#options.logger.error("journal: storage error; every mutation is refused from now on", {
      file,
      step,
      errno: errno ?? "none",
      error: message,
    });
    this.#options.onError?.(this.#failure);
    return this.#failure;
  }
}

function resolveOptions(options: JournalOptions): ResolvedOptions {
  const o = { ...DEFAULTS, logger: silentLogger, ...options };
  if (typeof o.dir !== "string" || o.dir.trim() === "") {
    throw new InvalidArgumentError(`journal dir must be a non-empty path, got ${JSON.stringify(o.dir)}`);
  }
  if (!POLICIES.has(o.fsync)) {
    throw new InvalidArgumentError(
      `fsync must be one of ${[...POLICIES].join(", ")}, got ${JSON.stringify(o.fsync)}`,
    );
  }
  for (const name of ["fsyncIntervalMs", "compactBytes"] as const) {
    if (!Number.isSafeInteger(o[name]) || o[name] < 1) {
      throw new InvalidArgumentError(`${name} must be a positive integer, got ${String(o[name])}`);
    }
  }
  if (!Number.isSafeInteger(o.keepDroppedFiles) || o.keepDroppedFiles < 1) {
    throw new InvalidArgumentError(
      `keepDroppedFiles must be an integer >= 1, got ${String(o.keepDroppedFiles)}`,
    );
  }
  return o;
}

/**
 * Opens the data directory `options.dir` for `engine`, which must be empty: takes the directory's lock,
 * replays the snapshot and journal into the engine, and records every later mutation. Throws
 * `JournalCorruptError` (code `RDZV_STATE`) when a file cannot be read back, `StoreError` when another
 * live process holds the directory or a file-system step fails (naming the file and the problem: not a
 * directory, a directory where a file should be, no space left, ...), `InvalidArgumentError` for bad
 * options.
 */
export function openJournal(engine: KvEngine, options: JournalOptions): Journal {
  const resolved = resolveOptions(options);
  if (engine.size !== 0 || engine.queueEntries().next().done !== true) {
    throw new InvalidArgumentError("openJournal needs an empty engine to replay into");
  }
  prepareDataDir(resolved.dir);
  warnIfShared(resolved.dir, resolved.logger);
  const release = lockDataDir(resolved.dir);
  try {
    const loaded = loadDataDir(engine, resolved.dir, resolved);
    return new Journal(engine, resolved, release, loaded);
  } catch (err) {
    release();
    throw err;
  }
}

/**
 * Warns (as etcd does) when the data directory, which holds every key and value, is open to other users:
 * rdzv creates it 700, but one that existed keeps its mode.
 */
function warnIfShared(dir: string, logger: Logger): void {
  const mode = modeOpenToOthers(dir); // undefined also when it cannot be stat'ed: lockDataDir names why
  if (mode === undefined) return;
  logger.warn(
    `data directory ${dir} is open to other users (mode ${mode.toString(8)}): it holds every key and value; chmod 700 it`,
    { dir, mode: mode.toString(8) },
  );
}
