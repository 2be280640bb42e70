/**
 * `DynamicRendezvousHandler`: PyTorch's dynamic rendezvous (barrier, last call, exclusivity, consistent
 * ranks, fault tolerance, per-round store, closing) over a `RendezvousBackend`, designed to scale:
 * joining is one atomic ticket, waiting nodes are woken by the store, and one coordinator per round
 * decides it (see round.ts for the rules and backend.ts for the state layout).
 */

import { EventEmitter } from "node:events";
import {
  ErrorCode,
  hasErrorCode,
  RendezvousClosedError,
  RendezvousGracefulExitError,
  RendezvousStateError,
  RendezvousTimeoutError,
} from "../errors.js";
import { type Logger, silentLogger } from "../log.js";
import { bytesToText } from "../store/bytes.js";
import type { CallOptions, Store } from "../store/store.js";
import { throwIfAborted } from "./abort.js";
import type { RendezvousCallOptions, RendezvousHandler, RendezvousInfo, RendezvousStoreInfo } from "./api.js";
import type { NodeDescriptor, RendezvousBackend, SlotLease } from "./backend.js";
import { coordinateRound, OWN_SLOT_GONE } from "./coordinator.js";
import { pickFreePort } from "./free-port.js";
import { GoneReason, LivenessTracker, type RoundOutcome, rankOf, slotAt } from "./round.js";

/** Settings of a dynamic handler, all durations in milliseconds. */
export interface DynamicHandlerSettings {
  readonly minNodes: number;
  readonly maxNodes: number;
  /** How long `nextRendezvous()` may take (PyTorch `join_timeout`, default 600 s). */
  readonly joinTimeoutMs: number;
  /** Wait for stragglers once `minNodes` joined (PyTorch `last_call_timeout`, default 30 s). */
  readonly lastCallTimeoutMs: number;
  /** Keep-alive period (PyTorch `keep_alive_interval`, default 5 s). */
  readonly keepAliveIntervalMs: number;
  /** Missed keep-alives before a node counts as dead (PyTorch `keep_alive_max_attempt`, default 3). */
  readonly keepAliveMaxAttempts: number;
  /** Keep each node's rank across rounds where the membership allows (default false). */
  readonly stickyRanks: boolean;
  /** Workers use the rendezvous store as their bootstrap store (PyTorch `use_agent_store`). */
  readonly useAgentStore: boolean;
}

/** Defaults of `DynamicHandlerSettings`, as PyTorch's. */
export const DEFAULT_DYNAMIC_SETTINGS = {
  joinTimeoutMs: 600_000,
  lastCallTimeoutMs: 30_000,
  keepAliveIntervalMs: 5_000,
  keepAliveMaxAttempts: 3,
  stickyRanks: false,
  useAgentStore: false,
} as const;

/** Options of `createDynamicRendezvousHandler`. */
export interface DynamicHandlerOptions {
  readonly backend: RendezvousBackend;
  readonly runId: string;
  readonly settings: Pick<DynamicHandlerSettings, "minNodes" | "maxNodes"> & Partial<DynamicHandlerSettings>;
  /** This node's advertised address. */
  readonly localAddr: string;
  /** Where the rendezvous store is reachable, reported as bootstrap store when `useAgentStore`. */
  readonly storeEndpoint?: RendezvousStoreInfo;
  /** Releases what the handler owns (its store client, an embedded server) on `shutdown()`. */
  readonly onShutdown?: () => Promise<void>;
  readonly logger?: Logger;
}

/** Events a handler emits, for logging, dashboards and agents. */
export interface RendezvousEvents {
  joined: [{ round: number; slot: number; node: NodeDescriptor }];
  completed: [{ round: number; rank: number; worldSize: number }];
  nodeLost: [{ round: number; slot: number; reason: GoneReason }];
  left: [{ round: number; reason: GoneReason }];
  closed: [{ round: number }];
}

