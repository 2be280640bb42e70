/** Timeline events of a PyTorch run, from two successive `_RendezvousState`s of its state key. */

import type { TimelineEvent } from "./run-view.js";
import type { TorchNode, TorchRendezvousState } from "./torch-state.js";
import { TORCH_DEAD_AFTER_MS } from "./torch-view.js";

/**
 * PyTorch removes a node from the state both when it leaves and when another node finds its heartbeat
 * stale; a heartbeat older than this when it vanishes counts as a lost node (2 x the default interval).
 */
const STALE_MS = (TORCH_DEAD_AFTER_MS * 2) / 3;

/**
 * The events between `prev` (undefined: first state seen) and `next`, observed at `at`: nodes that joined
 * (participants or wait list), left or were lost, the round completing, the rendezvous closing.
 */
export function diffTorchStates(
  runId: string,
  prev: TorchRendezvousState | undefined,
  next: TorchRendezvousState,
  at: number,
): TimelineEvent[] {
  const events: TimelineEvent[] = [];
  const round = next.round;
  const ev = (e: Omit<TimelineEvent, "at" | "runId" | "round">): void => {
    events.push({ at, runId, round, ...e });
  };
  const before = nodesOf(prev);
  const after = nodesOf(next);
  for (const [id, n] of after) if (!before.has(id)) ev({ type: "joined", node: { id, addr: n.addr } });
  if (prev !== undefined) {
    const beats = new Map(prev.lastHeartbeats.map((h) => [h.node.id, h.at]));
    for (const [id, n] of before) {
      if (after.has(id)) continue;
      const beat = beats.get(id);
      const stale = beat !== undefined && at - beat >= STALE_MS;
      if (stale) ev({ type: "nodeLost", node: { id, addr: n.addr }, reason: "dead" });
      else ev({ type: "left", node: { id, addr: n.addr }, reason: "left" });
    }
  }
  const completedNow = next.complete && !(prev?.complete === true && prev.round === next.round);
  if (completedNow) ev({ type: "completed", worldSize: next.participants.length });
  if (next.closed && prev?.closed !== true) ev({ type: "closed" });
  return events;
}

function nodesOf(state: TorchRendezvousState | undefined): Map<string, TorchNode> {
  const out = new Map<string, TorchNode>();
  if (state === undefined) return out;
  for (const p of state.participants) out.set(p.node.id, p.node);
  for (const n of state.waitList) out.set(n.id, n);
  for (const n of state.redundancyList) out.set(n.id, n);
  return out;
}
