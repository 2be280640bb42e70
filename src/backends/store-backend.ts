/**
 * The rendezvous backend over any `Store` (PyTorch's `C10dRendezvousBackend` counterpart): our TCP store,
 * the in-memory store, and later etcd and Redis stores. Key layout under `rdzv/<runId>/`:
 *
 * | key                      | written by                          | meaning                                   |
 * | ------------------------ | ----------------------------------- | ----------------------------------------- |
 * | `open`                   | the winner of each decision (set)   | hint: number of decided rounds, never more |
 * | `closed`                 | `setClosed()`                       | the rendezvous is closed                  |
 * | `r<R>/outcome`           | compare-and-set, once               | the round's outcome (see round.ts)        |
 * | `r<R>/tickets`           | every joiner (add 1)                | join counter; slot = value - 1            |
 * | `r<R>/node/<slot>`       | the joiner                          | its descriptor (JSON)                     |
 * | `r<R>/hb/<slot>`         | the joiner, every keep-alive        | keep-alive counter                        |
 * | `r<R>/gone/<slot>`       | leaver, coordinator, or the server when the node's connection drops | why it is gone |
 * | `r<R>/ended`             | whoever marks a member gone         | the completed round lost a member         |
 * | `r<R>/lead`              | compare-and-set                     | slot of the round's coordinator           |
 * | `r<R>/store/...`         | the round's members                 | the store handed to the round             |
 *
 * With `cleanOldRounds` (the c10d and redis backends: `rdzv serve` and Redis servers outlive jobs) the keys
 * of round R - 2 but its outcome are deleted once round R completes; otherwise every round's keys stay.
 * Keys that members wrote into `r<R>/store/` stay but the bootstrap keys. The etcd backend, which decides
 * rounds in its own transaction, deletes its old rounds itself, round store included (etcd-backend.ts).
 */

import { ErrorCode, hasErrorCode, RendezvousStateError } from "../errors.js";
import type { Logger } from "../log.js";
import { silentLogger } from "../log.js";
import type { NodeDescriptor, RendezvousBackend, RendezvousState, SlotLease } from "../rendezvous/backend.js";
import { decodeOutcome, encodeOutcome, GoneReason, type RoundOutcome } from "../rendezvous/round.js";
import { bytesToText } from "../store/bytes.js";
import { PrefixStore } from "../store/prefix-store.js";
import type { CallOptions, Store, StoreValue } from "../store/store.js";

/** A store that can have the server write keys when this client's connection drops (rdzv's TCP store). */
interface DisconnectAwareStore extends Store {
  readonly hasExtensions: boolean;
  setOnDisconnect(key: string, value: StoreValue, options?: CallOptions): Promise<void>;
  clearOnDisconnect(key: string, options?: CallOptions): Promise<void>;
}

function isDisconnectAware(store: Store): store is DisconnectAwareStore {
  const s = store as Partial<DisconnectAwareStore>;
  return s.hasExtensions === true && typeof s.setOnDisconnect === "function";
}

const GONE_REASONS = new Set<string>(Object.values(GoneReason));

function parseGone(text: string): GoneReason {
  if (!GONE_REASONS.has(text)) throw new RendezvousStateError(`unknown leave marker ${JSON.stringify(text)}`);
  return text as GoneReason;
}

/** Options of `StoreRendezvousBackend`. */
export interface StoreBackendOptions {
  /** Backend name reported by handlers (default "c10d"). */
  name?: string;
  logger?: Logger;
  /**
   * Delete the keys of round R - 2, all but its outcome, once round R completes (the decision's winner
   * does it, in the background). For stores that outlive the job, such as `rdzv serve` or Redis, where they
   * would otherwise pile up round after round (default false). See `#cleanRound`.
   */
  cleanOldRounds?: boolean;
}

/** Most slots of a round whose keys `#cleanRound` deletes (any store client can write the counter). */
const MAX_CLEANED_SLOTS = 1 << 14;
/** Deletes `#cleanRound` has in flight at once. */
const CLEAN_BATCH = 256;
/** The round store's keys (the dynamic handler's bootstrap info, PyTorch's `RendezvousStoreInfo`). */
const ROUND_STORE_KEYS = ["store/MASTER_ADDR", "store/MASTER_PORT"];

