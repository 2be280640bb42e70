/**
 * Reading a data directory back into an engine at start (snapshot, then journal, dropping a torn last
 * record), and writing snapshots. File layout and format: src/store/journal.ts, journal-codec.ts.
 */

import { closeSync, ftruncateSync, openSync, readdirSync, readFileSync, unlinkSync } from "node:fs";
import { join } from "node:path";
import type { Logger } from "../log.js";
import type { JournalStats } from "./journal.js";
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
import { fsyncDir, writeFileAtomic } from "./journal-lock.js";
import type { KvEngine, Mutation } from "./kv-engine.js";

/** An opened data directory: the journal to append to and what loading it found. */
export interface Loaded {
  readonly fd: number;
  readonly stats: JournalStats;
}

const FILE = /^(journal|snapshot)-(\d+)$/;
const CHUNK_BYTES = 1024 * 1024;

function applyMutation(engine: KvEngine, m: Mutation): void {
  if (m.op === "set") engine.set(m.key, m.value);
  else if (m.op === "append") engine.append(m.key, m.value);
  else if (m.op === "delete") engine.delete(m.key);
  else if (m.op === "push") engine.queuePush(m.key, m.value);
  else engine.queuePop(m.key);
}

/** Generations present in `dir`, by kind; removes temporary files of an interrupted compaction. */
function scan(dir: string): { journals: number[]; snapshots: number[] } {
  const journals: number[] = [];
  const snapshots: number[] = [];
  for (const name of readdirSync(dir)) {
    if (name.endsWith(".tmp")) unlinkSync(join(dir, name));
    const m = FILE.exec(name);
    if (m !== null) (m[1] === "journal" ? journals : snapshots).push(Number(m[2]));
  }
  return { journals, snapshots };
}

/**
 * Replays `dir` into `engine` and opens its current journal for appending (creating it when missing).
 * Throws `JournalCorruptError` for anything unreadable other than a torn last journal record.
 */
export function loadDataDir(engine: KvEngine, dir: string, logger: Logger): Loaded {
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
    const snapshot = decodeSnapshot(readFileSync(what), what);
    if (snapshot.generation !== generation)
      throw new JournalCorruptError(`${what} holds generation ${snapshot.generation}`);
    for (const m of snapshot.mutations) applyMutation(engine, m);
    snapshotRecords = snapshot.mutations.length;
  }
  const path = join(dir, `journal-${generation}`);
  let journalRecords = 0;
  let tornBytes = 0;
  let journalBytes = HEADER_BYTES;
  if (journals.includes(generation)) {
    const journal = decodeJournal(readFileSync(path), path);
    if (journal.generation !== generation) {
      throw new JournalCorruptError(`${path} holds generation ${journal.generation}`);
    }
    for (const m of journal.mutations) applyMutation(engine, m);
    journalRecords = journal.mutations.length;
    tornBytes = journal.tornBytes;
    journalBytes = journal.validBytes;
    if (tornBytes > 0) {
      logger.warn("journal: dropping a torn last record (a write cut short when the server stopped)", {
        file: path,
        offset: journal.validBytes,
        bytes: tornBytes,
      });
    }
    if (tornBytes > 0) {
      const fd = openSync(path, "r+");
      ftruncateSync(fd, journal.validBytes);
      closeSync(fd);
    }
  } else {
    writeFileAtomic(dir, `journal-${generation}`, [encodeHeader(JOURNAL_MAGIC, generation)]);
  }
  for (const g of [...journals, ...snapshots]) if (g < generation) removeGeneration(dir, g, logger);
  const fd = openSync(path, "a");
  const stats = { generation, snapshotRecords, journalRecords, tornBytes, journalBytes, compactions: 0 };
  return { fd, stats };
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
