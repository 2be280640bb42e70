/**
 * The environment each worker gets: torchrun's variables (`torch/distributed/elastic/agent/server/
 * local_elastic_agent.py`, `_start_workers`) and their `RDZV_*` equivalents, computed without I/O.
 */

import { join } from "node:path";
import { InvalidArgumentError } from "../errors.js";

/** Where a worker can reach the round's store: a TCP store and the round's key prefix. */
export interface WorkerStoreAddress {
  readonly addr: string;
  readonly port: number;
  /** Every key of the round's store is `${prefix}/${key}` on the TCP store (PyTorch `PrefixStore` nesting). */
  readonly prefix: string;
}

/** What a node's agent knows when it starts its workers. */
export interface WorkerGroupSpec {
  /** Workers on this node (torchrun `--nproc-per-node`), the same on every node. */
  readonly nprocPerNode: number;
  /** This node's rank in the round (torchrun `GROUP_RANK`). */
  readonly groupRank: number;
  /** Nodes in the round (torchrun `GROUP_WORLD_SIZE`). */
  readonly groupWorldSize: number;
  /** Role name (torchrun `--role`, default "default"). */
  readonly role: string;
  /** The rendezvous round the group belongs to. */
  readonly round: number;
  /** Job-wide count of failure restarts so far (torchrun `TORCHELASTIC_RESTART_COUNT`). */
  readonly restartCount: number;
  readonly maxRestarts: number;
  readonly runId: string;
  /** Bootstrap store of the workers (rank 0 node's address and a port; PyTorch `MASTER_ADDR`/`MASTER_PORT`). */
  readonly masterAddr: string;
  readonly masterPort: number;
  /** Whether workers should use the agent's store as bootstrap store (PyTorch `use_agent_store`). */
  readonly useAgentStore: boolean;
  /** The round's store, for `RDZV_STORE_*`; absent for backends without a TCP store. */
  readonly store?: WorkerStoreAddress;
  /**
   * The attempt's folder of error files (see `errorFilePath`); absent when the agent has none (it could
   * not create one), and then the workers get no `TORCHELASTIC_ERROR_FILE`.
   */
  readonly errorFileDir?: string;
}

/** Local worker `localRank`'s error file in attempt folder `dir`: torchrun's `<dir>/<local rank>/error.json`. */
export function errorFilePath(dir: string, localRank: number): string {
  return join(dir, String(localRank), "error.json");
}

/** A worker's ranks in the job, torchrun semantics (same number of workers on every node). */
export interface WorkerRanks {
  readonly rank: number;
  readonly localRank: number;
  readonly worldSize: number;
  readonly localWorldSize: number;
}

/**
 * Ranks of local worker `localRank` of a node with group rank `groupRank`: `rank = groupRank * K +
 * localRank`, `worldSize = groupWorldSize * K`. Throws `InvalidArgumentError` for ranks out of range.
 */
export function workerRanks(spec: WorkerGroupSpec, localRank: number): WorkerRanks {
  const k = spec.nprocPerNode;
  const ok =
    Number.isSafeInteger(k) &&
    k >= 1 &&
    Number.isSafeInteger(localRank) &&
    localRank >= 0 &&
    localRank < k &&
    Number.isSafeInteger(spec.groupRank) &&
    spec.groupRank >= 0 &&
    spec.groupRank < spec.groupWorldSize;
  if (!ok) {
    throw new InvalidArgumentError(
      `bad worker position: local rank ${localRank} of ${k} on node ${spec.groupRank} of ${spec.groupWorldSize}`,
    );
  }
  return {
    rank: spec.groupRank * k + localRank,
    localRank,
    worldSize: spec.groupWorldSize * k,
    localWorldSize: k,
  };
}

/**
 * The variables rdzv sets for local worker `localRank` (layered over the agent's own environment by the
 * caller). torchrun's names come first; `TORCHELASTIC_USE_AGENT_STORE` is Python's `str(bool)` ("True" /
 * "False") because that is what `torch.distributed`'s `env://` compares against. It is "True" only when
 * `MASTER_ADDR`/`MASTER_PORT` are an agent's store (`use_agent_store`): `env://` then connects as a client
 * (PyTorch 1.13 under `/worker/attempt_<N>`, 2.x unprefixed, hence a new store per attempt: see
 * attempt-store.ts) instead of having rank 0 start a server. PyTorch 2.x's c10d torchrun shares
 * its rendezvous store so and says "True"; rdzv's c10d gives the workers a free port of their own unless
 * `--rdzv-conf use_agent_store=true`. `TORCHELASTIC_ERROR_FILE` is the worker's own file in
 * `spec.errorFileDir` (torchrun's layout, see `errorFilePath`): a worker whose entry point is decorated
 * with PyTorch's `@record` writes its exception there, which the agent reads back into its failure report.
 */
