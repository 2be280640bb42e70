/**
 * An agent's bookkeeping of torchrun's error files: its private folder of the workers' error files (created
 * once, emptied for each attempt, removed at the end but for the error files of a failure it reported, which
 * its report names, as torchrun's stay in its log folder) and its own error file, which gets the root cause
 * of a failure it reported (see agent-error-record.ts). A folder that cannot be made costs the workers their
 * `TORCHELASTIC_ERROR_FILE` (after a warning), never the job.
 */

import type { Logger } from "../log.js";
import { agentErrorRecord, type RootCauseFile } from "./agent-error-record.js";
import { errorFilePath, type WorkerGroupSpec } from "./env.js";
import {
  createErrorFileDir,
  type ErrorFileDir,
  type ObservedFailureFile,
  observeFailures,
  writeErrorFile,
} from "./error-file-dir.js";
import type { AgentResult, WorkerExit } from "./policy.js";
import type { Reaper } from "./reaper.js";

/** The error files of one agent: `create()` the folder, then `prepareAttempt()` for each attempt. */
export class AgentErrorFiles {
  readonly #logger: Logger;
  #dir: ErrorFileDir | undefined;
  /** The running attempt's error file folder. */
  #attemptDir: string | undefined;
  /** The reported failure's error file JSON, for the agent's own error file. */
  #rootCauseData: RootCauseFile | undefined;
  /** The failures `observeFailures` saw last, and the error files `remove()` keeps. */
  #observed: readonly ObservedFailureFile[] = [];
  #keep: string[] = [];

  constructor(logger: Logger) {
    this.#logger = logger;
  }

  /**
   * Creates the workers' error file folder for run `runId` under `parent` (default: the system's temporary
   * folder), which `reaper` removes should the agent be killed. Never throws: without a folder (after a
   * warning) the workers get no error files.
   */
  create(runId: string, parent: string | undefined, reaper: Reaper | undefined): void {
    try {
      this.#dir = createErrorFileDir(runId, parent);
      reaper?.removeOnDeath(this.#dir.path);
    } catch (err) {
      this.#logger.warn(
        "could not create the workers' error file folder: they get no TORCHELASTIC_ERROR_FILE",
        {
          error: String(err),
        },
      );
    }
  }

  /**
   * Empties (or creates) the folder of the attempt `spec` starts and returns it, for its workers:
   * `undefined` when there is no folder, or (after a warning) when that fails.
   */
  prepareAttempt(spec: WorkerGroupSpec): string | undefined {
    this.#attemptDir = this.#prepare(spec);
    return this.#attemptDir;
  }

  #prepare(spec: WorkerGroupSpec): string | undefined {
    try {
      return this.#dir?.prepareAttempt(spec.restartCount, spec.nprocPerNode);
    } catch (err) {
      this.#logger.warn("could not prepare the workers' error files: they get no TORCHELASTIC_ERROR_FILE", {
        error: String(err),
      });
      return undefined;
    }
  }

  /** The running attempt's failures with their error files (see `observeFailures`). */
  async observeFailures(exits: readonly WorkerExit[], first: WorkerExit): Promise<ObservedFailureFile[]> {
    const failures = await observeFailures(exits, first, this.#attemptDir);
    this.#observed = failures;
    return failures;
  }

  /**
   * The job failed for good with `root`, the failure this agent reports: keeps its error file JSON for the
   * agent's own error file, and the error files of the attempt's failures on disk (`remove()` leaves them).
   */
  keepRootCause(root: ObservedFailureFile): void {
    if (root.data !== undefined) this.#rootCauseData = { data: root.data, exit: root.exit };
    const attemptDir = this.#attemptDir;
    if (attemptDir === undefined) return;
    this.#keep = this.#observed.map((f) => errorFilePath(attemptDir, f.exit.localRank));
  }

  /**
   * Removes the workers' error file folder, but for the error files `keepRootCause` kept (each at most
   * `MAX_ERROR_FILE_BYTES`), which it logs. Idempotent; never throws.
   */
  remove(): void {
    if (this.#dir === undefined) return;
    const kept = this.#dir.removeExcept(this.#keep);
    this.#keep = [];
    if (kept.length > 0) this.#logger.info("kept the failed workers' error files", { files: kept });
  }

  /**
   * Writes the agent's own error `file`, if it has one, for a `run()` that ended with `result` (or threw
   * `thrown`); see agent-error-record.ts. Never throws.
   */
  async writeOwn(file: string | undefined, result: AgentResult | undefined, thrown: unknown): Promise<void> {
    if (file === undefined || file === "") return;
    const record = agentErrorRecord(result, this.#rootCauseData, thrown, Math.floor(Date.now() / 1000));
    if (record === undefined) return;
    await writeErrorFile(file, record).catch((err: unknown) => {
      this.#logger.warn("could not write the error file (TORCHELASTIC_ERROR_FILE)", {
        file,
        error: String(err),
      });
    });
  }
}
