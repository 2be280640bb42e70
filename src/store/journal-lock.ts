/**
 * The data directory's lock and the file-system steps a journal needs to be crash-safe (fsync of a
 * directory after a rename or create, atomic replace of a file).
 */

import {
  closeSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readFileSync,
  realpathSync,
  renameSync,
  statSync,
  unlinkSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";
import { RendezvousError, StoreError } from "../errors.js";

/** File-system error codes in words (Node's own messages name neither the file nor, for reads, the path). */
const FS_ERRORS: Record<string, string> = {
  EISDIR: "it is a directory, not a file",
  ENOTDIR: "a part of the path is a file, not a directory",
  ENOSPC: "no space left on the device",
  EDQUOT: "the disk quota is used up",
  EACCES: "permission denied",
  EPERM: "operation not permitted",
  EROFS: "the file system is read-only",
  EIO: "an I/O error",
  ENOENT: "it does not exist",
  ELOOP: "too many symbolic links",
  ENAMETOOLONG: "the name is too long",
};

/**
 * `err` as a `StoreError` saying `what` failed and why in words (`RendezvousError`s pass through):
 * e.g. "cannot read /data/journal-0: it is a directory, not a file (EISDIR)".
 */
export function fsError(what: string, err: unknown): RendezvousError {
  if (err instanceof RendezvousError) return err;
  const e = err as NodeJS.ErrnoException;
  const words = e.code === undefined ? undefined : FS_ERRORS[e.code];
  const why = words === undefined ? (e.message ?? String(err)) : `${words} (${e.code})`;
  return new StoreError(`${what}: ${why}`, undefined, { cause: err });
}

/** Runs `step`, turning a file-system error into `fsError(what, err)`. */
export function fsStep<T>(what: string, step: () => T): T {
  try {
    return step();
  } catch (err) {
    throw fsError(what, err);
  }
}

/** Creates data directory `dir` when missing; throws `StoreError` naming it when it cannot be one. */
export function prepareDataDir(dir: string): void {
  try {
    mkdirSync(dir, { recursive: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EEXIST")
      throw fsError(`cannot create data directory ${dir}`, err);
  }
  if (!fsStep(`cannot use data directory ${dir}`, () => statSync(dir)).isDirectory()) {
    throw new StoreError(`data directory ${dir} is a file, not a directory`);
  }
}

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
  const real = fsStep(`cannot use data directory ${dir}`, () => realpathSync(dir));
  if (heldHere.has(real)) throw new StoreError(`data directory ${dir} is in use by this process`);
  const path = join(dir, LOCK_FILE);
  for (let attempt = 0; ; attempt++) {
    let fd: number;
    try {
      fd = openSync(path, "wx");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST" || attempt > 0)
        throw fsError(`cannot create the lock file ${path}`, err);
      const text = readLock(path);
      const holder = Number.parseInt(text, 10);
      if (Number.isSafeInteger(holder) && holder !== process.pid && alive(holder)) {
        throw new StoreError(`data directory ${dir} is in use by process ${holder} (see ${path})`);
      }
      // stale: its owner is gone (or had this pid before a restart, as a container's pid 1)
      fsStep(`cannot remove the stale lock file ${path}`, () => unlinkSync(path));
      continue;
    }
    try {
      writeAll(fd, Buffer.from(`${process.pid}\n`));
    } catch (err) {
      // An empty LOCK would be left for the next start to puzzle over.
      closeSync(fd);
      unlinkSync(path);
      throw fsError(`cannot write the lock file ${path}`, err);
    }
    closeSync(fd);
    break;
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

/** The text of lock file `path`. */
function readLock(path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "EISDIR") {
      throw new StoreError(`${path} is a directory, not rdzv's lock file: remove it`, undefined, {
        cause: err,
      });
    }
    throw fsError(`cannot read the lock file ${path}`, err);
  }
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
