/**
 * What an agent writes to its own error file (torchrun: the launcher's `TORCHELASTIC_ERROR_FILE`, which a
 * scheduler such as TorchX sets and reads) when `rdzv run` ends in anything but success. torchrun's main
 * is decorated with `@record`: a failed job copies the root-cause worker's error file there
 * (`ErrorHandler.dump_error_file`), and any other exception that ends it (a closed rendezvous, a signal)
 * is recorded as `record_exception` records it.
 */

import { errorRecord, recordOf, withErrorCode } from "./error-file.js";
import { type AgentResult, describeExit, exitStatus, formatFailure, type WorkerExit } from "./policy.js";

/** The root-cause worker's error file JSON and exit, when this node's worker wrote one. */
export interface RootCauseFile {
  readonly data: Readonly<Record<string, unknown>>;
  readonly exit: Pick<WorkerExit, "exitCode" | "signal">;
}

/**
 * The record for an agent that ended with `result` (`undefined` when `run()` threw `thrown`), at
 * `nowSeconds`; `undefined` on success. For a failed job: the local worker's file copied with its exit
 * code; else the store's record of the error rebuilt in its worker's form; else (no worker error file,
 * where torchrun writes nothing) a record whose traceback is the failure report.
 */
export function agentErrorRecord(
  result: AgentResult | undefined,
  rootCause: RootCauseFile | undefined,
  thrown: unknown,
  nowSeconds: number,
): Record<string, unknown> | undefined {
  switch (result?.kind) {
    case "succeeded":
      return undefined;
    case "failed": {
      const s = result.summary;
      if (result.local && rootCause !== undefined)
        return withErrorCode(rootCause.data, exitStatus(rootCause.exit));
      if (s.error !== undefined) return recordOf(s.error, exitStatus(s), nowSeconds);
      const message = `rank ${s.rank} (local rank ${s.localRank} on node ${s.groupRank}, ${s.node}) failed: ${describeExit(s)}`;
      return errorRecord(message, formatFailure(s), nowSeconds, exitStatus(s));
    }
    case "closed":
      return errorRecord(
        `RendezvousClosedError: the rendezvous was closed by another node${result.reason === undefined ? "" : `: ${result.reason}`}`,
        "",
        nowSeconds,
      );
    case "stopped":
      return errorRecord(`SignalException: stopped by ${result.signal ?? "an abort"}`, "", nowSeconds);
    case undefined: {
      const err = thrown instanceof Error ? thrown : new Error(String(thrown));
      return errorRecord(`${err.name}: ${err.message}`, err.stack ?? "", nowSeconds);
    }
  }
}
