/**
 * What opening a data directory does with journal bytes it cannot replay (journal-files.ts): truncates
 * the journal after its last intact record, after a warning, and first saves the dropped bytes to
 * `journal-<G>.dropped-<offset>` when they may matter to someone: a damaged record (not what a stopped
 * server leaves, so evidence), a cut-short one holding record-shaped bytes, or everything after the bad
 * record of a journal repaired (`repair`). A plain write cut short is what a killed server leaves and is
 * not saved.
 *
 * Saved files are kept for forensics, but not forever: each open keeps the newest `keep` of them
 * (by modification time; the one it saved itself always among them) and removes the rest, saying which
 * (`pruneDropped`).
 */

import {
  closeSync,
  existsSync,
  ftruncateSync,
  lstatSync,
  openSync,
  readdirSync,
  type Stats,
  unlinkSync,
} from "node:fs";
import { join } from "node:path";
import type { Logger } from "../log.js";
import type { DroppedTail } from "./journal.js";
import type { DecodedJournal } from "./journal-codec.js";
import { fsError, fsStep, writeFileAtomic } from "./journal-lock.js";

const WHY = {
  "cut short": "journal: dropping a torn last record (a write cut short when the server stopped)",
  damaged:
    "journal: dropping a damaged last record (complete, but its checksum or contents are wrong: a " +
    "machine crash can leave such a tail); its bytes are saved",
  corrupt:
    "journal: repairing a corrupt journal: keeping the records before the bad one, dropping it and " +
    "everything after it; the dropped bytes are saved",
} as const;

/**
 * Drops `journal`'s bad tail from journal file `name` in `dir` (`bytes`: its contents) as the module
 * comment says. Throws, leaving the journal as it was, when bytes to save cannot be saved.
 */
export function dropTail(
  dir: string,
  name: string,
  bytes: Buffer,
  journal: DecodedJournal,
  logger: Logger,
): DroppedTail {
  const path = join(dir, name);
  const offset = journal.validBytes;
  const kind = journal.tail ?? "cut short";
  const records = journal.droppedRecords;
  const tail = bytes.subarray(offset);
  let savedTo: string | undefined;
  if (kind !== "cut short" || records > 0) {
    let saved = `${name}.dropped-${offset}`;
    for (let n = 2; existsSync(join(dir, saved)); n++) saved = `${name}.dropped-${offset}.${n}`;
    savedTo = join(dir, saved);
    try {
      writeFileAtomic(dir, saved, [tail]);
    } catch (err) {
      throw fsError(
        `${path}: cannot save the bytes from offset ${offset} to ${savedTo} before dropping them`,
        err,
      );
    }
  }
  const fields: Record<string, unknown> = { file: path, offset, bytes: tail.length };
  if (kind === "corrupt") {
    fields.reason = journal.corruption;
    fields.recordsKept = journal.mutations.length;
    fields.intactRecordsDropped = records;
  } else if (records > 0) {
    fields.recordShapedBytesInside = records;
  }
  logger.warn(
    kind === "cut short" && savedTo !== undefined ? `${WHY[kind]}; its bytes are saved` : WHY[kind],
    savedTo === undefined ? fields : { ...fields, savedTo },
  );
  fsStep(`cannot truncate ${path} after its last intact record`, () => {
    const fd = openSync(path, "r+");
    try {
      ftruncateSync(fd, offset);
    } finally {
      closeSync(fd);
    }
  });
  return {
    kind,
    offset,
    bytes: tail.length,
    records,
    ...(journal.corruption === undefined ? {} : { reason: journal.corruption }),
    ...(savedTo === undefined ? {} : { savedTo }),
  };
}

const DROPPED = /^journal-\d+\.dropped-\d+(\.\d+)?$/;

/**
 * Removes all but the newest `keep` (at least 1) `journal-<G>.dropped-*` files in `dir` (newest by
 * modification time, then by name), logging the ones removed. `saved`, the file this open saved (its
 * name), is always kept, as one of the `keep`: its warning points to it, and an older file's time may lie
 * ahead of the clock (a clock set back after a crash, files copied in). Only regular files count: a
 * symbolic link or a folder under such a name was not written by rdzv and is left alone, as is an entry
 * that cannot be examined. A file that cannot be removed is only a warning.
 */
export function pruneDropped(dir: string, keep: number, logger: Logger, saved?: string): void {
  const files: { name: string; mtimeMs: number }[] = [];
  for (const name of fsStep(`cannot list data directory ${dir}`, () => readdirSync(dir))) {
    if (!DROPPED.test(name)) continue;
    let stat: Stats;
    try {
      stat = lstatSync(join(dir, name));
    } catch {
      continue; // gone since the listing
    }
    if (stat.isFile()) files.push({ name, mtimeMs: stat.mtimeMs });
  }
  files.sort(
    (a, b) =>
      Number(b.name === saved) - Number(a.name === saved) ||
      b.mtimeMs - a.mtimeMs ||
      b.name.localeCompare(a.name, "en", { numeric: true }),
  );
  const old = files.slice(keep);
  if (old.length === 0) return;
  const removed: string[] = [];
  for (const { name } of old) {
    const path = join(dir, name);
    try {
      unlinkSync(path);
      removed.push(path);
    } catch (err) {
      logger.warn("journal: cannot remove an old dropped-bytes file", { file: path, error: String(err) });
    }
  }
  logger.info(`journal: removed ${removed.length} old dropped-bytes files, keeping the newest ${keep}`, {
    removed,
    kept: files.slice(0, keep).map(({ name }) => join(dir, name)),
  });
}
