/**
 * A simulation of the dynamic rendezvous built from the pure parts of src/rendezvous/round.ts only
 * (`decideRound`, `selectMembers` via it, `rankOf`, `memberSlots`, `assignStickyRanks`, the outcome codec and
 * `LivenessTracker`), on a virtual clock: no store, no timers, no I/O. test/rendezvous-model.test.ts drives
 * it with fast-check commands and checks the invariants of issue 3 on every step.
 *
 * It follows the protocol of dynamic-handler.ts and coordinator.ts: joining takes the next slot of the open
 * round; the first joiner coordinates (another live node takes over once the coordinator is marked gone or
 * its keep-alives stood still for `keepAliveIntervalMs * keepAliveMaxAttempts`); the coordinator feeds its
 * view to `decideRound` and writes the outcome once, encoded; every joiner decodes that text on its own.
 * Re-joining members take their new slot before they leave the old round. A crash either drops the
 * connection (the server marks the node's slots gone at once) or is silent (keep-alives just stop).
 */

import {
  assignStickyRanks,
  decideRound,
  decodeOutcome,
  encodeOutcome,
  GoneReason,
  LivenessTracker,
  memberSlots,
  type RoundOutcome,
  rankOf,
} from "../../src/rendezvous/round.js";

/** Settings of one simulated run (durations in virtual ms). */
export interface SimSettings {
  readonly minNodes: number;
  readonly maxNodes: number;
  readonly lastCallTimeoutMs: number;
  readonly keepAliveIntervalMs: number;
  readonly keepAliveMaxAttempts: number;
  readonly joinTimeoutMs: number;
  readonly stickyRanks: boolean;
}

export type SimStatus = "idle" | "joining" | "member" | "left" | "crashed";

/** One node as the simulation tracks it. */
export interface SimNode {
  readonly id: number;
  status: SimStatus;
  /** Re-joins when its round ends or nodes wait, as an agent does. */
  agent: boolean;
  joining?: { round: number; slot: number; deadline: number } | undefined;
  member?: { round: number; slot: number; rank: number } | undefined;
  prevRank?: number;
  /** Silent crash: keep-alives stopped at this time and nothing was marked. */
  silentSince?: number;
}

interface Coordinator {
  readonly slot: number;
  readonly liveness: LivenessTracker;
  nextCheck: number;
  minReachedAt?: number;
  wakeAt?: number;
}

/** One round: slots (tickets), leave markers, the write-once outcome. */
export interface SimRound {
  readonly index: number;
  /** Node id holding each slot. */
  readonly holders: number[];
  /** When each slot was taken (its keep-alive counter starts then). */
  readonly takenAt: number[];
  readonly gone: Map<number, GoneReason>;
  /** The outcome as stored: encoded text, decoded by each reader. */
  encoded?: string;
  decidedAt?: number;
  /** Since when the count of slots not marked gone has stayed >= minNodes. */
  minSince?: number;
  coordinator?: Coordinator;
  /** The members' watch of each other once the round completed. */
  watch?: { readonly liveness: LivenessTracker; nextCheck: number };
}

/** A node's view of a completed round, as it computed it from the outcome text. */
export interface SimReport {
  readonly node: number;
  readonly round: number;
  readonly rank: number;
  readonly worldSize: number;
  readonly slots: readonly number[];
}

/** The simulated rendezvous. `violations` collects broken rules; the model test asserts it stays empty. */
export class RoundSim {
  now = 0;
  closed = false;
  readonly nodes: SimNode[];
  readonly rounds: SimRound[] = [];
  readonly reports: SimReport[] = [];
  readonly violations: string[] = [];
  readonly errors: { node: number; code: "closed" | "timeout" }[] = [];
  /** Called after every step of the clock (the model test checks its invariants there). */
  onStep: () => void = () => undefined;

  constructor(
    readonly settings: SimSettings,
    count: number,
    agents: readonly boolean[],
  ) {
    this.nodes = Array.from({ length: count }, (_, id) => ({
      id,
      status: "idle",
      agent: agents[id] ?? false,
    }));
  }

  get deadAfterMs(): number {
    return this.settings.keepAliveIntervalMs * this.settings.keepAliveMaxAttempts;
  }

  /** The lowest round without an outcome. */
  get openRound(): SimRound {
    let r = this.rounds.findIndex((round) => round.encoded === undefined);
    if (r < 0) r = this.rounds.length;
    this.rounds[r] ??= { index: r, holders: [], takenAt: [], gone: new Map() };
    return this.rounds[r]!;
  }

