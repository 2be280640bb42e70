/**
 * Waiting for a completed round to end on etcd: its `ended` key put, or one of its `member/<slot>` keys
 * deleted (a member's lease expired). One read of `ended`, then two watches from the revision after it,
 * each on only those keys: the round's other keys (every node's keep-alive counter, written every
 * interval) are not sent to every waiting member.
 *
 * Members wait in steps (one keep-alive interval each, between which they check their neighbour's
 * keep-alives), and each step watches from its own read: a member key deleted between two steps is not
 * seen here, only through the keep-alives (within their budget). Watching from the previous step's
 * revision would close that gap, but a start revision that etcd has compacted away makes etcd3 throw
 * from its watch stream ("Failed to find watcher for IWatchResponse") where nobody can catch it.
 */

import type { IKeyValue, Watcher } from "etcd3";
import { ErrorCode, hasErrorCode } from "../errors.js";
import { blockingCall } from "../store/deadline.js";
import { mapEtcdError } from "../store/etcd/errors.js";
import type { EtcdStore } from "../store/etcd/store.js";
import type { CallOptions } from "../store/store.js";

/** What ended the round: `ended` was put, or `member/<slot>` deleted (`path` is relative to the round). */
export interface RoundEndEvent {
  readonly type: "put" | "delete";
  readonly path: string;
}

/** The end of one round, under its key prefix. */
export class EtcdRoundEndWatch {
  readonly #etcd: EtcdStore;
  readonly #round: Buffer;

  constructor(etcd: EtcdStore, roundPrefix: Buffer) {
    this.#etcd = etcd;
    this.#round = roundPrefix;
  }

  /** Waits up to `options.timeoutMs` for the round's end; undefined on timeout. Rejects on abort or a broken watch. */
  async step(options: CallOptions & { timeoutMs: number }): Promise<RoundEndEvent | undefined> {
    const started = Date.now();
    const signal = options.signal === undefined ? {} : { signal: options.signal };
    const ended = Buffer.concat([this.#round, Buffer.from("ended")]);
    const res = await this.#etcd.read("wait", signal, (o) => this.#etcd.client.get(ended).options(o).exec());
    if (res.kvs.length > 0) return { type: "put", path: "ended" };
    const timeoutMs = Math.max(0, options.timeoutMs - (Date.now() - started));
    try {
      return await this.#watch(ended, Number(res.header.revision) + 1, { ...options, timeoutMs });
    } catch (err) {
      if (hasErrorCode(err, ErrorCode.Timeout)) return undefined;
      throw err;
    }
  }

  /** The first put of `ended` or deletion under `member/` from `revision` on. */
  #watch(
    ended: Buffer,
    revision: number,
    options: CallOptions & { timeoutMs: number },
  ): Promise<RoundEndEvent> {
    const watchers: Watcher[] = [];
    let stopped = false;
    const stop = (): void => {
      stopped = true;
      for (const w of watchers) w.cancel().catch(() => undefined);
    };
    const members = Buffer.concat([this.#round, Buffer.from("member/")]);
    return blockingCall<RoundEndEvent>(
      options,
      options.timeoutMs,
      (ms) => `no event within ${ms}ms`,
      (resolve, reject) => {
        const fail = (err: unknown): void => {
          stop();
          reject(mapEtcdError(err, "wait", this.#etcd.hosts));
        };
        const on = (type: "put" | "delete") => (kv: IKeyValue) => {
          stop();
          resolve({ type, path: kv.key.subarray(this.#round.length).toString("utf8") });
        };
        const start = String(revision);
        // `only` limits each watch to its kind of event, so both can take both listeners.
        for (const builder of [
          this.#etcd.client.watch().key(ended).only("put"),
          this.#etcd.client.watch().prefix(members).only("delete"),
        ]) {
          builder
            .startRevision(start)
            .create()
            .then((w) => {
              watchers.push(w);
              if (stopped) return stop();
              w.on("put", on("put"));
              w.on("delete", on("delete"));
              w.on("error", fail);
            })
            .catch(fail);
        }
      },
      stop,
    );
  }
}