/** A `RendezvousBackend` over any `Store`. */
export class StoreRendezvousBackend implements RendezvousBackend {
  readonly name: string;
  readonly store: Store;
  readonly runId: string;
  private readonly base: string;
  private readonly logger: Logger;
  readonly #cleanOldRounds: boolean;

  constructor(store: Store, runId: string, options: StoreBackendOptions = {}) {
    this.store = store;
    this.runId = runId;
    this.name = options.name ?? "c10d";
    this.base = `rdzv/${runId}`;
    this.logger = options.logger ?? silentLogger;
    this.#cleanOldRounds = options.cleanOldRounds ?? false;
  }

  /** Key of `path` under this run. */
  key(path: string): string {
    return `${this.base}/${path}`;
  }

  private roundKey(round: number, path: string): string {
    return `${this.base}/r${round}/${path}`;
  }

  async getState(options?: CallOptions): Promise<RendezvousState> {
    const hint = await this.#readHint(options);
    // Both reads in one round trip (the store pipelines them).
    const [last, outcome] = await Promise.all([
      hint > 0 ? this.readOutcome(hint - 1, options) : undefined,
      this.readOutcome(hint, options),
    ]);
    if (outcome === undefined && (hint === 0 || last !== undefined)) {
      return last === undefined ? { openRound: hint } : { openRound: hint, last };
    }
    // The hint trails the truth (by the decisions in flight, as a rule): gallop forward from it. Or it is
    // ahead (a store client wrote it, or an earlier rdzv version counted one decision twice and a store
    // kept with --data-dir still holds it): gallop back from it. Either way O(log distance) reads.
    const open =
      outcome !== undefined
        ? await this.#firstUndecided(hint, Number.POSITIVE_INFINITY, "forward", options)
        : await this.#firstUndecided(-1, hint - 1, "back", options);
    if (open < hint) this.#warnHintAhead(hint, open);
    if (open === 0) return { openRound: 0 };
    // Round open - 1 is known decided: its outcome in one round trip, unless read above already.
    const known = open === hint + 1 ? outcome : undefined;
    return { openRound: open, last: known ?? (await this.#decidedOutcome(open - 1, options)) };
  }

  /**
   * Two round trips on a pipelining store when `from` is the open round (always so for a fresh rendezvous,
   * and for a member re-joining after its round): the open-round hint, the closed flag, round `from`'s
   * outcome (is it still open?) and a ticket in it, all at once; then the descriptor, sent without waiting
   * so that it shares a write with the caller's next requests (keep-alive, coordinator claim). Otherwise
   * one more round trip per round it steps forward (two at most: then it gallops), or two to jump to the
   * hint; a hint ahead of the truth costs O(log(hint - from)) more. A ticket taken in a round that was
   * decided meanwhile (or, for a late `from`, long ago) is left behind: it lies beyond the outcome's span.
   */
  async enter(
    node: NodeDescriptor,
    options?: CallOptions,
    from = 0,
  ): Promise<{ round: number; slot: number } | undefined> {
    const [hint, closed, first] = await Promise.all([
      this.#readHint(options),
      this.store.check([this.key("closed")], options),
      this.#tryRound(from, options),
    ]);
    if (closed) return undefined;
    let round = from;
    let { decided, ticket } = first;
    let hintTried = false;
    let steps = 0;
    while (decided) {
      const outcome = await this.#decidedOutcome(round, options);
      if (outcome.kind === "closed") return undefined;
      if (!hintTried && hint > round + 1) {
        // Rounds before the hint are decided (it is set after each decision): skip them, checking that
        // the round before the target is decided (one round trip), since a hint ahead of the truth would
        // put the ticket in a round after the open one. When it is not, the open round lies between.
        hintTried = true;
        if (await this.store.check([this.roundKey(hint - 1, "outcome")], options)) {
          round = hint;
        } else {
          round = await this.#firstUndecided(round, hint - 1, "back", options);
          this.#warnHintAhead(hint, round);
        }
      } else if (steps < 2) {
        // The hint trails by the decisions in flight: the next round is most likely open.
        steps++;
        round++;
      } else {
        round = await this.#firstUndecided(round, Number.POSITIVE_INFINITY, "forward", options);
      }
      ({ decided, ticket } = await this.#tryRound(round, options));
    }
    const slot = ticket - 1;
    const published = this.store.set(this.roundKey(round, `node/${slot}`), JSON.stringify(node), options);
    this.#published.set(`${round}/${slot}`, published);
    const settled = (): void => {
      this.#published.delete(`${round}/${slot}`);
    };
    published.then(settled, settled);
    return { round, slot };
  }

  /**
   * The open-round hint. Any store client can write it, so it is only a guess at where to start looking:
   * one that is not a round number reads as 0 (then the open round is found galloping forward), also one
   * the store cannot add to (not an integer, or a Redis key of another type: `RDZV_STORE`); the next
   * decision's winner overwrites it.
   */
  async #readHint(options?: CallOptions): Promise<number> {
    let hint: number;
    try {
      hint = await this.store.add(this.key("open"), 0, options);
    } catch (err) {
      if (!hasErrorCode(err, ErrorCode.Store)) throw err;
      this.#warnHintUnreadable(err);
      return 0;
    }
    return Number.isSafeInteger(hint) && hint >= 0 ? hint : 0;
  }

  #warnedUnreadable = false;

  #warnHintUnreadable(err: unknown): void {
    if (this.#warnedUnreadable) return;
    this.#warnedUnreadable = true;
    this.logger.warn(
      `the open-round hint ${JSON.stringify(this.key("open"))} cannot be read as a number ` +
        `(${err instanceof Error ? err.message : String(err)}): a store client wrote it; searching for ` +
        "the open round instead",
      { runId: this.runId },
    );
  }

  /**
   * The first undecided round after `decided` (known decided, or -1) and up to `undecided` (known
   * undecided, or infinity): rounds are decided in order, so the decided ones are a prefix. Gallops from
   * one end (steps 1, 1, 2, 4, ... from `decided` "forward", or from `undecided` "back") until it brackets the
   * boundary, then bisects: one round trip per read, O(log distance) reads.
   */
  async #firstUndecided(
    decided: number,
    undecided: number,
    from: "forward" | "back",
    options?: CallOptions,
  ): Promise<number> {
    const isDecided = (round: number): Promise<boolean> =>
      this.store.check([this.roundKey(round, "outcome")], options);
    let lo = decided;
    let hi = undecided;
    // Steps 1, 1, 2, 4, ...: a hint off by one or two costs what stepping one round at a time did.
    for (let i = 0; hi - lo > 1; i++) {
      const step = i < 2 ? 1 : 2 ** (i - 1);
      const probe = from === "forward" ? lo + step : hi - step;
      if (probe <= lo || probe >= hi) break;
      if (await isDecided(probe)) {
        lo = probe;
        if (from === "back") break;
      } else {
        hi = probe;
        if (from === "forward") break;
      }
    }
    while (hi - lo > 1) {
      const mid = lo + Math.floor((hi - lo) / 2);
      if (await isDecided(mid)) lo = mid;
      else hi = mid;
    }
    return hi;
  }

  /** The hint last warned about, so that each wrong hint is logged once, not on every read. */
  #warnedHint: number | undefined;

  #warnHintAhead(hint: number, open: number): void {
    if (this.#warnedHint === hint) return;
    this.#warnedHint = hint;
    this.logger.warn(
      `the open-round hint of run ${JSON.stringify(this.runId)} says ${hint} rounds are decided, but round ` +
        `${open} is open: a store client wrote it, or an earlier rdzv version counted decisions twice`,
      { runId: this.runId, hint, openRound: open },
    );
  }

  /** The outcome of `round`, known to be decided, in one round trip. */
  async #decidedOutcome(round: number, options?: CallOptions): Promise<RoundOutcome> {
    return this.parseOutcome(await this.store.get(this.roundKey(round, "outcome"), options), round);
  }