interface Membership {
  readonly round: number;
  readonly slot: number;
  readonly lease: SlotLease;
  readonly rank: number;
  readonly worldSize: number;
  /**
   * The member this one watches while it waits for the round's end: the next one in slot order, cyclically
   * (none in a round of one). Any death ends the round, so one watcher per member finds every death
   * as long as one member lives, at one counter read per member and interval.
   */
  readonly watched: number | undefined;
  /** Keep-alive staleness of `watched`, on this node's clock. */
  readonly liveness: LivenessTracker;
  /** Whether this node already emitted `nodeLost` for `watched`. */
  lossReported: boolean;
}

let localCounter = 0;

/** Where PyTorch's `C10dRendezvousBackend` keeps a run's state: `torch.rendezvous.<run id>`. */
const PYTORCH_STATE_PREFIX = "torch.rendezvous.";

/** What to tell a node of run `runId` that torchrun agents joined too (see `pytorchAgentsPresent`). */
export function pytorchAgentsNote(runId: string): string {
  return (
    `torchrun agents (PyTorch's own c10d rendezvous) joined run ${JSON.stringify(runId)} on this endpoint too: ` +
    "rdzv run and torchrun keep different rendezvous state and cannot form one job; start every node of a job " +
    "with the same launcher (torchrun nodes can share rdzv serve as their store, under another --rdzv-id)"
  );
}

/** Keys of the bootstrap address in a round's store (PyTorch's `RendezvousStoreInfo`). */
const BOOTSTRAP_KEYS = ["MASTER_ADDR", "MASTER_PORT"] as const;

/** A dynamic rendezvous handler. Create with `createDynamicRendezvousHandler`. */
export class DynamicRendezvousHandler extends EventEmitter<RendezvousEvents> implements RendezvousHandler {
  readonly settings: DynamicHandlerSettings;
  readonly node: NodeDescriptor;
  readonly #backend: RendezvousBackend;
  readonly #runId: string;
  readonly #options: DynamicHandlerOptions;
  readonly #logger: Logger;
  readonly #lifetime = new AbortController();
  #member: Membership | undefined;
  #joining: { round: number; slot: number; lease: SlotLease } | undefined;
  /** Settles when the nextRendezvous() in progress, if any, has finished (and cleaned up). */
  #inFlight: Promise<void> | undefined;
  #shutDown = false;
  /** Every round before this one is known decided (this node saw the outcome of the one before it). */
  #decidedBefore = 0;

  constructor(options: DynamicHandlerOptions) {
    super();
    this.#options = options;
    this.#backend = options.backend;
    this.#runId = options.runId;
    this.#logger = options.logger ?? silentLogger;
    this.settings = { ...DEFAULT_DYNAMIC_SETTINGS, ...options.settings };
    this.node = {
      id: `${options.localAddr}_${process.pid}_${localCounter++}`,
      addr: options.localAddr,
      pid: process.pid,
    };
  }

  getBackend(): string {
    return this.#backend.name;
  }

  getRunId(): string {
    return this.#runId;
  }

  get useAgentStore(): boolean {
    return this.settings.useAgentStore;
  }

