/**
 * The etcd rendezvous backend. Same key layout as the store-backed backend (store-backend.ts), which it
 * uses for the markers, the coordinator claim and the waits (all watch-based on an `EtcdStore`), with
 * etcd-native parts where etcd does better:
 *
 * - **Tickets without contention**: joining puts `r<R>/tickets` and takes the key's previous *version*
 *   as its slot (etcd bumps a key's version on every put), in the same transaction that checks the round
 *   is still open. No compare-and-set loop, however many nodes join at once.
 * - **Decisions in one transaction**: `setState` creates `r<R>/outcome` only if it does not exist
 *   (compare on its create revision) and moves the `open` hint in the same transaction.
 * - **Liveness through a lease**: each backend holds one etcd lease (TTL = the keep-alive budget, more
 *   past 3 attempts: `leaseTtlS` in etcd.ts; kept alive by etcd3). A joiner publishes its descriptor
 *   together with `r<R>/live/<slot>` attached to that lease, and a member adds `r<R>/member/<slot>`.
 *   When the node dies its lease expires and etcd deletes those keys: a slot whose descriptor is there
 *   but whose `live` key is gone is dead (whoever reads its markers first marks it so), and members
 *   blocked in `waitEnded` are woken by the deletion of a `member` key, without watching each other. The
 *   keep-alive counters of the store-backed backend still run beside the lease, so a stalled node is
 *   seen within the configured budget even where that is shorter than etcd's lease granularity (whole
 *   seconds).
 * - **Old rounds deleted in one transaction**: once round R completes, the decision's winner deletes every
 *   key of round R - 2 but its outcome (two range deletes, whatever the round's size: its round store's
 *   keys and the lease keys included). An etcd cluster outlives the job.
 */

import { EtcdLeaseInvalidError, type IKeyValue, type Lease } from "etcd3";
import { RendezvousStateError } from "../errors.js";
import { type Logger, silentLogger } from "../log.js";
import type { NodeDescriptor, RendezvousBackend, RendezvousState, SlotLease } from "../rendezvous/backend.js";
import { decodeOutcome, encodeOutcome, GoneReason, type RoundOutcome } from "../rendezvous/round.js";
import { mapEtcdError } from "../store/etcd/errors.js";
import { type EtcdStore, rangeKvs } from "../store/etcd/store.js";
import type { CallOptions, Store } from "../store/store.js";
import { EtcdRoundEndWatch } from "./etcd-watch.js";
import { StoreRendezvousBackend } from "./store-backend.js";

/** Options of `EtcdRendezvousBackend`. */
export interface EtcdBackendOptions {
  /** TTL of the node's lease in seconds (default 15: PyTorch's 5 s keep-alive x 3 attempts). etcd may raise it to its minimum. */
  leaseTtlS?: number;
  logger?: Logger;
  /**
   * The store the rendezvous keys go through (default: the `EtcdStore` itself). Tests pass a wrapper that
   * can simulate a crash.
   */
  kv?: Store;
  /** The backend's name, as handlers report it (default "etcd"; "etcd-v2" when created under PyTorch's name). */
  name?: "etcd" | "etcd-v2";
}

/** Up to this many slots, `goneSlots` reads their keys by name (2 per slot, in one transaction). */
const FEW_SLOTS = 16;

/** A `RendezvousBackend` on etcd v3. */
export class EtcdRendezvousBackend implements RendezvousBackend {
  readonly name: "etcd" | "etcd-v2";
  readonly store: Store;
  readonly etcd: EtcdStore;
  readonly runId: string;
  readonly #inner: StoreRendezvousBackend;
  readonly #leaseTtlS: number;
  readonly #logger: Logger;
  #lease: Lease | undefined;

