/**
 * The I/O of torchrun's worker error files: the agent's private folder of them, bounded reads, and the
 * agent's own error file. torchrun's layout (`DefaultLogsSpecs.reify`): a temporary folder per run, then
 * `attempt_<restart count>/<local rank>/error.json`, the attempt's folder emptied before its workers start.
 * torchrun never removes its folder; rdzv removes its own at the end but keeps the error files a failure
 * report names (`removeExcept`), so the paths it printed still exist.
 */

import { constants, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { open, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, sep } from "node:path";
import { errorFilePath } from "./env.js";
import { type ErrorFileRead, MAX_ERROR_FILE_BYTES, parseErrorFile } from "./error-file.js";
import { isFailure, type ObservedFailure, type WorkerExit } from "./policy.js";

/** A folder of worker error files, private to this agent (mode 0700); see the module comment. */
export class ErrorFileDir {
  /** The folder; removed by `remove()` (or all but some files by `removeExcept()`). */
  readonly path: string;

  /** @internal Use `createErrorFileDir`. */
  constructor(path: string) {
    this.path = path;
  }

  /**
   * Empties (or creates) the folder of attempt `restartCount`, with a folder for each of `nprocPerNode`
   * workers, and returns it: no error file of an earlier attempt is read as a new one. Throws the file
   * system's error when that fails.
   */
  prepareAttempt(restartCount: number, nprocPerNode: number): string {
    const dir = join(this.path, `attempt_${restartCount}`);
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir, { mode: 0o700 });
    for (let i = 0; i < nprocPerNode; i++) mkdirSync(join(dir, String(i)), { mode: 0o700 });
    return dir;
  }

  /**
   * Removes everything in the folder but the files among `keep` that lie in it and are regular files of
   * at most `MAX_ERROR_FILE_BYTES` (the folders holding them stay, the rest of each goes), and the folder
   * itself when none is left. Returns the files kept. Never throws: what cannot be removed stays.
   */
  removeExcept(keep: readonly string[]): string[] {
    const inside = `${this.path}${sep}`;
    const wanted = new Set(keep.filter((file) => file.startsWith(inside) && keptFile(file)));
    if (wanted.size === 0) {
      this.remove();
      return [];
    }
    prune(this.path, wanted);
    return [...wanted].filter((file) => existsSync(file));
  }

  /** Removes the folder and everything in it. Idempotent; never throws. */
  remove(): void {
    try {
      rmSync(this.path, { recursive: true, force: true });
    } catch {
      // Nothing more to do: a left-over temporary folder.
    }
  }
}

/** Whether `file` is a regular file (not a link) small enough to keep. */
function keptFile(file: string): boolean {
  try {
    const stat = lstatSync(file);
    return stat.isFile() && stat.size <= MAX_ERROR_FILE_BYTES;
  } catch {
    return false;
  }
}

/** Removes what is in `dir` but the `wanted` files and the folders on their way. Never throws. */
function prune(dir: string, wanted: ReadonlySet<string>): void {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return;
  }
  for (const name of names) {
    const path = join(dir, name);
    if (wanted.has(path)) continue;
    const holdsWanted = [...wanted].some((file) => file.startsWith(`${path}${sep}`));
    try {
      if (holdsWanted && lstatSync(path).isDirectory()) prune(path, wanted);
      else rmSync(path, { recursive: true, force: true });
    } catch {
      // Left behind; the caller reports only the files kept.
    }
  }
}

/**
 * Creates the folder under `parent` (default: the system's temporary folder) as `rdzv-<run id>-XXXXXX`, the
 * run id reduced to file-name characters. `mkdtemp` makes it mode 0700. Throws the file system's error.
 */
export function createErrorFileDir(runId: string, parent: string = tmpdir()): ErrorFileDir {
  const name = runId.replace(/[^A-Za-z0-9._-]/g, "_").slice(0, 40);
  return new ErrorFileDir(mkdtempSync(join(parent, `rdzv-${name}-`)));
}

/**
 * Reads worker error file `file`, at most `MAX_ERROR_FILE_BYTES`: `absent` when there is none, `unusable`
 * (with a note naming the file) when it is not a regular file, is bigger, or does not parse (see
 * `parseErrorFile`). Never throws, and never blocks on a FIFO a worker left there.
 */
export async function readErrorFile(file: string): Promise<ErrorFileRead> {
  let handle: Awaited<ReturnType<typeof open>>;
  try {
    handle = await open(file, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOFOLLOW);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return { kind: "absent" };
    return { kind: "unusable", note: `error file ${file} cannot be read (${code ?? String(err)})` };
  }
  try {
    const stat = await handle.stat();
    if (!stat.isFile()) return { kind: "unusable", note: `error file ${file} is not a regular file` };
    if (stat.size > MAX_ERROR_FILE_BYTES) {
      return {
        kind: "unusable",
        note: `error file ${file} is ${stat.size} bytes, more than the ${MAX_ERROR_FILE_BYTES} rdzv reads`,
      };
    }
    // One byte more than the limit: a file that grew since the stat is caught too.
    const buffer = Buffer.alloc(MAX_ERROR_FILE_BYTES + 1);
    let length = 0;
    for (;;) {
      const { bytesRead } = await handle.read(buffer, length, buffer.length - length, null);
      if (bytesRead === 0) break;
      length += bytesRead;
      if (length === buffer.length) {
        return {
          kind: "unusable",
          note: `error file ${file} is more than the ${MAX_ERROR_FILE_BYTES} bytes rdzv reads`,
        };
      }
    }
    return parseErrorFile(buffer.subarray(0, length).toString("utf8"), file);
  } catch (err) {
    return { kind: "unusable", note: `error file ${file} cannot be read (${String(err)})` };
  } finally {
    await handle.close().catch(() => undefined);
  }
}

/**
 * Writes `record` (JSON) to the agent's own error file `file`, replacing what is there, as torchrun's
 * `ErrorHandler.dump_error_file` does. Rejects with the file system's error.
 */
export async function writeErrorFile(file: string, record: Readonly<Record<string, unknown>>): Promise<void> {
  await rm(file, { force: true });
  await writeFile(file, JSON.stringify(record));
}

/** A failure with its error file's JSON (for the agent's own error file). */
export type ObservedFailureFile = ObservedFailure & { readonly data?: Readonly<Record<string, unknown>> };

/**
 * The workers among `exits` (in the order they exited) that ended badly, with their error files in
 * `attemptDir` (none read without one): the failures, and workers the agent stopped that left an error file
 * (torchrun counts those too: a worker that raised first may be seen to exit after another). `first`, the
 * first failure, is always among them.
 */
export async function observeFailures(
  exits: readonly WorkerExit[],
  first: WorkerExit,
  attemptDir: string | undefined,
): Promise<ObservedFailureFile[]> {
  const ended = exits.filter((e) => e.exitCode !== 0 || e.signal !== null);
  const observed = await Promise.all(
    ended.map(async (exit): Promise<ObservedFailureFile | undefined> => {
      const read: ErrorFileRead =
        attemptDir === undefined
          ? { kind: "absent" }
          : await readErrorFile(errorFilePath(attemptDir, exit.localRank));
      if (read.kind !== "read" && exit !== first && !isFailure(exit)) return undefined;
      if (read.kind === "absent") return { exit };
      if (read.kind === "unusable") return { exit, errorFileNote: read.note };
      const note = read.note === undefined ? {} : { errorFileNote: read.note };
      return { exit, error: read.error, data: read.data, ...note };
    }),
  );
  return observed.filter((o) => o !== undefined);
}