export function workerEnv(spec: WorkerGroupSpec, localRank: number): Record<string, string> {
  const r = workerRanks(spec, localRank);
  const env: Record<string, string> = {
    RANK: String(r.rank),
    LOCAL_RANK: String(r.localRank),
    WORLD_SIZE: String(r.worldSize),
    LOCAL_WORLD_SIZE: String(r.localWorldSize),
    GROUP_RANK: String(spec.groupRank),
    GROUP_WORLD_SIZE: String(spec.groupWorldSize),
    // One role per job: the role ranks are the global ranks (torchrun computes them across the role's nodes).
    ROLE_RANK: String(r.rank),
    ROLE_WORLD_SIZE: String(r.worldSize),
    ROLE_NAME: spec.role,
    MASTER_ADDR: spec.masterAddr,
    MASTER_PORT: String(spec.masterPort),
    TORCHELASTIC_RESTART_COUNT: String(spec.restartCount),
    TORCHELASTIC_MAX_RESTARTS: String(spec.maxRestarts),
    TORCHELASTIC_RUN_ID: spec.runId,
    TORCHELASTIC_USE_AGENT_STORE: spec.useAgentStore ? "True" : "False",
    RDZV_RANK: String(r.rank),
    RDZV_LOCAL_RANK: String(r.localRank),
    RDZV_WORLD_SIZE: String(r.worldSize),
    RDZV_LOCAL_WORLD_SIZE: String(r.localWorldSize),
    RDZV_GROUP_RANK: String(spec.groupRank),
    RDZV_GROUP_WORLD_SIZE: String(spec.groupWorldSize),
    RDZV_ROLE_NAME: spec.role,
    RDZV_ROUND: String(spec.round),
    RDZV_RESTART_COUNT: String(spec.restartCount),
    RDZV_MAX_RESTARTS: String(spec.maxRestarts),
    RDZV_RUN_ID: spec.runId,
  };
  if (spec.errorFileDir !== undefined)
    env.TORCHELASTIC_ERROR_FILE = errorFilePath(spec.errorFileDir, localRank);
  if (spec.store !== undefined) {
    env.RDZV_STORE_ADDR = spec.store.addr;
    env.RDZV_STORE_PORT = String(spec.store.port);
    env.RDZV_STORE_PREFIX = spec.store.prefix;
  }
  return env;
}

/** torchrun's default `--signals-to-handle`. */
const TORCHRUN_SIGNALS_TO_HANDLE = "SIGTERM,SIGINT,SIGHUP,SIGQUIT";

/**
 * The agent's environment with `extra` on top, plus defaults for what the user left unset:
 *
 * - torchrun's `OMP_NUM_THREADS=1` when several workers share the node (so K workers do not each start a
 *   thread per core);
 * - `PYTHONUNBUFFERED=1`: the workers' stdout and stderr are pipes to the agent, which Python buffers by
 *   blocks, so a worker's lines would show only when it exits and a killed worker's last lines would be
 *   lost (torchrun's workers write to the terminal, line by line). Set `PYTHONUNBUFFERED=` (empty) to keep
 *   Python's buffering;
 * - `TORCH_NCCL_ASYNC_ERROR_HANDLING=1` (torchrun 2.x's, read by PyTorch 2.2+) and
 *   `NCCL_ASYNC_ERROR_HANDLING=1` (torchrun 1.13's, the only name PyTorch 1.13, 2.0 and 2.1 read), both
 *   since rdzv cannot tell the workers' PyTorch apart, and neither when the user set one. PyTorch 2.2+ reads
 *   them through `getCvarInt` (the new name wins) and warns once per NCCL process that the older name is
 *   deprecated whenever it is set: a line in each worker's output is the price of keeping 1.13-2.1 jobs'
 *   NCCL errors fatal (without it they hang until the collective's timeout). Setting
 *   `TORCH_NCCL_ASYNC_ERROR_HANDLING` yourself avoids the warning;
 * - torchrun's `TORCHELASTIC_SIGNALS_TO_HANDLE` default (its `--signals-to-handle`, PyTorch 2.x), for
 *   parity: rdzv itself handles SIGINT, SIGTERM and SIGHUP.
 *
 * The agent's own `TORCHELASTIC_ERROR_FILE` (a scheduler's, for the launcher) is never passed on: each
 * worker gets its own in `extra`, or none, as torchrun's workers do.
 */
export function mergeWorkerEnv(
  base: Readonly<Record<string, string | undefined>>,
  extra: Readonly<Record<string, string>>,
  nprocPerNode: number,
): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(base)) if (value !== undefined) env[key] = value;
  delete env.TORCHELASTIC_ERROR_FILE;
  if (nprocPerNode > 1 && env.OMP_NUM_THREADS === undefined) env.OMP_NUM_THREADS = "1";
  if (env.PYTHONUNBUFFERED === undefined) env.PYTHONUNBUFFERED = "1";
  if (env.TORCH_NCCL_ASYNC_ERROR_HANDLING === undefined && env.NCCL_ASYNC_ERROR_HANDLING === undefined) {
    env.TORCH_NCCL_ASYNC_ERROR_HANDLING = "1";
    env.NCCL_ASYNC_ERROR_HANDLING = "1";
  }
  env.TORCHELASTIC_SIGNALS_TO_HANDLE ??= TORCHRUN_SIGNALS_TO_HANDLE;
  return Object.assign(env, extra);
}