  constructor(etcd: EtcdStore, runId: string, options: EtcdBackendOptions = {}) {
    this.name = options.name ?? "etcd";
    this.etcd = etcd;
    this.runId = runId;
    this.store = options.kv ?? etcd;
    this.#logger = options.logger ?? silentLogger;
    this.#leaseTtlS = Math.max(1, Math.ceil(options.leaseTtlS ?? 15));
    this.#inner = new StoreRendezvousBackend(this.store, runId, { name: "etcd", logger: this.#logger });
    // A closed client stops keep-alives (a crash, to the others); the lease then expires on its own.
    etcd.onClose(() => this.#lease?.release());
  }

  /** The etcd key of `path` under this run. */
  #key(path: string): Buffer {
    return this.etcd.etcdKey(this.#inner.key(path));
  }

  #roundKey(round: number, path: string): Buffer {
    return this.#key(`r${round}/${path}`);
  }

  /** The node's lease, granted on first use and again after it was lost. */
  #nodeLease(): Lease {
    if (this.#lease !== undefined && !this.#lease.revoked()) return this.#lease;
    const lease = this.etcd.client.lease(this.#leaseTtlS);
    // Once: etcd3 may report one expiry twice (the keep-alive reply, then its own 2 x TTL rule).
    lease.once("lost", (err) => {
      this.#logger.warn("etcd lease lost: this node counts as dead to the others", { error: String(err) });
      if (this.#lease === lease) this.#lease = undefined;
    });
    this.#lease = lease;
    return lease;
  }

  getState(options?: CallOptions): Promise<RendezvousState> {
    return this.#inner.getState(options);
  }

  async setState(outcome: RoundOutcome, token: number, options?: CallOptions): Promise<RoundOutcome> {
    if (outcome.round !== token)
      throw new RendezvousStateError(`outcome of round ${outcome.round} under token ${token}`);
    const key = this.#roundKey(token, "outcome");
    const encoded = encodeOutcome(outcome);
    const { client } = this.etcd;
    const res = await this.etcd.call("setState", options, (o) =>
      client
        .if(key, "Create", "==", 0)
        .then(client.put(key).value(encoded), client.put(this.#key("open")).value(String(token + 1)))
        .else(client.get(key))
        .options(o)
        .commit(),
    );
    if (res.succeeded) {
      if (outcome.kind === "complete" && token >= 2) {
        this.#cleanRound(token - 2).catch((err: unknown) => {
          this.#logger.debug("could not delete an old round's keys", {
            round: token - 2,
            error: String(err),
          });
        });
      }
      return outcome;
    }
    const held = rangeKvs(res, 0)[0];
    if (held === undefined) throw new RendezvousStateError(`round ${token} has neither an outcome nor none`);
    return parseOutcome(held.value.toString("utf8"), token);
  }