  outcome(round: SimRound): RoundOutcome | undefined {
    return round.encoded === undefined ? undefined : decodeOutcome(round.encoded);
  }

  isLive(n: SimNode): boolean {
    return n.status !== "left" && n.status !== "crashed";
  }

  /** Keep-alive counter of a slot: one bump per interval since it was taken, frozen by a silent crash. */
  counter(round: SimRound, slot: number): string {
    const holder = this.nodes[round.holders[slot]!]!;
    const until = holder.silentSince ?? this.now;
    return String(Math.floor((until - round.takenAt[slot]!) / this.settings.keepAliveIntervalMs) + 1);
  }

  /** `nextRendezvous()` from an idle node or a member (which leaves its round once it holds a new slot). */
  join(n: SimNode, deadline = this.now + this.settings.joinTimeoutMs): void {
    const open = this.openRound;
    const last = this.rounds[open.index - 1];
    if (this.closed || (last !== undefined && this.outcome(last)?.kind === "closed")) {
      this.errors.push({ node: n.id, code: "closed" });
      if (n.member !== undefined) this.markGone(this.rounds[n.member.round]!, n.member.slot, GoneReason.Left);
      n.member = undefined;
      n.status = "idle";
      return;
    }
    const slot = open.holders.length;
    open.holders.push(n.id);
    open.takenAt.push(this.now);
    n.joining = { round: open.index, slot, deadline };
    n.status = "joining";
    this.#recount(open);
    if (n.member !== undefined) {
      this.markGone(this.rounds[n.member.round]!, n.member.slot, GoneReason.Rejoined);
      n.member = undefined;
    }
  }

  /** `shutdown()`: leaves the slot it holds and its membership. */
  leave(n: SimNode): void {
    if (n.joining !== undefined)
      this.markGone(this.rounds[n.joining.round]!, n.joining.slot, GoneReason.Left);
    if (n.member !== undefined) this.markGone(this.rounds[n.member.round]!, n.member.slot, GoneReason.Left);
    n.status = "left";
  }

  /** A crash; with `disconnect` the server marks the node's slots dead at once (on-disconnect keys). */
  crash(n: SimNode, disconnect: boolean): void {
    n.status = "crashed";
    if (!disconnect) {
      n.silentSince = this.now;
      return;
    }
    if (n.joining !== undefined)
      this.markGone(this.rounds[n.joining.round]!, n.joining.slot, GoneReason.Dead);
    if (n.member !== undefined) this.markGone(this.rounds[n.member.round]!, n.member.slot, GoneReason.Dead);
  }

  /** `setClosed()`: decides the open round as closed. */
  close(): void {
    this.closed = true;
    const open = this.openRound;
    open.encoded = encodeOutcome({ kind: "closed", round: open.index });
    open.decidedAt = this.now;
  }

  /** First writer wins, as the store's compare-and-set. */
  markGone(round: SimRound, slot: number, reason: GoneReason): void {
    if (!round.gone.has(slot)) round.gone.set(slot, reason);
    this.#recount(round);
  }