  /** How long keep-alives must stand still before a node counts as dead. */
  get #deadAfterMs(): number {
    return this.settings.keepAliveIntervalMs * this.settings.keepAliveMaxAttempts;
  }

  /** The round this node is a member of, if any. */
  get currentRound(): number | undefined {
    return this.#member?.round;
  }

  async nextRendezvous(options: RendezvousCallOptions = {}): Promise<RendezvousInfo> {
    if (this.#shutDown) throw new RendezvousGracefulExitError();
    const run = this.#rendezvous(options);
    const settled = run.then(
      () => undefined,
      () => undefined,
    );
    this.#inFlight = settled;
    try {
      return await run;
    } catch (err) {
      throw this.#shutDown && hasErrorCode(err, ErrorCode.Aborted)
        ? new RendezvousGracefulExitError(undefined, { cause: err })
        : err;
    } finally {
      if (this.#inFlight === settled) this.#inFlight = undefined;
    }
  }

  async #rendezvous(options: RendezvousCallOptions): Promise<RendezvousInfo> {
    const signal = anySignal(options.signal, this.#lifetime.signal);
    const deadline = Date.now() + this.settings.joinTimeoutMs;
    for (;;) {
      // Still a member of the previous round until it leaves it below (also when a call failed half-way).
      const previous = this.#member;
      const node = previous === undefined ? this.node : { ...this.node, prevRank: previous.rank };
      const entered = await this.#enter(node, signal);
      if (entered === undefined) {
        await this.#leaveMembership(GoneReason.Left);
        throw new RendezvousClosedError(`the rendezvous of run ${JSON.stringify(this.#runId)} is closed`);
      }
      const { round, slot } = entered;
      // An abort (shutdown) from here on is #takePart's to handle: it marks the ticket left.
      const info = await this.#takePart(round, slot, node, deadline, signal);
      if (info !== undefined) return info;
      // Not a member (a spare beyond maxNodes, or counted out as dead), or a member of a round whose rank 0
      // died before it started: go on in the next round.
    }
  }

  /** Takes a ticket in the open round (`backend.enter()` where the backend has it); undefined when closed. */
  async #enter(
    node: NodeDescriptor,
    signal: AbortSignal,
  ): Promise<{ round: number; slot: number } | undefined> {
    // Quick calls go without the signal (see `throwIfAborted`); the caller checks it after them.
    if (this.#backend.enter !== undefined) return this.#backend.enter(node, undefined, this.#decidedBefore);
    const state = await this.#backend.getState();
    if (state.last?.kind === "closed" || (await this.#backend.isClosed())) return undefined;
    throwIfAborted(signal);
    const round = state.openRound;
    return { round, slot: await this.#backend.join(round, node) };
  }

  /**
   * Holds `slot` of `round` until the round is decided: keep-alives, leaving the previous round, waiting
   * for (or coordinating) the outcome. Resolves `undefined` when this node is not a member. On any
   * failure the slot stops its keep-alives and is marked left (unless the rendezvous closed), so that no
   * ticket outlives the call that took it.
   */
  async #takePart(
    round: number,
    slot: number,
    node: NodeDescriptor,
    deadline: number,
    signal: AbortSignal,
  ): Promise<RendezvousInfo | undefined> {
    let lease: SlotLease | undefined;
    let member = false;
    try {
      // Aborted while taking the ticket: the catch below marks it left, so that nobody counts this node in.
      throwIfAborted(signal);
      // In one round trip: keep-alives start, the coordinator claim, and leaving the old round (only now
      // that this node holds its ticket here: once the old round drains, every survivor holds one).
      const [leased, claimed, left] = await Promise.allSettled([
        this.#backend.keepAlive(round, slot, this.settings.keepAliveIntervalMs),
        this.#backend.tryLead(round, slot),
        this.#leaveMembership(GoneReason.Rejoined),
      ]);
      if (leased.status === "fulfilled") lease = leased.value;
      for (const r of [leased, claimed, left]) if (r.status === "rejected") throw r.reason;
      const held = (leased as PromiseFulfilledResult<SlotLease>).value;
      const leader = (claimed as PromiseFulfilledResult<number>).value;
      throwIfAborted(signal);
      this.#joining = { round, slot, lease: held };
      this.emit("joined", { round, slot, node });
      this.#logger.debug("joined round", { runId: this.#runId, round, slot });
      const outcome = await this.#awaitOutcome(round, slot, leader, deadline, signal);
      this.#joining = undefined;
      if (outcome === undefined) {
        // Counted out while waiting: a new ticket (in this round, while it is open) counts again.
        await held.stop();
        return undefined;
      }
      this.#decidedBefore = Math.max(this.#decidedBefore, round + 1);
      const place = rankOf(outcome, slot);
      if (place === undefined) {
        await held.stop();
        return undefined;
      }
      member = true;
      // Undefined when the round broke before it started: this node then re-joins like after any end.
      return await this.#complete(round, slot, held, place, outcome, signal);
    } catch (err) {
      this.#joining = undefined;
      if (this.#member?.round === round && this.#member.slot === slot) this.#member = undefined;
      // Cleaning up takes no longer than the others would need to count this node dead anyway: with the
      // store gone, each call would wait out its own timeout, and the caller (a stop signal) with it.
      const budgetMs = this.#deadAfterMs;
      const cleanup: Promise<unknown>[] = [lease?.stop() ?? Promise.resolve()];
      if (!hasErrorCode(err, ErrorCode.Closed)) {
        cleanup.push(this.#backend.markGone(round, slot, GoneReason.Left, member, { timeoutMs: budgetMs }));
      }
      await settleWithin(Promise.allSettled(cleanup), budgetMs);
      throw err;
    }
  }

  /**
   * The round's outcome, coordinating it while this node leads; `undefined` when this node's slot was
   * marked gone and no outcome counts it (see `#countedOut`): it must take a new ticket.
   */
  async #awaitOutcome(
    round: number,
    slot: number,
    firstLeader: number,
    deadline: number,
    signal: AbortSignal,
  ): Promise<RoundOutcome | undefined> {
    let leader = firstLeader;
    for (;;) {
      const left = deadline - Date.now();
      if (left <= 0) throw await this.#timeoutError(round);
      let outcome: RoundOutcome | typeof OWN_SLOT_GONE | undefined =
        leader === slot
          ? await coordinateRound({
              backend: this.#backend,
              round,
              slot,
              settings: this.settings,
              deadline,
              signal,
              logger: this.#logger,
              onLost: (lost) => this.emit("nodeLost", lost),
              master: () => this.#masterInfo(),
            })
          : await this.#backend.waitOutcome(round, {
              timeoutMs: Math.min(left, this.settings.keepAliveIntervalMs),
              signal,
            });
      if (outcome === undefined && leader !== slot) {
        const next = await this.#checkLeader(round, slot, leader, signal);
        if (next === OWN_SLOT_GONE) outcome = next;
        else leader = next;
      }
      if (outcome === OWN_SLOT_GONE) {
        outcome = await this.#countedOut(round, slot, signal);
        if (outcome === undefined) return undefined;
      }
      if (outcome !== undefined) {
        if (outcome.kind === "closed") {
          this.emit("closed", { round });
          throw new RendezvousClosedError(`the rendezvous of run ${JSON.stringify(this.#runId)} is closed`);
        }
        return outcome;
      }
    }
  }

  /**
   * This node's slot was marked gone while it waited: another node counted it dead (its keep-alives
   * lagged behind a stall, its etcd lease expired, its store connection dropped for a moment). No outcome
   * decided from now on counts it, and the round may never reach `minNodes` without it, so it takes a
   * new ticket rather than wait out its join timeout (as PyTorch's handler adds itself back to the
   * participants). An outcome decided before the mark was seen may still count the old slot: the last read
   * below takes it. One written later still (by a coordinator that read the markers just before the mark)
   * counts a slot marked dead, which ends that round for its members as soon as they look (the member
   * watching the slot finds the mark), and they re-form as after any death.
   */
  async #countedOut(round: number, slot: number, signal: AbortSignal): Promise<RoundOutcome | undefined> {
    const decided = await this.#backend.waitOutcome(round, { timeoutMs: 0, signal });
    if (decided !== undefined && (decided.kind === "closed" || rankOf(decided, slot) !== undefined)) {
      return decided;
    }
    this.#logger.info("counted out of the round while joining; taking a new ticket", {
      runId: this.#runId,
      round,
      slot,
    });
    return undefined;
  }

  /** The coordinator's keep-alive counter as last seen changing, by `round/slot`. */
  readonly #leaderSeen = new Map<string, { counter: string; since: number }>();

  /**
   * Takes over coordination when the coordinator is gone or its keep-alives stopped; `OWN_SLOT_GONE` when
   * this node's own slot is marked gone (read in the same round trip).
   */
  async #checkLeader(
    round: number,
    slot: number,
    leader: number,
    signal: AbortSignal,
  ): Promise<number | typeof OWN_SLOT_GONE> {
    const [gone, own] = await this.#backend.goneSlots(round, [leader, slot], { signal });
    if (own !== undefined) return OWN_SLOT_GONE;
    let dead = gone !== undefined;
    if (!dead) {
      const [counter = ""] = await this.#backend.keepAliveCounters(round, [leader], { signal });
      const key = `${round}/${leader}`;
      const seen = this.#leaderSeen.get(key);
      const now = Date.now();
      if (seen === undefined || seen.counter !== counter) this.#leaderSeen.set(key, { counter, since: now });
      else dead = now - seen.since >= this.settings.keepAliveIntervalMs * this.settings.keepAliveMaxAttempts;
    }
    if (!dead) return leader;
    this.#logger.info("coordinator lost; taking over", { runId: this.#runId, round, leader, slot });
    if (gone === undefined) await this.#backend.markGone(round, leader, GoneReason.Dead, false, { signal });
    return this.#backend.tryLead(round, slot, leader, { signal });
  }

  /**
   * Becomes a member of `outcome` and exchanges the bootstrap info. Resolves `undefined` when rank 0 died
   * before it published the info: the round is then over (marked ended) and this node stays a member only
   * until it re-joins.
   */
  async #complete(
    round: number,
    slot: number,
    lease: SlotLease,
    { rank, worldSize }: { rank: number; worldSize: number },
    outcome: RoundOutcome,
    signal: AbortSignal,
  ): Promise<RendezvousInfo | undefined> {
    if (outcome.kind !== "complete") throw new RendezvousStateError(`round ${round} is not complete`);
    // Index arithmetic, not member lists: O(excluded) per node, whatever the round's size.
    const index = slot - outcome.excluded.filter((e) => e < slot).length;
    const next = slotAt(outcome, (index + 1) % worldSize);
    this.#member = {
      round,
      slot,
      lease,
      rank,
      worldSize,
      watched: next === slot ? undefined : next,
      liveness: new LivenessTracker(this.#deadAfterMs),
      lossReported: false,
    };
    const store = this.#backend.roundStore(round);
    const rankZero = slotAt(outcome, outcome.ranks ? outcome.ranks.indexOf(0) : 0);
    const master = outcome.master;
    let bootstrapStoreInfo: RendezvousStoreInfo | undefined;
    // Registering this member's end with the store is one more round trip that nobody needs to wait for:
    // it goes out now, ahead of anything this node sends later.
    lease.becomeMember().catch((err: unknown) => {
      this.#logger.warn("could not register the member's disconnect marker", { round, error: String(err) });
    });
    if (master === undefined) {
      bootstrapStoreInfo = await this.#bootstrapInfo(store, rank, round, rankZero, signal);
    } else {
      // The coordinator was rank 0 and put its bootstrap address into the outcome: nothing to wait for.
      // Rank 0 still publishes it in the round's store, as PyTorch's RendezvousStoreInfo.build does.
      bootstrapStoreInfo = { masterAddr: master.addr, masterPort: master.port };
      if (rank === 0) await this.#publishBootstrap(store, bootstrapStoreInfo);
    }
    if (bootstrapStoreInfo === undefined) return undefined;
    this.emit("completed", { round, rank, worldSize });
    this.#logger.info("rendezvous completed", { runId: this.#runId, round, rank, worldSize });
    return { store, rank, worldSize, bootstrapStoreInfo, round };
  }

  /**
   * PyTorch's `RendezvousStoreInfo.build`: rank 0 publishes where workers bootstrap; the others read it,
   * watching rank 0 meanwhile (slot `rankZero`): `undefined` when it died before publishing.
   */
  async #bootstrapInfo(
    store: Store,
    rank: number,
    round: number,
    rankZero: number,
    signal: AbortSignal,
  ): Promise<RendezvousStoreInfo | undefined> {
    const keys = BOOTSTRAP_KEYS;
    if (rank === 0) {
      const { addr, port } = await this.#masterInfo();
      const info = { masterAddr: addr, masterPort: port };
      await this.#publishBootstrap(store, info);
      return info;
    }
    const deadline = Date.now() + this.settings.joinTimeoutMs;
    const liveness = new LivenessTracker(this.#deadAfterMs);
    for (;;) {
      const step = Math.max(1, Math.min(this.settings.keepAliveIntervalMs, deadline - Date.now()));
      try {
        const [addr, port] = await store.multiGet(keys, { timeoutMs: step, signal });
        return { masterAddr: bytesToText(addr!), masterPort: Number(bytesToText(port!)) };
      } catch (err) {
        // A short wait may also fail to get a connection of its own in time; the check below tells.
        const notYet = hasErrorCode(err, ErrorCode.Timeout) || hasErrorCode(err, ErrorCode.Connection);
        if (!notYet || Date.now() >= deadline) throw err;
      }
      if (await this.#memberGone(round, rankZero, liveness, { signal })) {
        this.#logger.info("rank 0 lost before it published the bootstrap info", {
          runId: this.#runId,
          round,
        });
        return undefined;
      }
    }
  }

  /** Where this node's workers would bootstrap as rank 0: the agent store, or its address and a free port. */
  async #masterInfo(): Promise<{ addr: string; port: number }> {
    const endpoint = this.#options.storeEndpoint;
    if (this.useAgentStore && endpoint !== undefined)
      return { addr: endpoint.masterAddr, port: endpoint.masterPort };
    return { addr: this.node.addr, port: await pickFreePort() };
  }

  async #publishBootstrap(store: Store, info: RendezvousStoreInfo): Promise<void> {
    await store.multiSet(BOOTSTRAP_KEYS, [info.masterAddr, String(info.masterPort)]);
  }

  /** Leaves the round this node is a member of, if any; it stays a member until that succeeded. */
  async #leaveMembership(reason: GoneReason, options?: CallOptions): Promise<void> {
    const member = this.#member;
    if (member === undefined) return;
    await member.lease.stop();
    await this.#backend.markGone(member.round, member.slot, reason, true, options);
    if (this.#member === member) this.#member = undefined;
    this.emit("left", { round: member.round, reason });
  }

  async #timeoutError(round: number): Promise<RendezvousTimeoutError> {
    const tickets = await this.#backend.ticketCount(round).catch(() => 0);
    const slots = Array.from({ length: Math.min(tickets, 64) }, (_, i) => i);
    const gone = await this.#backend.goneSlots(round, slots).catch(() => slots.map(() => undefined));
    const live = slots.filter((s, i) => gone[i] === undefined && s !== this.#joining?.slot);
    const nodes = await this.#backend.nodes(round, live, { timeoutMs: 1000 }).catch(() => []);
    const names = [this.node.id, ...nodes.map((n) => n.id)];
    const more = tickets > slots.length ? ` and ${tickets - slots.length} more tickets` : "";
    const torchrun = (await this.pytorchAgentsPresent({ timeoutMs: 1000 }))
      ? `; ${pytorchAgentsNote(this.#runId)}`
      : "";
    return new RendezvousTimeoutError(
      `round ${round} of run ${JSON.stringify(this.#runId)} did not complete within ` +
        `${this.settings.joinTimeoutMs / 1000} s: ${names.length} of at least ${this.settings.minNodes} ` +
        `nodes joined (${names.join(", ")}${more})${torchrun}`,
    );
  }

  /**
   * Whether PyTorch's own dynamic rendezvous (torchrun's `c10d` backend) keeps a state for this run id on
   * this handler's store (key `torch.rendezvous.<run id>`): torchrun agents joined the same endpoint and
   * run id. The two keep different state (docs/rendezvous.md), so their nodes never meet rdzv's and the
   * round waits for nodes that are there. `false` for a backend other than c10d, or when the store cannot
   * say.
   */
  async pytorchAgentsPresent(options: CallOptions = {}): Promise<boolean> {
    const store = (this.#backend as { store?: Store }).store;
    if (this.#backend.name !== "c10d" || store === undefined) return false;
    return store.check([`${PYTORCH_STATE_PREFIX}${this.#runId}`], options).catch(() => false);
  }

  async isClosed(options: RendezvousCallOptions = {}): Promise<boolean> {
    return this.#backend.isClosed(options);
  }

  async setClosed(options: RendezvousCallOptions = {}): Promise<void> {
    await this.#backend.markClosed(options);
    for (;;) {
      const { openRound } = await this.#backend.getState(options);
      const held = await this.#backend.setState({ kind: "closed", round: openRound }, openRound, options);
      if (held.kind === "closed") break;
    }
    this.emit("closed", { round: this.#member?.round ?? -1 });
  }

  /**
   * Nodes holding a live ticket in the open round, at most `maxNodes` (for a member of the round before:
   * at most the room left in it, `maxNodes - worldSize`; nodes beyond are spares, PyTorch's redundancy
   * list). Markers are read in batches only until that bound is reached, so the read costs what the
   * answer can show: any store client can write the ticket counter, and a forged 1e9 made every call
   * build and read a list of 1e9 slots.
   */
  async numNodesWaiting(options: RendezvousCallOptions = {}): Promise<number> {
    const { openRound } = await this.#backend.getState(options);
    const tickets = await this.#backend.ticketCount(openRound, options);
    const member = this.#member;
    const cap =
      member !== undefined && member.round === openRound - 1
        ? Math.max(0, this.settings.maxNodes - member.worldSize)
        : this.settings.maxNodes;
    let waiting = 0;
    let read = 0;
    while (read < tickets && waiting < cap) {
      // One round trip reads as many slots as could still all be waiting.
      const next = Math.min(tickets, read + (cap - waiting));
      const slots = Array.from({ length: next - read }, (_, i) => read + i);
      const gone = await this.#backend.goneSlots(openRound, slots, options);
      waiting += gone.filter((g) => g === undefined).length;
      read = next;
    }
    return Math.min(waiting, cap);
  }

  /**
   * Resolves `true` once the round this node is a member of loses a member (one left or died) or, while
   * the round is below `maxNodes`, nodes wait to join, so an agent can restart its workers and
   * re-rendezvous without polling; at once when this node is not a member. Resolves `false` on timeout.
   *
   * Deaths are seen at once where the store marks dropped connections (rdzv's TCP store); elsewhere while
   * members wait here: each watches the keep-alives of the next member and, when they stop for
   * `keepAliveIntervalMs * keepAliveMaxAttempts`, marks it dead, which wakes every member.
   */
  async waitForRoundEnd(options: RendezvousCallOptions & { timeoutMs: number }): Promise<boolean> {
    const member = this.#member;
    if (member === undefined) return true;
    const deadline = Date.now() + options.timeoutMs;
    const signal = optionalSignal(options.signal);
    for (;;) {
      const step = Math.max(0, Math.min(deadline - Date.now(), this.settings.keepAliveIntervalMs));
      if (await this.#backend.waitEnded(member.round, { timeoutMs: step, ...signal })) {
        await this.#reportWatchedLoss(member, signal);
        return true;
      }
      const { round, watched, liveness } = member;
      if (watched !== undefined && (await this.#memberGone(round, watched, liveness, signal))) {
        member.lossReported = true; // #memberGone emitted it when it found the keep-alives stopped
        return true;
      }
      if (await this.#nodesWaiting(member, signal)) return true;
      if (Date.now() >= deadline) return false;
    }
  }

  /**
   * The round ended. When the member this node watches died or left, emits `nodeLost` for it, also when
   * the server marked it (its connection dropped) rather than this node: so every lost member is reported
   * once, by the member before it in slot order, at one read per member.
   */
  async #reportWatchedLoss(member: Membership, options: RendezvousCallOptions): Promise<void> {
    if (member.watched === undefined || member.lossReported) return;
    const [reason] = await this.#backend
      .goneSlots(member.round, [member.watched], options)
      .catch(() => [undefined]);
    if (reason !== GoneReason.Dead && reason !== GoneReason.Left) return;
    member.lossReported = true;
    this.emit("nodeLost", { round: member.round, slot: member.watched, reason });
  }

  /**
   * True when member `slot` of completed round `round` is gone or its keep-alives stopped (as `liveness`
   * sees them); then it also marks the round ended.
   */
  async #memberGone(
    round: number,
    slot: number,
    liveness: LivenessTracker,
    options: RendezvousCallOptions,
  ): Promise<boolean> {
    const [reason] = await this.#backend.goneSlots(round, [slot], options);
    if (reason === undefined) {
      const [counter = ""] = await this.#backend.keepAliveCounters(round, [slot], options);
      if (!liveness.observe(String(slot), counter, Date.now())) return false;
    }
    // Also when it is marked gone already: it may have died before it could register its end of the round.
    const held = await this.#backend.markGone(round, slot, GoneReason.Dead, true, options);
    if (reason === undefined) {
      this.#logger.info("member lost: keep-alives stopped", { runId: this.#runId, round, slot });
      this.emit("nodeLost", { round, slot, reason: held });
    }
    return true;
  }

  /** True when nodes wait to join and the round has room for them. */
  async #nodesWaiting(member: Membership, options: RendezvousCallOptions): Promise<boolean> {
    if (member.worldSize >= this.settings.maxNodes) return false;
    // One cheap read in the common case where nobody joined the next round.
    if ((await this.#backend.ticketCount(member.round + 1, options)) === 0) return false;
    return (await this.numNodesWaiting(options)) > 0;
  }

  async shutdown(): Promise<boolean> {
    if (this.#shutDown) return true;
    this.#shutDown = true;
    this.#lifetime.abort(new RendezvousGracefulExitError());
    // Let an interrupted nextRendezvous() mark its ticket left before the store goes away (no longer than
    // the others would take to count this node dead anyway).
    const inFlight = this.#inFlight;
    if (inFlight !== undefined) {
      await settleWithin(inFlight, this.#deadAfterMs);
    }
    // Leaving gets as long as the others would take to count this node dead anyway: with the store
    // gone, every call would otherwise wait out its own timeout (minutes, and a stop signal with it).
    let clean = true;
    const budgetMs = this.#deadAfterMs;
    const leaving = this.#leaveMembership(GoneReason.Left, { timeoutMs: budgetMs });
    try {
      if (!(await settledWithin(leaving, budgetMs))) {
        throw new RendezvousTimeoutError(`leaving took longer than ${budgetMs} ms`);
      }
    } catch (err) {
      clean = false;
      this.#logger.warn("could not leave the rendezvous cleanly", { error: String(err) });
    }
    await this.#options.onShutdown?.().catch((err: unknown) => {
      clean = false;
      this.#logger.warn("shutdown hook failed", { error: String(err) });
    });
    return clean;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.shutdown();
  }
}

function optionalSignal(signal: AbortSignal | undefined): { signal?: AbortSignal } {
  return signal === undefined ? {} : { signal };
}

/**
 * Whether `promise` settled within `ms`: true when it resolved in time, false when `ms` passed first; its
 * rejection in time is rethrown.
 */
async function settledWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const elapsed = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  promise.catch(() => undefined);
  try {
    return await Promise.race([promise.then(() => true as const), elapsed]);
  } finally {
    clearTimeout(timer);
  }
}

/** Resolves when `promise` settles or `ms` passed, whichever comes first (its outcome ignored). */
async function settleWithin(promise: Promise<unknown>, ms: number): Promise<void> {
  await settledWithin(promise, ms).catch(() => undefined);
}

/** A signal that fires when any of `signals` fires. */
function anySignal(...signals: (AbortSignal | undefined)[]): AbortSignal {
  const list = signals.filter((s): s is AbortSignal => s !== undefined);
  if (list.length === 1) return list[0]!;
  return AbortSignal.any(list);
}

/** Creates a dynamic rendezvous handler over `options.backend`. */
export function createDynamicRendezvousHandler(options: DynamicHandlerOptions): DynamicRendezvousHandler {
  return new DynamicRendezvousHandler(options);
}
