/**
 * What the dashboard, `rdzv status` and the HTTP API show of one rendezvous run: plain JSON-able data,
 * the same whether it was read out of rdzv's own layout (`rdzv/<run id>/...`) or decoded from PyTorch's
 * pickled state (`torch.rendezvous.<run id>`). All times are epoch milliseconds on the reader's clock.
 */

/** The phase of a run, as an operator reads it. */
export const RunState = {
  /** Nodes are joining a round that has not completed. */
  Joining: "joining",
  /** Enough nodes joined; the round completes when the last call ends (or max nodes join). */
  LastCall: "last call",
  /** The round completed and its members run. */
  Complete: "complete",
  /** The rendezvous is closed: no further rounds. */
  Closed: "closed",
  /** Nobody holds a ticket and no round runs. */
  Idle: "idle",
  /** The state could not be read (see `notes`). */
  Unknown: "unknown",
} as const;
export type RunState = (typeof RunState)[keyof typeof RunState];

/** How a participant stands. */
export const NodeStatus = {
  Alive: "alive",
  /** Its connection dropped or its keep-alives stopped. */
  Dead: "dead",
  /** It left on purpose, or gave up waiting. */
  Left: "left",
  /** It joined the next round (its workers restart). */
  Rejoined: "rejoined",
} as const;
export type NodeStatus = (typeof NodeStatus)[keyof typeof NodeStatus];

/** One node of a run. */
export interface NodeView {
  /** `addr_pid_localId`, as PyTorch's `_NodeDesc` and rdzv's `NodeDescriptor.id`. */
  id: string;
  /** Its address ("" while an rdzv node's descriptor is not published yet). */
  addr: string;
  pid?: number;
  /** Its ticket in the round (rdzv runs). */
  slot?: number;
  /** Its rank, once the round completed. */
  rank?: number;
  status: NodeStatus;
  /** Its keep-alive counter (rdzv runs): it moves every keep-alive interval while the node lives. */
  keepAlives?: number;
  /** When its last keep-alive was seen (PyTorch: the heartbeat time it wrote; rdzv: when its counter moved). */
  lastKeepAliveAt?: number;
  /**
   * When it counts as dead if no keep-alive comes: PyTorch's `keep_alive_interval * keep_alive_max_attempt`
   * after the last one (5 s x 3 by default; rdzv runs: 3 x the interval seen between its keep-alives).
   */
  expiresAt?: number;
}

/** Timestamped facts about a run, in the order they happened. */
export interface TimelineEvent {
  /** When it was seen. */
  at: number;
  runId: string;
  round: number;
  type: "joined" | "completed" | "nodeLost" | "left" | "closed";
  /** For joined / nodeLost / left: the node (slot for rdzv runs). */
  node?: { id: string; addr?: string; slot?: number };
  /** For left: "left" or "rejoined"; for nodeLost: "dead". */
  reason?: string;
  /** For completed: the world size. */
  worldSize?: number;
  /** For completed: ms from the first node joining the round to its completion, when both were seen. */
  elapsedMs?: number;
}

/** A run as shown. */
export interface RunView {
  runId: string;
  /** Whose layout holds it: rdzv's dynamic rendezvous, or PyTorch's own handler. */
  source: "rdzv" | "pytorch";
  state: RunState;
  /** The round shown: the completed round while it runs, else the round accepting joins. */
  round: number;
  /** Members of the completed round, or the nodes that joined the open round. */
  participants: NodeView[];
  /** Nodes waiting to join the next round (PyTorch's wait list; rdzv: tickets of the open round). */
  waiting: NodeView[];
  /** Spares beyond max nodes (PyTorch 2.x redundancy list). */
  redundant: NodeView[];
  /** End of the last call (PyTorch runs in last call). */
  lastCallEndsAt?: number;
  /** Slot of the node that decides the round (rdzv runs). */
  coordinator?: number;
  /** Things an operator should know: unknown formats, truncated lists, settings that are not in the store. */
  notes: string[];
  /**
   * Set when a list holds fewer nodes than the store names (the reader's cap on slots per round; a note
   * says how many): counts from the lists are then lower bounds.
   */
  capped?: true;
}

/** One line of a run list. */
export interface RunSummary {
  runId: string;
  source: RunView["source"];
  state: RunState;
  round: number;
  participants: number;
  waiting: number;
}

/** The summary of `view`. */
export function summarize(view: RunView): RunSummary {
  return {
    runId: view.runId,
    source: view.source,
    state: view.state,
    round: view.round,
    participants: view.participants.length,
    waiting: view.waiting.length,
  };
}