  /**
   * Deletes every key of `round` but its outcome, in one transaction of two range deletes (whatever the
   * round's size): the keys of the store-backed layout, the `live` and `member` keys (their lease is the
   * node's, which outlives the round), and whatever the round's store holds. Called by the winner of the
   * decision of round `round + 2`, once complete: round `round + 1` completing means `round` drained
   * (round.ts: every member left or was counted dead), and nobody reads it again but for its outcome, by
   * which joiners find the open round. A node that stalled through two rounds may write a few of its old
   * round's keys again when it wakes (a ticket, its keep-alive, a leave marker); they stay.
   */
  async #cleanRound(round: number): Promise<void> {
    const prefix = this.#roundKey(round, "");
    const outcome = this.#roundKey(round, "outcome");
    const afterOutcome = Buffer.concat([outcome, Buffer.from([0])]);
    // The prefix ends in "/": the key after every key under it ends in "0" ("r1/" does not cover "r10/").
    const end = Buffer.from(prefix);
    end[end.length - 1] = end[end.length - 1]! + 1;
    const { client } = this.etcd;
    await this.etcd.call("cleanRound", undefined, (o) =>
      client
        .if(outcome, "Version", ">", -1)
        .then(
          { request_delete_range: { key: prefix, range_end: outcome } },
          { request_delete_range: { key: afterOutcome, range_end: end } },
        )
        .options(o)
        .commit(),
    );
  }

  waitOutcome(
    round: number,
    options: CallOptions & { timeoutMs: number },
  ): Promise<RoundOutcome | undefined> {
    return this.#inner.waitOutcome(round, options);
  }

  isClosed(options?: CallOptions): Promise<boolean> {
    return this.#inner.isClosed(options);
  }

  markClosed(options?: CallOptions): Promise<void> {
    return this.#inner.markClosed(options);
  }

  /** Two round trips: the hint and the closed flag; the open check and a ticket; then the descriptor. */
  async enter(
    node: NodeDescriptor,
    options?: CallOptions,
  ): Promise<{ round: number; slot: number } | undefined> {
    const { client } = this.etcd;
    const first = await this.etcd.read("enter", options, (o) =>
      client
        .if(this.#key("open"), "Version", ">", -1)
        .then(client.get(this.#key("open")), client.get(this.#key("closed")))
        .options(o)
        .commit(),
    );
    if (rangeKvs(first, 1).length > 0) return undefined;
    const hint = rangeKvs(first, 0)[0];
    let start = hint === undefined ? 0 : Number(hint.value.toString("latin1"));
    // The hint moves in the outcome's own transaction, so it is exact unless another client wrote it: one
    // that is not a round number (it made this loop take tickets in round NaN) is found again by search.
    if (!Number.isSafeInteger(start) || start < 0) start = (await this.#inner.getState(options)).openRound;
    for (let round = start; ; round++) {
      // The hint's round takes a ticket only if the round before it is decided (checked in the same
      // transaction); later rounds follow a decided one. A hint ahead of the truth, which only another
      // client can write, left this node in a round that never opens (its join timed out), and a ticket
      // there would count as a node that never shows up once that round does open.
      const { slot, outcome, ahead } = await this.#ticket(round, options, round === start && round > 0);
      if (ahead) {
        const { openRound } = await this.#inner.getState(options);
        this.#logger.warn("the open-round hint is ahead of the open round; joining the open round", {
          runId: this.runId,
          hint: start,
          openRound,
        });
        start = openRound;
        round = openRound - 1;
        continue;
      }
      if (outcome !== undefined) {
        if (outcome.kind === "closed") return undefined;
        continue;
      }
      await this.#publish(round, slot, node, options);
      return { round, slot };
    }
  }

  async join(round: number, node: NodeDescriptor, options?: CallOptions): Promise<number> {
    const { slot } = await this.#ticket(round, options);
    await this.#publish(round, slot, node, options);
    return slot;
  }

  /**
   * Takes a ticket in `round` (the tickets key's version before this put) and reads its outcome,
   * atomically. With `afterDecided`, only if round `round - 1` has an outcome; else nothing is written and
   * `ahead` is true.
   */
  async #ticket(
    round: number,
    options?: CallOptions,
    afterDecided = false,
  ): Promise<{ slot: number; outcome?: RoundOutcome; ahead?: boolean }> {
    const { client } = this.etcd;
    const tickets = this.#roundKey(round, "tickets");
    const outcomeKey = this.#roundKey(round, "outcome");
    const res = await this.etcd.call("join", options, (o) =>
      (afterDecided
        ? client.if(this.#roundKey(round - 1, "outcome"), "Version", ">", 0)
        : client.if(tickets, "Version", ">", -1)
      )
        .then(
          { request_put: { key: tickets, value: Buffer.alloc(0), prev_kv: true } },
          client.get(outcomeKey),
        )
        .options(o)
        .commit(),
    );
    if (!res.succeeded) return { slot: -1, ahead: true };
    const prev = res.responses[0]?.response_put?.prev_kv;
    const slot = prev === undefined || prev === null ? 0 : Number(prev.version);
    const decided = rangeKvs(res, 1)[0];
    if (decided === undefined) return { slot };
    return { slot, outcome: parseOutcome(decided.value.toString("utf8"), round) };
  }

  /** Puts the descriptor together with the slot's `live` key on the node's lease. */
  async #publish(round: number, slot: number, node: NodeDescriptor, options?: CallOptions): Promise<void> {
    const { client } = this.etcd;
    const nodeKey = this.#roundKey(round, `node/${slot}`);
    await this.#underLease("join", (leaseId) =>
      this.etcd.call("join", options, (o) =>
        client
          .if(nodeKey, "Version", ">", -1)
          .then(
            client.put(nodeKey).value(JSON.stringify(node)),
            client
              .put(this.#roundKey(round, `live/${slot}`))
              .value(node.id)
              .lease(leaseId),
          )
          .options(o)
          .commit(),
      ),
    );
  }

  /**
   * Runs `op` with the node's lease. When etcd no longer knows that lease (it expired while this process
   * stalled, before the client's keep-alives found out), drops it and runs `op` once more under a new one:
   * the others counted this node dead meanwhile, which it learns from its slot's marks, not from here.
   */
  async #underLease<T>(what: string, op: (leaseId: string) => Promise<T>): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      const lease = this.#nodeLease();
      const leaseId = await lease.grant().catch((err: unknown) => {
        throw mapEtcdError(err, "lease grant", this.etcd.hosts);
      });
      try {
        return await op(leaseId);
      } catch (err) {
        if (attempt > 0 || !isLeaseGone(err)) throw err;
        this.#logger.warn("etcd dropped this node's lease (it expired); going on under a new one", { what });
        if (this.#lease === lease) this.#lease = undefined;
        lease.release();
      }
    }
  }

  async ticketCount(round: number, options?: CallOptions): Promise<number> {
    const res = await this.etcd.read("ticketCount", options, (o) =>
      this.etcd.client.get(this.#roundKey(round, "tickets")).options(o).exec(),
    );
    return Number(res.kvs[0]?.version ?? 0);
  }

  nodes(round: number, slots: readonly number[], options?: CallOptions): Promise<NodeDescriptor[]> {
    return this.#inner.nodes(round, slots, options);
  }

  waitJoined(round: number, slot: number, options: CallOptions & { timeoutMs: number }): Promise<boolean> {
    return this.#inner.waitJoined(round, slot, options);
  }

  /**
   * Keep-alive counters as the store-backed backend writes them (a stalled node is seen within the
   * keep-alive budget, whatever etcd's lease granularity), while the slot's `live` key rides on the lease.
   * Becoming a member puts `r<R>/member/<slot>` on the lease too.
   */
  async keepAlive(round: number, slot: number, intervalMs: number): Promise<SlotLease> {
    const counters = await this.#inner.keepAlive(round, slot, intervalMs);
    let stopped = false;
    return {
      becomeMember: async () => {
        if (stopped) return;
        await this.#underLease("becomeMember", (leaseId) =>
          this.etcd.call("becomeMember", undefined, (o) =>
            this.etcd.client
              .put(this.#roundKey(round, `member/${slot}`))
              .value("1")
              .lease(leaseId)
              .options(o)
              .exec(),
          ),
        );
      },
      // The lease keys stay until the node goes: deleting them here would look like a death.
      stop: async () => {
        stopped = true;
        await counters.stop();
      },
    };
  }

  keepAliveCounters(round: number, slots: readonly number[], options?: CallOptions): Promise<string[]> {
    return this.#inner.keepAliveCounters(round, slots, options);
  }

  markGone(
    round: number,
    slot: number,
    reason: GoneReason,
    endsRound: boolean,
    options?: CallOptions,
  ): Promise<GoneReason> {
    return this.#inner.markGone(round, slot, reason, endsRound, options);
  }

  /** Marked slots, plus published slots whose `live` key expired with their lease (marked dead here). */
  async goneSlots(
    round: number,
    slots: readonly number[],
    options?: CallOptions,
  ): Promise<(GoneReason | undefined)[]> {
    if (slots.length === 0) return [];
    const [reasons, { published, live }] = await Promise.all([
      this.#inner.goneSlots(round, slots, options),
      this.#present(round, slots, options),
    ]);
    return Promise.all(
      slots.map(async (slot, i) => {
        const reason = reasons[i];
        if (reason !== undefined || !published.has(slot) || live.has(slot)) return reason;
        return this.#inner.markGone(round, slot, GoneReason.Dead, false, options);
      }),
    );
  }

  /**
   * Which of `slots` published a descriptor (`node/<slot>`) and which are still live (`live/<slot>`). A
   * few slots (a member checking the one it watches, every keep-alive interval) are read by key, in one
   * transaction; many by two range reads of the round's keys, as reading every key by name would cost more.
   */
  async #present(
    round: number,
    slots: readonly number[],
    options?: CallOptions,
  ): Promise<{ published: Set<number>; live: Set<number> }> {
    const { client } = this.etcd;
    if (slots.length > FEW_SLOTS) {
      // Both ranges in one transaction, so at one revision. Read apart, a node that published between
      // the two reads (its descriptor and its `live` key go in together) could be seen published but not
      // live, and counted dead while it joins: a leader election, which makes etcd answer one read after
      // the other was retried, did that (a 50-node test: a slot marked gone that no node had left).
      const ranges = await Promise.all(
        (["node", "live"] as const).map(async (kind) => {
          const op = await client
            .getAll()
            .prefix(this.#roundKey(round, `${kind}/`))
            .op();
          return { request_range: { ...op.request_range, keys_only: true } };
        }),
      );
      const res = await this.etcd.read("read", options, (o) =>
        client
          .if(this.#roundKey(round, "tickets"), "Version", ">", -1)
          .then(...ranges)
          .options(o)
          .commit(),
      );
      return { published: slotsOf(rangeKvs(res, 0)), live: slotsOf(rangeKvs(res, 1)) };
    }
    const keys = slots.flatMap((slot) => [
      this.#roundKey(round, `node/${slot}`),
      this.#roundKey(round, `live/${slot}`),
    ]);
    const res = await this.etcd.read("read", options, (o) =>
      client
        .if(keys[0]!, "Version", ">", -1)
        .then(...keys.map((key) => client.get(key)))
        .options(o)
        .commit(),
    );
    const published = new Set<number>();
    const live = new Set<number>();
    slots.forEach((slot, i) => {
      if (rangeKvs(res, 2 * i).length > 0) published.add(slot);
      if (rangeKvs(res, 2 * i + 1).length > 0) live.add(slot);
    });
    return { published, live };
  }

  waitAllGone(
    round: number,
    slots: readonly number[],
    options: CallOptions & { timeoutMs: number },
  ): Promise<boolean> {
    return this.#inner.waitAllGone(round, slots, options);
  }

  /** Until `r<R>/ended` is put or a `member` key of the round is deleted (its node's lease ended). */
  async waitEnded(round: number, options: CallOptions & { timeoutMs: number }): Promise<boolean> {
    const event = await new EtcdRoundEndWatch(this.etcd, this.#roundKey(round, "")).step(options);
    if (event === undefined) return false;
    if (event.type === "delete") {
      const slot = Number(event.path.slice("member/".length));
      await this.#inner.markGone(round, slot, GoneReason.Dead, true, options).catch(() => undefined);
    }
    return true;
  }

  tryLead(round: number, slot: number, current?: number, options?: CallOptions): Promise<number> {
    return this.#inner.tryLead(round, slot, current, options);
  }

  leader(round: number, options?: CallOptions): Promise<number | undefined> {
    return this.#inner.leader(round, options);
  }

  roundStore(round: number): Store {
    return this.#inner.roundStore(round);
  }

  /** Revokes the node's lease (its `live` and `member` keys go with it). Call after leaving. */
  async close(): Promise<void> {
    const lease = this.#lease;
    this.#lease = undefined;
    if (lease !== undefined && !lease.revoked()) await lease.revoke().catch(() => undefined);
  }
}

/** Whether `err` (as `EtcdStore.call` throws it) says etcd does not know the lease a put named. */
function isLeaseGone(err: unknown): boolean {
  const cause = (err as { cause?: unknown }).cause ?? err;
  return cause instanceof EtcdLeaseInvalidError;
}

function parseOutcome(text: string, round: number): RoundOutcome {
  const outcome = decodeOutcome(text);
  if (outcome.round !== round) {
    throw new RendezvousStateError(`outcome stored for round ${round} names round ${outcome.round}`);
  }
  return outcome;
}

/** The slot numbers of a range of `.../<kind>/<slot>` keys (the key's last segment). */
function slotsOf(kvs: readonly IKeyValue[]): Set<number> {
  return new Set(
    kvs.map((kv) => {
      const key = Buffer.from(kv.key);
      return Number(key.subarray(key.lastIndexOf(0x2f) + 1).toString("latin1"));
    }),
  );
}
