/**
 * The data directory's lock and the file-system steps a journal needs to be crash-safe (fsync of a
 * directory after a rename or create, atomic replace of a file).
 */

import {
  closeSync,
  fsyncSync,
  openSync,
  readFileSync,
  realpathSync,
  renameSync,
  unlinkSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";
import { StoreError } from "../errors.js";

const LOCK_FILE = "LOCK";
/** Directories this process holds: its own pid in a LOCK file is stale only when not listed here. */
const heldHere = new Set<string>();

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/**
 * Takes `dir`'s lock: a `LOCK` file holding this process's pid. A lock left by a process that no longer
 * runs (a server killed with SIGKILL) is taken over. Throws `StoreError` when a live process holds it.
 * Returns the function that releases it.
 */
export function lockDataDir(dir: string): () => void {
  const real = realpathSync(dir);
  if (heldHere.has(real)) throw new StoreError(`data directory ${dir} is in use by this process`);
  const path = join(dir, LOCK_FILE);
  for (let attempt = 0; ; attempt++) {
    try {
      const fd = openSync(path, "wx");
      writeSync(fd, `${process.pid}\n`);
      closeSync(fd);
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST" || attempt > 0) throw err;
      const holder = Number.parseInt(readFileSync(path, "utf8"), 10);
      if (Number.isSafeInteger(holder) && holder !== process.pid && alive(holder)) {
        throw new StoreError(`data directory ${dir} is in use by process ${holder} (see ${path})`);
      }
      unlinkSync(path); // stale: its owner is gone (or had this pid before a restart, as a container's pid 1)
    }
  }
  heldHere.add(real);
  let held = true;
  return () => {
    if (!held) return;
    held = false;
    heldHere.delete(real);
    try {
      unlinkSync(path);
    } catch {
      // already gone
    }
  };
}

/** Writes all of `buf` at the file's position (regular files may take a large write in parts). */
export function writeAll(fd: number, buf: Uint8Array): void {
  let done = 0;
  while (done < buf.length) done += writeSync(fd, buf, done, buf.length - done);
}

/** fsyncs a directory, so that a create, rename or unlink in it survives a machine crash. */
export function fsyncDir(dir: string): void {
  const fd = openSync(dir, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Writes `chunks` to `path` through a temporary file: fsync, rename, fsync of the directory. */
export function writeFileAtomic(dir: string, name: string, chunks: Iterable<Buffer>): number {
  const tmp = join(dir, `${name}.tmp`);
  const fd = openSync(tmp, "w");
  let bytes = 0;
  try {
    for (const chunk of chunks) {
      writeAll(fd, chunk);
      bytes += chunk.length;
    }
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, join(dir, name));
  fsyncDir(dir);
  return bytes;
}
