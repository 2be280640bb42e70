/**
 * Reading a data directory back into an engine at start (snapshot, then journal, dropping a bad last
 * record), and writing snapshots. File layout and format: src/store/journal.ts, journal-codec.ts.
 */

import {
  closeSync,
  fdatasyncSync,
  openSync,
  readdirSync,
  readFileSync,
  unlinkSync,
  writeSync,
} from "node:fs";
import { basename, join } from "node:path";
import type { Logger } from "../log.js";
import type { DroppedTail, JournalStats } from "./journal.js";
import {
  decodeJournal,
  decodeSnapshot,
  encodeEnd,
  encodeHeader,
  encodeMutation,
  HEADER_BYTES,
  JOURNAL_MAGIC,
  JournalCorruptError,
  SNAPSHOT_MAGIC,
} from "./journal-codec.js";
import { dropTail, pruneDropped } from "./journal-dropped.js";
import { fsStep, fsyncDir, writeFileAtomic } from "./journal-lock.js";
import type { KvEngine, Mutation } from "./kv-engine.js";

/** An opened data directory: the journal to append to and what loading it found. */
export interface Loaded {
  readonly fd: number;
  readonly stats: JournalStats;
}

const FILE = /^(journal|snapshot)-(\d+)$/;
const CHUNK_BYTES = 1024 * 1024;

function applyMutation(engine: KvEngine, m: Mutation): void {
  if (m.op === "batch") for (const member of m.mutations) applyMutation(engine, member);
  else if (m.op === "set") engine.set(m.key, m.value);
  else if (m.op === "append") engine.append(m.key, m.value);
  else if (m.op === "delete") engine.delete(m.key);
  else if (m.op === "push") engine.queuePush(m.key, m.value);
  else engine.queuePop(m.key);
}

/** Generations present in `dir`, by kind; removes temporary files of an interrupted compaction. */
function scan(dir: string): { journals: number[]; snapshots: number[] } {
  const journals: number[] = [];
  const snapshots: number[] = [];
  for (const name of fsStep(`cannot list data directory ${dir}`, () => readdirSync(dir))) {
    const path = join(dir, name);
    if (name.endsWith(".tmp"))
      fsStep(`cannot remove ${path} (left by an interrupted write)`, () => unlinkSync(path));
    const m = FILE.exec(name);
    if (m !== null) (m[1] === "journal" ? journals : snapshots).push(Number(m[2]));
  }
  return { journals, snapshots };
}

/** How `loadDataDir` reads. */
export interface LoadOptions {
  readonly logger: Logger;
  /** Drop a journal's corrupt part instead of refusing it (see `JournalOptions.repair`). */
  readonly repair: boolean;
  /** How many `.dropped-` files to keep (see `JournalOptions.keepDroppedFiles`). */
  readonly keepDroppedFiles: number;
}

/**
 * Replays `dir` into `engine` and opens its current journal for appending (creating it when missing).
 * Throws `JournalCorruptError` for anything unreadable other than a bad last journal record (and, with
 * `repair`, a journal's corrupt part).
 */
export function loadDataDir(engine: KvEngine, dir: string, options: LoadOptions): Loaded {
  const { logger } = options;
  const { journals, snapshots } = scan(dir);
  const generation = Math.max(0, ...snapshots);
  const ahead = journals.filter((g) => g > generation);
  if (ahead.length > 0) {
    throw new JournalCorruptError(
      `${dir}: journal-${ahead[0]} has no snapshot-${ahead[0]} (files are missing)`,
    );
  }
  let snapshotRecords = 0;
  if (snapshots.includes(generation)) {
    const what = join(dir, `snapshot-${generation}`);
    const snapshot = decodeSnapshot(readData(what), what);
    if (snapshot.generation !== generation)
      throw new JournalCorruptError(`${what} holds generation ${snapshot.generation}`);
    for (const m of snapshot.mutations) applyMutation(engine, m);
    snapshotRecords = snapshot.mutations.length;
  }
  const path = join(dir, `journal-${generation}`);
  let replayed: Replayed = { records: 0, journalBytes: HEADER_BYTES, droppedTail: undefined };
  if (journals.includes(generation)) replayed = replayJournal(engine, dir, generation, options);
  else
    fsStep(`cannot create ${path}`, () =>
      writeFileAtomic(dir, `journal-${generation}`, [encodeHeader(JOURNAL_MAGIC, generation)]),
    );
  for (const g of [...journals, ...snapshots]) if (g < generation) removeGeneration(dir, g, logger);
  const saved = replayed.droppedTail?.savedTo;
  pruneDropped(dir, options.keepDroppedFiles, logger, saved === undefined ? undefined : basename(saved));
  const fd = fsStep(`cannot open ${path} for appending`, () => openSync(path, "a", 0o600));
  const { records: journalRecords, journalBytes, droppedTail } = replayed;
  const stats = { generation, snapshotRecords, journalRecords, droppedTail, journalBytes, compactions: 0 };
  return { fd, stats };
}