  /** Whether `round` is decided, and a ticket taken in it, in one round trip. */
  async #tryRound(round: number, options?: CallOptions): Promise<{ decided: boolean; ticket: number }> {
    const [decided, ticket] = await Promise.all([
      this.store.check([this.roundKey(round, "outcome")], options),
      this.store.add(this.roundKey(round, "tickets"), 1, options),
    ]);
    // A decided round's ticket is left behind whatever it is; an open round's must be a slot.
    return { decided, ticket: decided ? ticket : this.#checkTicket(round, ticket) };
  }

  /**
   * `ticket`, taken in `round`, when it is a slot number + 1. A counter another store client set to a
   * negative number (or past 2^53) would give slots no coordinator counts, and this node would wait in a
   * round that never completes until its join timeout: it fails at once instead, naming the key.
   */
  #checkTicket(round: number, ticket: number): number {
    if (Number.isSafeInteger(ticket) && ticket >= 1) return ticket;
    throw new RendezvousStateError(
      `the ticket counter ${JSON.stringify(this.roundKey(round, "tickets"))} of round ${round} gave ` +
        `${ticket}, not a count of joins (1 or more): a store client wrote it`,
    );
  }

  /** Descriptor writes of `enter()` still in flight, by `round/slot`; `keepAlive()` waits for them. */
  readonly #published = new Map<string, Promise<void>>();

  private async readOutcome(round: number, options?: CallOptions): Promise<RoundOutcome | undefined> {
    const key = this.roundKey(round, "outcome");
    if (!(await this.store.check([key], options))) return undefined;
    return this.parseOutcome(await this.store.get(key, options), round);
  }

  private parseOutcome(bytes: Uint8Array, round: number): RoundOutcome {
    let outcome: RoundOutcome;
    try {
      outcome = decodeOutcome(bytesToText(bytes));
    } catch (err) {
      if (!(err instanceof RendezvousStateError)) throw err;
      throw new RendezvousStateError(
        `${err.message} at ${JSON.stringify(this.roundKey(round, "outcome"))}: a store client wrote it`,
        { cause: err },
      );
    }
    if (outcome.round !== round) {
      throw new RendezvousStateError(`outcome stored for round ${round} names round ${outcome.round}`);
    }
    return outcome;
  }

  async setState(outcome: RoundOutcome, token: number, options?: CallOptions): Promise<RoundOutcome> {
    if (outcome.round !== token)
      throw new RendezvousStateError(`outcome of round ${outcome.round} under token ${token}`);
    const encoded = encodeOutcome(outcome);
    const held = bytesToText(
      await this.store.compareSet(this.roundKey(token, "outcome"), "", encoded, options),
    );
    if (held === encoded) {
      // The hint is on the wire; nobody needs it moved before this returns (readers step past decided
      // rounds), and the decision is what everyone waits for. It is set, not incremented: two coordinators
      // of one round (one took over from the other, which was only slow) may write the same outcome, and
      // both see their own bytes held. Counting both would put the hint past the open round: joiners
      // would skip it, and its members would never see them wait. A late set of an older round's hint
      // only makes readers step forward again.
      this.store.set(this.key("open"), String(token + 1), options).catch((err: unknown) => {
        this.logger.debug("could not move the open-round hint", { round: token, error: String(err) });
      });
      if (this.#cleanOldRounds && outcome.kind === "complete" && token >= 2) {
        this.#cleanRound(token - 2).catch((err: unknown) => {
          this.logger.debug("could not delete an old round's keys", { round: token - 2, error: String(err) });
        });
      }
      return outcome;
    }
    return this.parseOutcome(Buffer.from(held), token);
  }

  /**
   * Deletes the keys of `round`, whose next round completed (so its members all left or were counted
   * dead: round.ts's drain), and which the round after that no longer reads: the ticket counter, the
   * coordinator claim, the end marker, each slot's descriptor, keep-alive counter and leave marker, and
   * the round store's bootstrap keys. The outcome stays: joiners find the open round by the decided
   * rounds' outcomes (a prefix of the rounds), and a node starting from round 0 steps past them. A node
   * that stalled through two rounds may write a few of these keys again when it wakes (its keep-alive, a
   * leave marker); they stay.
   */
  async #cleanRound(round: number): Promise<void> {
    const tickets = await this.store.add(this.roundKey(round, "tickets"), 0);
    const slots = Number.isSafeInteger(tickets) ? Math.min(Math.max(tickets, 0), MAX_CLEANED_SLOTS) : 0;
    const keys = ["tickets", "lead", "ended", ...ROUND_STORE_KEYS].map((p) => this.roundKey(round, p));
    for (let s = 0; s < slots; s++) {
      keys.push(
        this.roundKey(round, `node/${s}`),
        this.roundKey(round, `hb/${s}`),
        this.roundKey(round, `gone/${s}`),
      );
    }
    for (let i = 0; i < keys.length; i += CLEAN_BATCH) {
      await Promise.all(keys.slice(i, i + CLEAN_BATCH).map((k) => this.store.deleteKey(k)));
    }
  }

  async waitOutcome(
    round: number,
    options: CallOptions & { timeoutMs: number },
  ): Promise<RoundOutcome | undefined> {
    const key = this.roundKey(round, "outcome");
    let bytes: Uint8Array;
    try {
      // A blocking get: on rdzv's TCP store one request whose reply comes with the decision.
      bytes = await this.store.get(key, options);
    } catch (err) {
      if (hasErrorCode(err, ErrorCode.Timeout)) return undefined;
      // As in `waitKeys`: a get that could not open a wait connection in time degrades to a check.
      if (!hasErrorCode(err, ErrorCode.Connection)) throw err;
      if (!(await this.store.check([key], signalOnly(options)))) return undefined;
      bytes = await this.store.get(key, signalOnly(options));
    }
    return this.parseOutcome(bytes, round);
  }

  async isClosed(options?: CallOptions): Promise<boolean> {
    return this.store.check([this.key("closed")], options);
  }

  async markClosed(options?: CallOptions): Promise<void> {
    await this.store.set(this.key("closed"), "1", options);
  }

  async join(round: number, node: NodeDescriptor, options?: CallOptions): Promise<number> {
    const slot =
      this.#checkTicket(round, await this.store.add(this.roundKey(round, "tickets"), 1, options)) - 1;
    await this.store.set(this.roundKey(round, `node/${slot}`), JSON.stringify(node), options);
    return slot;
  }

  async ticketCount(round: number, options?: CallOptions): Promise<number> {
    return this.store.add(this.roundKey(round, "tickets"), 0, options);
  }

  async nodes(round: number, slots: readonly number[], options?: CallOptions): Promise<NodeDescriptor[]> {
    if (slots.length === 0) return [];
    const values = await this.store.multiGet(
      slots.map((s) => this.roundKey(round, `node/${s}`)),
      options,
    );
    return values.map((v, i) => parseDescriptor(bytesToText(v), round, slots[i]!));
  }

  waitJoined(round: number, slot: number, options: CallOptions & { timeoutMs: number }): Promise<boolean> {
    return this.waitKeys([this.roundKey(round, `node/${slot}`)], options);
  }

  async keepAlive(round: number, slot: number, intervalMs: number): Promise<SlotLease> {
    const hbKey = this.roundKey(round, `hb/${slot}`);
    const goneKey = this.roundKey(round, `gone/${slot}`);
    const endedKey = this.roundKey(round, "ended");
    const store = this.store;
    const registered: string[] = [];
    const beat = (): Promise<unknown> =>
      store.add(hbKey, 1).catch((err: unknown) => {
        this.logger.debug("keep-alive failed", { round, slot, error: String(err) });
      });
    // One round trip: the first keep-alive, the on-disconnect marker, and the descriptor enter() sent.
    // A keep-alive that failed is not the node's failure: the next one bumps the counter (an etcd add
    // whose outcome etcd could not confirm fails, and is not repeated: etcd/store.ts).
    await Promise.all([
      beat(),
      isDisconnectAware(store) ? store.setOnDisconnect(goneKey, GoneReason.Dead) : undefined,
      this.#published.get(`${round}/${slot}`),
    ]);
    if (isDisconnectAware(store)) registered.push(goneKey);
    const timer = setInterval(beat, intervalMs);
    timer.unref();
    let stopped = false;
    return {
      becomeMember: async () => {
        if (stopped || !isDisconnectAware(store)) return;
        // Listed before it is sent: a stop() right after clears it on the same connection, after it.
        registered.push(endedKey);
        await store.setOnDisconnect(endedKey, String(slot));
      },
      stop: async () => {
        if (stopped) return;
        stopped = true;
        clearInterval(timer);
        if (isDisconnectAware(store)) {
          await Promise.all(registered.map((k) => store.clearOnDisconnect(k).catch(() => undefined)));
        }
      },
    };
  }

  async keepAliveCounters(round: number, slots: readonly number[], options?: CallOptions): Promise<string[]> {
    const keys = slots.map((s) => this.roundKey(round, `hb/${s}`));
    const present = await Promise.all(keys.map((k) => this.store.check([k], options)));
    const have = keys.filter((_, i) => present[i]);
    const values = have.length === 0 ? [] : await this.store.multiGet(have, options);
    let j = 0;
    return present.map((p) => (p ? bytesToText(values[j++]!) : ""));
  }

  async markGone(
    round: number,
    slot: number,
    reason: GoneReason,
    endsRound: boolean,
    options?: CallOptions,
  ): Promise<GoneReason> {
    // Both compare-and-sets in one round trip.
    const [gone] = await Promise.all([
      this.store.compareSet(this.roundKey(round, `gone/${slot}`), "", reason, options),
      endsRound ? this.store.compareSet(this.roundKey(round, "ended"), "", String(slot), options) : undefined,
    ]);
    const held = bytesToText(gone);
    return parseGone(held);
  }

  async goneSlots(
    round: number,
    slots: readonly number[],
    options?: CallOptions,
  ): Promise<(GoneReason | undefined)[]> {
    const keys = slots.map((s) => this.roundKey(round, `gone/${s}`));
    const present = await Promise.all(keys.map((k) => this.store.check([k], options)));
    const have = keys.filter((_, i) => present[i]);
    const values = have.length === 0 ? [] : await this.store.multiGet(have, options);
    let j = 0;
    return present.map((p) => (p ? parseGone(bytesToText(values[j++]!)) : undefined));
  }

  waitAllGone(
    round: number,
    slots: readonly number[],
    options: CallOptions & { timeoutMs: number },
  ): Promise<boolean> {
    return this.waitKeys(
      slots.map((s) => this.roundKey(round, `gone/${s}`)),
      options,
    );
  }

  waitEnded(round: number, options: CallOptions & { timeoutMs: number }): Promise<boolean> {
    return this.waitKeys([this.roundKey(round, "ended")], options);
  }

  async tryLead(round: number, slot: number, current?: number, options?: CallOptions): Promise<number> {
    const expected = current === undefined ? "" : String(current);
    const held = bytesToText(
      await this.store.compareSet(this.roundKey(round, "lead"), expected, String(slot), options),
    );
    const leader = Number(held);
    if (!Number.isSafeInteger(leader))
      throw new RendezvousStateError(`corrupt leader ${JSON.stringify(held)}`);
    return leader;
  }

  async leader(round: number, options?: CallOptions): Promise<number | undefined> {
    const key = this.roundKey(round, "lead");
    if (!(await this.store.check([key], options))) return undefined;
    return Number(bytesToText(await this.store.get(key, options)));
  }

  roundStore(round: number): Store {
    return new PrefixStore(this.roundKey(round, "store"), this.store);
  }

  /** Waits for `keys`; false on timeout (other errors propagate). */
  private async waitKeys(
    keys: readonly string[],
    options: CallOptions & { timeoutMs: number },
  ): Promise<boolean> {
    if (keys.length === 0) return true;
    try {
      await this.store.wait(keys, options);
      return true;
    } catch (err) {
      if (hasErrorCode(err, ErrorCode.Timeout)) return false;
      // A short wait can fail to open a connection of its own in time while the store is fine (rdzv's TCP
      // client opens one per blocking call): then it degrades to a check, and only a failing check (within
      // the store's own timeout) counts as an outage.
      if (hasErrorCode(err, ErrorCode.Connection)) return this.store.check(keys, signalOnly(options));
      throw err;
    }
  }
}

function signalOnly(options: CallOptions): CallOptions {
  return options.signal === undefined ? {} : { signal: options.signal };
}

function parseDescriptor(text: string, round: number, slot: number): NodeDescriptor {
  try {
    const d = JSON.parse(text) as NodeDescriptor;
    if (typeof d.id === "string" && typeof d.addr === "string" && typeof d.pid === "number") return d;
  } catch {
    // reported below
  }
  throw new RendezvousStateError(
    `corrupt descriptor of round ${round} slot ${slot}: ${JSON.stringify(text.slice(0, 80))}`,
  );
}