  #recount(round: SimRound): void {
    const live = round.holders.length - round.gone.size;
    if (live < this.settings.minNodes) delete round.minSince;
    else round.minSince ??= this.now;
  }

  /** Moves the clock by `ms`, stopping at every time something is due (last call, liveness checks). */
  advance(ms: number): void {
    const target = this.now + ms;
    this.settle();
    while (this.now < target) {
      const open = this.openRound;
      const due = [target, this.now + this.settings.keepAliveIntervalMs];
      if (open.coordinator?.wakeAt !== undefined && open.coordinator.wakeAt > this.now)
        due.push(open.coordinator.wakeAt);
      if (open.coordinator !== undefined && open.coordinator.nextCheck > this.now)
        due.push(open.coordinator.nextCheck);
      for (const r of this.rounds)
        if (r.watch !== undefined && r.watch.nextCheck > this.now) due.push(r.watch.nextCheck);
      this.now = Math.min(...due);
      this.settle();
      this.onStep();
    }
  }

  /** Runs everything that reacts to the current state until nothing changes. */
  settle(): void {
    for (let i = 0; i < 1000; i++) {
      const before = this.#fingerprint();
      this.#timeouts();
      this.#watchMembers();
      this.#coordinate();
      this.#deliver();
      this.#agents();
      if (this.#fingerprint() === before) return;
    }
    this.violations.push("the simulation did not settle");
  }

  #fingerprint(): string {
    const rounds = this.rounds.map((r) => `${r.holders.length}/${r.gone.size}/${r.encoded ?? ""}`).join(";");
    const nodes = this.nodes
      .map((n) => `${n.status}${n.joining?.slot ?? ""}${n.member?.round ?? ""}`)
      .join(",");
    return `${rounds}|${nodes}`;
  }

  /** Joiners past their join deadline give up and leave their slot (RendezvousTimeoutError). */
  #timeouts(): void {
    for (const n of this.nodes) {
      if (n.status !== "joining" || n.joining === undefined || this.now < n.joining.deadline) continue;
      const round = this.rounds[n.joining.round]!;
      if (round.encoded !== undefined) continue;
      this.markGone(round, n.joining.slot, GoneReason.Left);
      if (n.member !== undefined) this.markGone(this.rounds[n.member.round]!, n.member.slot, GoneReason.Left);
      n.joining = undefined;
      n.member = undefined;
      n.status = "idle";
      this.errors.push({ node: n.id, code: "timeout" });
    }
  }

  /**
   * Members of a completed round watch each other's keep-alive counters (waitForRoundEnd), every interval,
   * through a `LivenessTracker`, and mark a member dead once its counter stood still too long.
   */
  #watchMembers(): void {
    for (const round of this.rounds) {
      const outcome = this.outcome(round);
      if (outcome?.kind !== "complete") continue;
      const slots = memberSlots(outcome);
      const watcher = slots.some((s) => !round.gone.has(s) && this.isLive(this.nodes[round.holders[s]!]!));
      if (!watcher) continue;
      round.watch ??= { liveness: new LivenessTracker(this.deadAfterMs), nextCheck: this.now };
      if (this.now < round.watch.nextCheck) continue;
      round.watch.nextCheck = this.now + this.settings.keepAliveIntervalMs;
      for (const s of slots) {
        if (round.gone.has(s)) continue;
        if (round.watch.liveness.observe(String(s), this.counter(round, s), this.now))
          this.markGone(round, s, GoneReason.Dead);
      }
    }
  }

  /** The open round's coordinator: takeover, liveness, `decideRound`, and the outcome. */
  #coordinate(): void {
    const round = this.openRound;
    if (round.holders.length === 0 || this.closed) return;
    const coordinator = this.#coordinator(round);
    if (coordinator === undefined) return;
    const checkLiveness = this.now >= coordinator.nextCheck;
    if (checkLiveness) coordinator.nextCheck = this.now + this.settings.keepAliveIntervalMs;
    const previousRound = this.rounds[round.index - 1];
    const previous = previousRound === undefined ? undefined : this.outcome(previousRound);
    const previousSlots = previous?.kind === "complete" ? memberSlots(previous) : undefined;
    if (checkLiveness) {
      const own = round.holders.map((_, s) => s).filter((s) => s !== coordinator.slot);
      this.#observe(coordinator, round, own);
      if (previousSlots !== undefined) this.#observe(coordinator, previousRound!, previousSlots);
    }
    const drained = previousSlots?.every((s) => previousRound!.gone.has(s));
    const decision = decideRound(
      {
        now: this.now,
        tickets: round.holders.length,
        gone: new Set(round.gone.keys()),
        ...(drained === undefined ? {} : { previous: { drained } }),
        ...(coordinator.minReachedAt === undefined ? {} : { minReachedAt: coordinator.minReachedAt }),
      },
      this.settings,
    );
    if (decision.kind === "wait") {
      if (decision.minReachedAt === undefined) delete coordinator.minReachedAt;
      else coordinator.minReachedAt = decision.minReachedAt;
      if (decision.wakeAt === undefined) delete coordinator.wakeAt;
      else coordinator.wakeAt = decision.wakeAt;
      return;
    }
    let outcome: RoundOutcome = {
      kind: "complete",
      round: round.index,
      span: decision.span,
      excluded: decision.excluded,
    };
    if (this.settings.stickyRanks) {
      const prevRanks = memberSlots(outcome).map((s) => this.nodes[round.holders[s]!]!.prevRank);
      outcome = { ...outcome, ranks: assignStickyRanks(prevRanks) };
    }
    this.#checkDecision(round, outcome, drained);
    round.encoded = encodeOutcome(outcome);
    round.decidedAt = this.now;
  }

  /** The live coordinator of `round`, after a takeover if the last one is gone or stood still too long. */
  #coordinator(round: SimRound): Coordinator | undefined {
    let c = round.coordinator;
    if (c !== undefined && !round.gone.has(c.slot)) {
      const since = this.nodes[round.holders[c.slot]!]!.silentSince;
      if (since === undefined) return c;
      if (this.now - since < this.deadAfterMs) return undefined;
      this.markGone(round, c.slot, GoneReason.Dead);
    }
    const slot = round.holders.findIndex(
      (id, s) => !round.gone.has(s) && this.nodes[id]!.status === "joining",
    );
    if (slot < 0) return undefined;
    c = {
      slot,
      liveness: new LivenessTracker(this.deadAfterMs),
      nextCheck: this.now + this.settings.keepAliveIntervalMs,
    };
    round.coordinator = c;
    return c;
  }

  #observe(c: Coordinator, round: SimRound, slots: readonly number[]): void {
    for (const s of slots) {
      if (round.gone.has(s)) continue;
      if (c.liveness.observe(`${round.index}/${s}`, this.counter(round, s), this.now))
        this.markGone(round, s, GoneReason.Dead);
    }
  }

  /** Every joiner of a decided round reads the outcome text and computes its own place from it. */
  #deliver(): void {
    for (const n of this.nodes) {
      if (n.status !== "joining" || n.joining === undefined) continue;
      const round = this.rounds[n.joining.round]!;
      if (round.encoded === undefined) continue;
      const outcome = decodeOutcome(round.encoded);
      const { slot, deadline } = n.joining;
      n.joining = undefined;
      if (outcome.kind === "closed") {
        n.status = "idle";
        this.errors.push({ node: n.id, code: "closed" });
        continue;
      }
      const place = rankOf(outcome, slot);
      if (place === undefined) {
        // A spare (or counted out): it goes on in the next round, as nextRendezvous() loops.
        this.join(n, deadline);
        continue;
      }
      n.status = "member";
      n.member = { round: round.index, slot, rank: place.rank };
      n.prevRank = place.rank;
      const slots = memberSlots(outcome);
      this.reports.push({ node: n.id, round: round.index, ...place, slots });
    }
  }

  /** Agents re-join when a member of their round is gone, or when nodes wait and there is room. */
  #agents(): void {
    const open = this.openRound;
    const waiting = open.holders.filter((_, s) => !open.gone.has(s)).length;
    for (const n of this.nodes) {
      if (!n.agent || n.status !== "member" || n.member === undefined) continue;
      const round = this.rounds[n.member.round]!;
      const outcome = this.outcome(round);
      if (outcome?.kind !== "complete") continue;
      const ended = memberSlots(outcome).some((s) => round.gone.has(s));
      const size = outcome.span - outcome.excluded.length;
      const room = open.index === round.index + 1 && waiting > 0 && size < this.settings.maxNodes;
      if ((ended || room) && !this.closed) this.join(n);
    }
  }

  /** Rules a complete decision must obey, checked against the simulation's own bookkeeping. */
  #checkDecision(round: SimRound, outcome: RoundOutcome, drained: boolean | undefined): void {
    const { minNodes, maxNodes, lastCallTimeoutMs } = this.settings;
    const bad = (what: string): void => {
      this.violations.push(`t=${this.now} round ${round.index}: ${what}`);
    };
    if (drained === false) bad("completed while the previous round still runs");
    const members = memberSlots(outcome);
    const live = round.holders.map((_, s) => s).filter((s) => !round.gone.has(s));
    if (members.some((s) => round.gone.has(s))) bad("a slot marked gone is a member");
    const expected = live.slice(0, maxNodes);
    if (members.join() !== expected.join())
      bad(`members ${members} are not the first live slots ${expected}`);
    const w = members.length;
    if (w < minNodes || w > maxNodes) bad(`world size ${w} outside ${minNodes}..${maxNodes}`);
    const waited = round.minSince === undefined ? -1 : this.now - round.minSince;
    if (w < maxNodes && drained === undefined && waited < lastCallTimeoutMs)
      bad(`completed below max after a last call of ${waited} ms`);
    const roundTrip = decodeOutcome(encodeOutcome(outcome));
    if (JSON.stringify(roundTrip) !== JSON.stringify(outcome)) bad("the outcome does not survive its codec");
  }
}
