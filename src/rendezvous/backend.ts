/**
 * Where the dynamic rendezvous keeps its state. PyTorch's `RendezvousBackend` stores one pickled blob
 * (participants, wait list, heartbeats) and rewrites it with compare-and-set on every change; here the
 * compare-and-set state is only the write-once outcome of each round (`getState` / `setState` with the
 * round number as token), and everything that many nodes write at once (join tickets, descriptors,
 * keep-alives, leave markers) lives in keys of its own, so joins never contend.
 */

import type { CallOptions, Store } from "../store/store.js";
import type { GoneReason, RoundOutcome } from "./round.js";

/** What a node tells the others about itself when it joins a round. */
export interface NodeDescriptor {
  /** Unique per handler instance: `${addr}_${pid}_${localId}`, as PyTorch's `_NodeDesc`. */
  readonly id: string;
  /** Address others reach this node at (advertise address). */
  readonly addr: string;
  readonly pid: number;
  /** Rank this node held in its previous round, for sticky ranks. */
  readonly prevRank?: number;
}

/** The rendezvous state as a reader sees it. */
export interface RendezvousState {
  /** The lowest round without an outcome: the one accepting joins. */
  readonly openRound: number;
  /** Outcome of round `openRound - 1`, if any. */
  readonly last?: RoundOutcome;
}

/** Keeps a node's slot alive until stopped. */
export interface SlotLease {
  /**
   * Called once the slot's round completed with this node as a member: from now on the node's death
   * also marks the round ended, waking the other members. The handler does not wait for it before it
   * returns the round (a `stop()` issued meanwhile must still undo it).
   */
  becomeMember(): Promise<void>;
  /** Stops keep-alives and drops the on-disconnect registrations (without marking the slot gone). */
  stop(): Promise<void>;
}

/** A rendezvous backend. All methods may reject with `RendezvousConnectionError` / `RendezvousTimeoutError`. */
export interface RendezvousBackend {
  /** Backend name ("c10d", "etcd", ...). */
  readonly name: string;
  /** The store behind the backend; completed rounds get a prefix store over it. */
  readonly store: Store;

  /** The open round and the last outcome. */
  getState(options?: CallOptions): Promise<RendezvousState>;
  /**
   * Decides round `token` as `outcome` unless it is decided already; returns the outcome that holds.
   * A closed outcome is sticky: every later round reads as closed.
   */
  setState(outcome: RoundOutcome, token: number, options?: CallOptions): Promise<RoundOutcome>;
  /** The outcome of `round`, waiting up to `timeoutMs` (resolves `undefined` on timeout). */
  waitOutcome(round: number, options: CallOptions & { timeoutMs: number }): Promise<RoundOutcome | undefined>;
  /** True once the rendezvous is closed. */
  isClosed(options?: CallOptions): Promise<boolean>;
  /** Marks the rendezvous closed (the caller also decides the open round as closed). */
  markClosed(options?: CallOptions): Promise<void>;

  /**
   * Optional fast path of `getState` + `isClosed` + `join` for a node entering the rendezvous: takes a ticket
   * in the open round (or a later one) in as few round trips as the backend can, and publishes `node` under
   * it. Resolves `undefined` when the rendezvous is closed. A ticket taken in a round that turns out to be
   * decided already is harmless (its slot is beyond the outcome's span). Handlers fall back to the three
   * calls when a backend lacks it. `from` (default 0): every round before it is known to be decided, so
   * the backend may take its first ticket there without reading the open round first; it must never take
   * one in a round whose predecessor it does not know decided.
   */
  enter?(
    node: NodeDescriptor,
    options?: CallOptions,
    from?: number,
  ): Promise<{ round: number; slot: number } | undefined>;
  /** Takes the next ticket (slot) in `round` and publishes `node` under it. */
  join(round: number, node: NodeDescriptor, options?: CallOptions): Promise<number>;
  /** Number of tickets taken in `round`. */
  ticketCount(round: number, options?: CallOptions): Promise<number>;
  /** Descriptors of `slots` in `round` (waiting for each to be published). */
  nodes(round: number, slots: readonly number[], options?: CallOptions): Promise<NodeDescriptor[]>;
  /** Waits until the slot's descriptor is published (resolves false on timeout). */
  waitJoined(round: number, slot: number, options: CallOptions & { timeoutMs: number }): Promise<boolean>;

  /** Starts keep-alives for a slot; where the store can, also marks it dead the moment its connection drops. */
  keepAlive(round: number, slot: number, intervalMs: number): Promise<SlotLease>;
  /** Current keep-alive counters of `slots` ("" where none was written yet). */
  keepAliveCounters(round: number, slots: readonly number[], options?: CallOptions): Promise<string[]>;
  /**
   * Marks a slot gone (first writer wins) and returns the reason that holds. With `endsRound` (the slot
   * was a member of the completed round), also marks the round ended.
   */
  markGone(
    round: number,
    slot: number,
    reason: GoneReason,
    endsRound: boolean,
    options?: CallOptions,
  ): Promise<GoneReason>;
  /** The gone reason of each of `slots` (undefined = still there). */
  goneSlots(
    round: number,
    slots: readonly number[],
    options?: CallOptions,
  ): Promise<(GoneReason | undefined)[]>;
  /** Waits until every one of `slots` is gone (resolves false on timeout). */
  waitAllGone(
    round: number,
    slots: readonly number[],
    options: CallOptions & { timeoutMs: number },
  ): Promise<boolean>;
  /** Waits until some member of completed round `round` left or died (resolves false on timeout). */
  waitEnded(round: number, options: CallOptions & { timeoutMs: number }): Promise<boolean>;

  /** Tries to become (or stay) the coordinator of `round`; `current` is the holder believed dead, if any. */
  tryLead(round: number, slot: number, current?: number, options?: CallOptions): Promise<number>;
  /** The coordinator slot of `round`, if any. */
  leader(round: number, options?: CallOptions): Promise<number | undefined>;

  /** The store private to a completed round's members. */
  roundStore(round: number): Store;
}
