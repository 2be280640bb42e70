/**
 * The rendezvous API: what a handler does and what a completed round gives its members.
 * Mirrors PyTorch's `torch.distributed.elastic.rendezvous.api` in TypeScript idiom.
 */

import type { Logger } from "../log.js";
import type { Store } from "../store/store.js";

/** Where the members of a round can reach the bootstrap store (PyTorch `RendezvousStoreInfo`). */
export interface RendezvousStoreInfo {
  /** Address of rank 0 (PyTorch `master_addr`). */
  readonly masterAddr: string;
  /** Port of the bootstrap store (PyTorch `master_port`). */
  readonly masterPort: number;
}

/** What `nextRendezvous()` returns to a member of a completed round (PyTorch `RendezvousInfo`). */
export interface RendezvousInfo {
  /** The round's store: a `PrefixStore` private to this round. */
  readonly store: Store;
  /** This node's rank, 0..worldSize-1. */
  readonly rank: number;
  /** Number of nodes in the round. */
  readonly worldSize: number;
  /** The bootstrap store location (rank 0's address). */
  readonly bootstrapStoreInfo: RendezvousStoreInfo;
  /** The round number (0 for the first round of a run). */
  readonly round: number;
}

/** Options of a blocking handler call. */
export interface RendezvousCallOptions {
  signal?: AbortSignal;
}

/**
 * A rendezvous handler (PyTorch `RendezvousHandler`). One instance per node.
 *
 * `nextRendezvous()` rejects with `RendezvousClosedError` when the rendezvous is closed,
 * `RendezvousTimeoutError` when the round did not complete in time, `RendezvousConnectionError` when the
 * backend is unreachable, `RendezvousStateError` when the state is corrupt, and
 * `RendezvousGracefulExitError` after `shutdown()`.
 */
export interface RendezvousHandler {
  /** Backend name, e.g. "c10d", "static", "etcd", "redis". */
  getBackend(): string;
  /** The run id shared by all nodes of the job. */
  getRunId(): string;
  /** Joins the next round and waits until it completes. */
  nextRendezvous(options?: RendezvousCallOptions): Promise<RendezvousInfo>;
  /** True when the rendezvous has been closed. */
  isClosed(options?: RendezvousCallOptions): Promise<boolean>;
  /** Closes the rendezvous for everyone: no further rounds form; waiting nodes get `RendezvousClosedError`. */
  setClosed(options?: RendezvousCallOptions): Promise<void>;
  /** Number of nodes waiting to join the next round (late arrivals and spares). */
  numNodesWaiting(options?: RendezvousCallOptions): Promise<number>;
  /**
   * Whether workers should use the store returned in `RendezvousInfo` as their bootstrap store instead of
   * starting their own (PyTorch `use_agent_store`).
   */
  readonly useAgentStore: boolean;
  /**
   * Leaves the rendezvous gracefully: this node stops taking part, the others are not closed out.
   * Returns true when the node left cleanly.
   */
  shutdown(): Promise<boolean>;
}

/** What a handler's creator gets beside the parameters (rdzv's; PyTorch's creators take parameters only). */
export interface RendezvousHandlerOptions {
  /** Where the handler, its backend and its store client log (default: nowhere). */
  logger?: Logger;
}

/** Creates a handler from parameters (PyTorch `RendezvousHandlerCreator`), with rdzv's `options`. */
export type RendezvousHandlerCreator = (
  params: RendezvousParameters,
  options?: RendezvousHandlerOptions,
) => Promise<RendezvousHandler>;

/** Config values as given on a command line or in code. */
export type RendezvousConfigValue = string | number | boolean;

/**
 * Parameters of a rendezvous (PyTorch `RendezvousParameters`). `config` takes PyTorch's keys
 * (`join_timeout`, `last_call_timeout`, `close_timeout`, `heartbeat`, `keep_alive_interval`,
 * `keep_alive_max_attempt`, `is_host`, `read_timeout`, `local_addr`, `sticky_ranks`, ...): see
 * `rendezvous/parameters.ts` for defaults and units, `rendezvous/config-keys.ts` for every key each
 * built-in backend reads.
 */
export interface RendezvousParameters {
  /** Backend name: "c10d", "static", "etcd", "redis" or a registered one. */
  readonly backend: string;
  /** Backend endpoint: `host`, `host:port`, `[v6addr]:port`; backends may accept more (etcd: a list). */
  readonly endpoint: string;
  /** Run id shared by all nodes of one job. */
  readonly runId: string;
  /** Fewest nodes a round may have (>= 1). */
  readonly minNodes: number;
  /** Most nodes a round may have (>= minNodes). */
  readonly maxNodes: number;
  /** This node's address as others should reach it (advertise address); default: hostname. */
  readonly localAddr?: string;
  /** Backend-specific and timing settings, by PyTorch's key names. */
  readonly config?: Readonly<Record<string, RendezvousConfigValue>>;
}
