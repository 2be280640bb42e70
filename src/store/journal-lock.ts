/**
 * The data directory's lock (an abstract unix socket on Linux, a pid file elsewhere) and the file-system
 * steps a journal needs to be crash-safe (fsync of a directory after a rename or create, atomic replace
 * of a file), with errors that name the file and the problem.
 */

import { createHash } from "node:crypto";
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
import { createServer } from "node:net";
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
  EFBIG: "the file would pass the largest size allowed (the process's file-size limit or the file system's)",
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
    // Private (as etcd's): the directory holds every key and value. The mode only applies to what is created.
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EEXIST")
      throw fsError(`cannot create data directory ${dir}`, err);
  }
  if (!fsStep(`cannot use data directory ${dir}`, () => statSync(dir)).isDirectory()) {
    throw new StoreError(`data directory ${dir} is a file, not a directory`);
  }
}

const LOCK_FILE = "LOCK";
/** Directories this process holds (by real path), for a clear message when it opens one twice. */
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
 * Takes `dir`'s lock; returns the function that releases it. Throws `StoreError` when another process
 * holds it (naming its pid when the LOCK file tells), or this one does.
 *
 * On Linux the lock is an abstract-namespace unix socket named after the directory's device and inode,
 * which only one process can bind and which the kernel releases when that process dies, however it
 * dies: no stale lock to detect, no race between processes starting together, and a stale pid that a
 * live, unrelated process got since blocks nothing. The holder writes its pid to `LOCK` (atomically) for
 * the message others get. The abstract namespace belongs to the network namespace: containers that share
 * the directory but not the network namespace do not see each other's lock.
 *
 * Elsewhere the lock is the `LOCK` file itself, created exclusively, holding the pid; one left by a
 * process that no longer runs (a server killed with SIGKILL) is taken over.
 */
export function lockDataDir(dir: string): () => void {
  const real = fsStep(`cannot use data directory ${dir}`, () => realpathSync(dir));
  if (heldHere.has(real)) throw new StoreError(`data directory ${dir} is in use by this process`);
  const path = join(dir, LOCK_FILE);
  const unbind = process.platform === "linux" ? kernelLock(dir, path) : pidFileLock(dir, path);
  heldHere.add(real);
  let held = true;
  return () => {
    if (!held) return;
    held = false;
    heldHere.delete(real);
    try {
      unlinkSync(path); // first: once unbound, the next holder writes its own
    } catch {
      // already gone
    }
    unbind();
  };
}

/** The abstract socket lock of `dir` (see `lockDataDir`); returns the function that unbinds it. */
function kernelLock(dir: string, path: string): () => void {
  const { dev, ino } = fsStep(`cannot use data directory ${dir}`, () => statSync(dir));
  const name = createHash("sha256").update(`${dev}:${ino}`).digest("hex").slice(0, 40);
  const server = createServer();
  // A failed bind is reported on the next tick as well; it is read at once below.
  server.on("error", () => {});
  // The bind happens inside listen(): `listening` says at once whether this process got the name.
  server.listen({ path: `\0rdzv-data-dir-lock-${name}` });
  if (!server.listening) {
    server.close();
    const holder = lockHolder(path);
    const who = holder === undefined ? "another process" : `process ${holder}`;
    throw new StoreError(`data directory ${dir} is in use by ${who} (see ${path})`);
  }
  server.unref();
  const unbind = (): void => {
    server.close();
  };
  try {
    writeFileAtomic(dir, LOCK_FILE, [Buffer.from(`${process.pid}\n`)]);
  } catch (err) {
    try {
      unlinkSync(`${path}.tmp`);
    } catch {
      // not created
    }
    unbind();
    throw (err as NodeJS.ErrnoException).code === "EISDIR"
      ? notALockFile(path, err)
      : fsError(`cannot write the lock file ${path}`, err);
  }
  return unbind;
}

/**
 * The pid in lock file `path`, if it names a live process (best effort, for a message: a holder that
 * just bound the socket may not have written its pid yet, and the file may still name the last one).
 */
function lockHolder(path: string): number | undefined {
  try {
    const pid = Number.parseInt(readFileSync(path, "utf8"), 10);
    return Number.isSafeInteger(pid) && pid > 0 && alive(pid) ? pid : undefined;
  } catch {
    return undefined;
  }
}

/** The `LOCK` file as the lock (see `lockDataDir`); returns a no-op: releasing removes the file. */
function pidFileLock(dir: string, path: string): () => void {
  for (let attempt = 0; ; attempt++) {
    let fd: number;
    try {
      fd = openSync(path, "wx", 0o600);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST" || attempt > 0)
        throw fsError(`cannot create the lock file ${path}`, err);
      const holder = Number.parseInt(readLock(path), 10);
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
    return () => {};
  }
}

/** The text of lock file `path`. */
function readLock(path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "EISDIR") throw notALockFile(path, err);
    throw fsError(`cannot read the lock file ${path}`, err);
  }
}

function notALockFile(path: string, cause: unknown): StoreError {
  return new StoreError(`${path} is a directory, not rdzv's lock file: remove it`, undefined, { cause });
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
  const fd = openSync(tmp, "w", 0o600);
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