interface Replayed {
  readonly records: number;
  readonly journalBytes: number;
  readonly droppedTail: DroppedTail | undefined;
}

/**
 * Replays journal `generation` into `engine`, dropping a bad last record, or with `repair` everything
 * from a bad record with intact ones after it (journal-dropped.ts).
 */
function replayJournal(engine: KvEngine, dir: string, generation: number, options: LoadOptions): Replayed {
  const { logger } = options;
  const path = join(dir, `journal-${generation}`);
  const bytes = readData(path);
  const journal = decodeJournal(bytes, path, { repair: options.repair });
  if (journal.generation !== generation) {
    throw new JournalCorruptError(`${path} holds generation ${journal.generation}`);
  }
  for (const m of journal.mutations) applyMutation(engine, m);
  const droppedTail =
    journal.droppedBytes > 0 ? dropTail(dir, `journal-${generation}`, bytes, journal, logger) : undefined;
  if (journal.format === 1) upgradeToFormat2(path, logger);
  return { records: journal.mutations.length, journalBytes: journal.validBytes, droppedTail };
}

/**
 * Rewrites the magic of format-1 journal `path` (every format-1 file is a format-2 one), durably, before
 * a batch record can be appended: an older rdzv then refuses the file instead of misreading a batch.
 * One 8-byte write at offset 0, inside the first disk sector, so it is never torn.
 */
function upgradeToFormat2(path: string, logger: Logger): void {
  fsStep(`cannot upgrade ${path} to journal format 2`, () => {
    const fd = openSync(path, "r+");
    try {
      writeSync(fd, Buffer.from(JOURNAL_MAGIC, "latin1"), 0, 8, 0);
      fdatasyncSync(fd);
    } finally {
      closeSync(fd);
    }
  });
  logger.info("journal: rewrote its header to format 2 (multi-set batch records); older rdzv refuses it", {
    file: path,
  });
}

/** The bytes of data file `path`; a `StoreError` naming it when it cannot be read (a directory, ...). */
function readData(path: string): Buffer {
  return fsStep(`cannot read ${path}`, () => readFileSync(path));
}

/** Deletes generation `g`'s files; a failure only leaves files that the next start deletes. */
export function removeGeneration(dir: string, g: number, logger: Logger): void {
  for (const name of [`journal-${g}`, `snapshot-${g}`]) {
    try {
      unlinkSync(join(dir, name));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") {
        logger.warn("journal: cannot remove an old file", { file: join(dir, name), error: String(err) });
      }
    }
  }
  try {
    fsyncDir(dir);
  } catch {
    // only the removal's durability is at stake
  }
}

/** A snapshot of `engine` as generation `generation`, in chunks of about 1 MiB. */
export function* snapshotChunks(engine: KvEngine, generation: number): Generator<Buffer> {
  let parts: Buffer[] = [encodeHeader(SNAPSHOT_MAGIC, generation)];
  let bytes = 0;
  let count = 0;
  const add = (m: Mutation): Buffer | undefined => {
    const record = encodeMutation(m);
    parts.push(record);
    bytes += record.length;
    count++;
    if (bytes < CHUNK_BYTES) return undefined;
    const chunk = Buffer.concat(parts);
    parts = [];
    bytes = 0;
    return chunk;
  };
  for (const key of engine.keys()) {
    const chunk = add({ op: "set", key, value: engine.get(key)! });
    if (chunk !== undefined) yield chunk;
  }
  for (const [key, items] of engine.queueEntries()) {
    for (const value of items) {
      const chunk = add({ op: "push", key, value });
      if (chunk !== undefined) yield chunk;
    }
  }
  parts.push(encodeEnd(count));
  yield Buffer.concat(parts);
}
