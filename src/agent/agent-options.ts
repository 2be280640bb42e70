/** The options of an elastic agent (`createElasticAgent`, agent.ts) and their eager check. */

import { InvalidArgumentError } from "../errors.js";
import type { Logger } from "../log.js";
import type { RendezvousHandler } from "../rendezvous/api.js";
import type { WorkerOutput } from "./output.js";

/** Options of `createElasticAgent`. Durations in milliseconds. */
export interface ElasticAgentOptions {
  readonly handler: RendezvousHandler;
  /** The worker command and its arguments. */
  readonly command: string;
  readonly args?: readonly string[];
  /** Workers per node (torchrun `--nproc-per-node`), >= 1. */
  readonly nprocPerNode: number;
  /** Failure restarts allowed for the whole job (default 0, as torchrun). */
  readonly maxRestarts?: number;
  /** How often the rank 0 agent asks whether nodes wait to join (default 1000). */
  readonly monitorIntervalMs?: number;
  /** Grace between SIGTERM and SIGKILL when stopping workers (default 30 000, as torchrun). */
  readonly stopTimeoutMs?: number;
  /** How long a node whose workers succeeded waits for the others (default 300 000, as torchrun). */
  readonly exitBarrierTimeoutMs?: number;
  /**
   * How long the rendezvous store may stay unreachable while workers run before the agent stops them and
   * fails (`run()` rejects with a `RendezvousStoreGoneError`); default 600 000 (10 min). `rdzv run` passes
   * rdzv-conf `store_unreachable_timeout` (default: the larger of 5 min and `join_timeout`). See
   * store-outage.ts.
   */
  readonly storeUnreachableTimeoutMs?: number;
  /** The rendezvous store as messages name it (default: the backend's name; `rdzv run`: "c10d at HOST:PORT"). */
  readonly storeName?: string;
  /** Role name (torchrun `--role`, default "default"). */
  readonly role?: string;
  /** Close the rendezvous when this agent exits, for every node (default false). */
  readonly closeOnExit?: boolean;
  /** The rendezvous TCP store's address, given to workers as `RDZV_STORE_ADDR` / `RDZV_STORE_PORT`. */
  readonly storeEndpoint?: { readonly host: string; readonly port: number };
  /** Base environment of the workers (default `process.env`). */
  readonly env?: Readonly<Record<string, string | undefined>>;
  readonly cwd?: string;
  /** Where worker output goes (default: dropped). */
  readonly output?: WorkerOutput;
  /** This node's name in failure reports (default: the hostname). */
  readonly localAddr?: string;
  /**
   * Stops the agent (workers stopped, rendezvous left); a string reason is reported as the signal name,
   * and a signal name (`"SIGINT"`) is the signal the workers get, as from torchrun (else SIGTERM).
   */
  readonly signal?: AbortSignal;
  readonly logger?: Logger;
  /** Start a reaper process so workers die with a SIGKILLed agent (default true). */
  readonly reaper?: boolean;
  /**
   * Where the folder of the workers' error files is created (default: the system's temporary folder);
   * it is removed when `run()` ends, but for the error files of a failure this agent reports (its report
   * names them).
   */
  readonly errorFileParent?: string;
  /**
   * The agent's own error file (torchrun: its `TORCHELASTIC_ERROR_FILE`, set by a scheduler such as TorchX):
   * when `run()` ends in anything but success, the root-cause error is written there in PyTorch's format
   * (see agent-error-record.ts). Default: none.
   */
  readonly errorFile?: string;
}

/** Throws `InvalidArgumentError` naming every bad option of `o`, with its value. */
export function checkAgentOptions(o: ElasticAgentOptions): void {
  const problems: string[] = [];
  if (typeof o.command !== "string" || o.command === "") problems.push("command must be a non-empty string");
  const int = (name: string, value: number | undefined, min: number): void => {
    if (value !== undefined && !(Number.isSafeInteger(value) && value >= min)) {
      problems.push(`${name} must be an integer >= ${min}, got ${String(value)}`);
    }
  };
  int("nprocPerNode", o.nprocPerNode, 1);
  int("maxRestarts", o.maxRestarts, 0);
  int("monitorIntervalMs", o.monitorIntervalMs, 1);
  int("stopTimeoutMs", o.stopTimeoutMs, 0);
  int("exitBarrierTimeoutMs", o.exitBarrierTimeoutMs, 1);
  int("storeUnreachableTimeoutMs", o.storeUnreachableTimeoutMs, 1);
  if (problems.length > 0) throw new InvalidArgumentError(`invalid agent options: ${problems.join("; ")}`);
}
