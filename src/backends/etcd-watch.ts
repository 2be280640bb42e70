/** Waiting for an event under an etcd key prefix: one read, then a watch from the revision after it. */

import type { IKeyValue, Watcher } from "etcd3";
import { ErrorCode, hasErrorCode } from "../errors.js";
import { blockingCall } from "../store/deadline.js";
import { mapEtcdError } from "../store/etcd/errors.js";
import type { EtcdStore } from "../store/etcd/store.js";
import type { CallOptions } from "../store/store.js";

/** A put or delete under the prefix; `path` is the key with the prefix stripped. */
export interface PrefixEvent {
  readonly type: "put" | "delete";
  readonly path: string;
}

/** Events under one key prefix. */
export class EtcdRoundWatch {
  readonly #etcd: EtcdStore;
  readonly #prefix: Buffer;

  constructor(etcd: EtcdStore, prefix: Buffer) {
    this.#etcd = etcd;
    this.#prefix = prefix;
  }

  /**
   * The first event matching `match`: a key `present` (checked first, as a put) or a later event. Resolves
   * `undefined` on timeout; rejects on abort or a broken watch.
   */
  async until(
    match: (e: PrefixEvent) => boolean,
    present: string,
    options: CallOptions & { timeoutMs: number },
  ): Promise<PrefixEvent | undefined> {
    const started = Date.now();
    const signal = options.signal === undefined ? {} : { signal: options.signal };
    const res = await this.#etcd.read("wait", signal, (o) =>
      this.#etcd.client
        .get(Buffer.concat([this.#prefix, Buffer.from(present)]))
        .options(o)
        .exec(),
    );
    if (res.kvs.length > 0) return { type: "put", path: present };
    const timeoutMs = Math.max(0, options.timeoutMs - (Date.now() - started));
    try {
      return await this.#watch(match, Number(res.header.revision) + 1, { ...options, timeoutMs });
    } catch (err) {
      if (hasErrorCode(err, ErrorCode.Timeout)) return undefined;
      throw err;
    }
  }

  #watch(
    match: (e: PrefixEvent) => boolean,
    revision: number,
    options: CallOptions & { timeoutMs: number },
  ): Promise<PrefixEvent> {
    let watcher: Watcher | undefined;
    let stopped = false;
    const stop = (): void => {
      stopped = true;
      watcher?.cancel().catch(() => undefined);
    };
    return blockingCall<PrefixEvent>(
      options,
      options.timeoutMs,
      (ms) => `no event within ${ms}ms`,
      (resolve, reject) => {
        const on = (type: "put" | "delete") => (kv: IKeyValue) => {
          const event = { type, path: kv.key.subarray(this.#prefix.length).toString("utf8") };
          if (!match(event)) return;
          stop();
          resolve(event);
        };
        this.#etcd.client
          .watch()
          .prefix(this.#prefix)
          .startRevision(String(revision))
          .create()
          .then((w) => {
            watcher = w;
            if (stopped) return stop();
            w.on("put", on("put"));
            w.on("delete", on("delete"));
            w.on("error", (err: unknown) => {
              stop();
              reject(mapEtcdError(err, "wait", this.#etcd.hosts));
            });
          })
          .catch((err: unknown) => reject(mapEtcdError(err, "wait", this.#etcd.hosts)));
      },
      stop,
    );
  }
}
