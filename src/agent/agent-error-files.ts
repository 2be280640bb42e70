/**
 * An agent's bookkeeping of torchrun's error files: its private folder of the workers' error files (created
 * once, emptied for each attempt, removed at the end) and its own error file, which gets the root cause of a
 * failure it reported (see agent-error-record.ts). A folder that cannot be made costs the workers their
 * `TORCHELASTIC_ERROR_FILE` (after a warning), never the job.
 */

import type { Logger } from "../log.js";
import { agentErrorRecord, type RootCauseFile } from "./agent-error-record.js";
import type { WorkerGroupSpec } from "./env.js";
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
  observeFailures(exits: readonly WorkerExit[], first: WorkerExit): Promise<ObservedFailureFile[]> {
    return observeFailures(exits, first, this.#attemptDir);
  }

  /** Keeps the error file JSON of `root`, the failure this agent reported, for its own error file. */
  keepRootCause(root: ObservedFailureFile): void {
    if (root.data !== undefined) this.#rootCauseData = { data: root.data, exit: root.exit };
  }

  /** Removes the workers' error file folder. Idempotent; never throws. */
  remove(): void {
    this.#dir?.remove();
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
