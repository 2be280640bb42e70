/** Shows a run of PyTorch's own dynamic rendezvous (its decoded `_RendezvousState`) as a `RunView`. */

import type { NodeView, RunView } from "./run-view.js";
import { RunState } from "./run-view.js";
import type { TorchNode, TorchStateReading } from "./torch-state.js";

/**
 * PyTorch's defaults: `keep_alive_interval` 5 s x `keep_alive_max_attempt` 3. A node whose heartbeat is
 * older counts as dead (the real settings live in each node's process, not in the state).
 */
export const TORCH_DEAD_AFTER_MS = 15_000;

/** The view of PyTorch run `runId` whose state key holds `reading`. */
export function torchRunView(runId: string, reading: TorchStateReading): RunView {
  const view: RunView = {
    runId,
    source: "pytorch",
    state: RunState.Idle,
    round: 0,
    participants: [],
    waiting: [],
    redundant: [],
    notes: [],
  };
  if (reading.format === "empty") {
    view.notes.push("PyTorch's backend key exists but no node wrote a state yet");
    return view;
  }
  if (reading.format === "unknown") {
    view.state = RunState.Unknown;
    view.notes.push(`torch.rendezvous.${runId} holds a state in an unknown format: ${reading.reason}`);
    return view;
  }
  const s = reading.state;
  view.round = s.round;
  const beats = new Map(s.lastHeartbeats.map((h) => [h.node.id, h.at]));
  const node = (n: TorchNode, rank?: number): NodeView => {
    const v: NodeView = { id: n.id, addr: n.addr, pid: n.pid, status: "alive" };
    if (rank !== undefined) v.rank = rank;
    const at = beats.get(n.id);
    if (at !== undefined) {
      v.lastKeepAliveAt = at;
      v.expiresAt = at + TORCH_DEAD_AFTER_MS;
    }
    return v;
  };
  // Ranks are placeholders (all 0) until the round completes.
  view.participants = s.participants.map((p) => node(p.node, s.complete ? p.rank : undefined));
  view.waiting = s.waitList.map((n) => node(n));
  view.redundant = s.redundancyList.map((n) => node(n));
  if (s.closed) view.state = RunState.Closed;
  else if (s.complete) view.state = RunState.Complete;
  else if (s.deadline !== null) {
    view.state = RunState.LastCall;
    view.lastCallEndsAt = s.deadline;
  } else if (s.participants.length > 0) view.state = RunState.Joining;
  view.notes.push(
    `heartbeat expiry assumes PyTorch's defaults (${TORCH_DEAD_AFTER_MS / 1000} s); the real settings are in each node`,
  );
  return view;
}
