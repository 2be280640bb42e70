/**
 * The c10d backend's store lives in one node's agent (`is_host`): when that agent dies, the store dies
 * with it, for good, and nothing can recover the job (torchrun fails too). The hosting agent records who
 * it is in the store; the other nodes watch for the store's end and, once connections to it have been
 * refused (nothing listens any more) for a keep-alive budget, fail every call at once with an error that
 * names the cause, instead of retrying connects for the store's whole read timeout (60 s by default)
 * while their agents look for a round end that never comes.
 *
 * Only a store known to be hosted by an agent is given up on: a refused `rdzv serve` may be restarting
 * (`--data-dir`), and its clients reconnect as before.
 */

import { connect } from "node:net";
import { RendezvousConnectionError } from "../errors.js";
import type { Logger } from "../log.js";
import { KvEngine } from "../store/kv-engine.js";
import type { CallOptions, Store } from "../store/store.js";
import type { TCPStore } from "../store/tcp/client.js";
import { peerName } from "../store/tcp/client-connect.js";
import { type StoreBackendOptions, StoreRendezvousBackend } from "./store-backend.js";

/** The key under which the hosting agent records itself (one per store, not per run). */
export const STORE_HOST_KEY = "rdzv/c10d/store-host";

/** What the hosting agent records: the node's address and the agent's pid. */
export interface StoreHost {
  readonly addr: string;
  readonly pid: number;
}

/**
 * A store engine that already names its host, for the hosting agent's server: the record is there
 * before the server takes its first connection, so that no node can look before it is written.
 */
export function hostedEngine(host: StoreHost): KvEngine {
  const engine = new KvEngine();
  // The TCP store's wire form of a key: "/" + the key, as PyTorch's clients send it.
  engine.set(`/${STORE_HOST_KEY}`, Buffer.from(JSON.stringify(host), "utf8"));
  return engine;
}

/** The agent hosting `store`, when one recorded itself; `undefined` for `rdzv serve` or torchrun's stores. */
export async function readStoreHost(store: Store, options: CallOptions): Promise<StoreHost | undefined> {
  if (!(await store.check([STORE_HOST_KEY], options))) return undefined;
  const text = Buffer.from(await store.get(STORE_HOST_KEY, options)).toString("utf8");
  try {
    const parsed = JSON.parse(text) as Partial<StoreHost>;
    if (typeof parsed.addr === "string" && typeof parsed.pid === "number")
      return { addr: parsed.addr, pid: parsed.pid };
  } catch {
    // A malformed record names no host: treat the store as any other.
  }
  return undefined;
}

/** Options of `watchStoreHost`. */
export interface StoreHostWatchOptions {
  readonly host: string;
  readonly port: number;
  readonly storeHost: StoreHost;
  /** How long connects must have been refused, without one success between, to call the store gone. */
  readonly refusedForMs: number;
  /** Time between probes (plain TCP connects) once the connection dropped. */
  readonly probeIntervalMs: number;
  readonly logger: Logger;
}

/**
 * Watches `store`'s connection: after each "disconnect", probes the endpoint until the store answers
 * again or connects have been refused for `refusedForMs`. Then `gone`
 * holds the error naming the cause and `store` is closed, failing the calls in flight.
 */
export class StoreHostWatch {
  #gone: RendezvousConnectionError | undefined;
  #probing = false;
  #stopped = false;
  readonly #store: TCPStore;
  readonly #o: StoreHostWatchOptions;

  constructor(store: TCPStore, options: StoreHostWatchOptions) {
    this.#store = store;
    this.#o = options;
    store.on("disconnect", () => void this.#probe());
  }

  /** The error every call fails with once the store is gone, else `undefined`. */
  get gone(): RendezvousConnectionError | undefined {
    return this.#gone;
  }

  /** Stops probing (the handler shuts down). */
  stop(): void {
    this.#stopped = true;
  }

  async #probe(): Promise<void> {
    if (this.#probing || this.#gone !== undefined) return;
    this.#probing = true;
    let refusedSince: number | undefined;
    try {
      while (!this.#stopped && !this.#store.closed) {
        const outcome = await probeOnce(this.#o.host, this.#o.port, this.#o.probeIntervalMs);
        // A connect alone proves little: a dying agent's listening socket may outlive its connections by
        // a moment. The store is back once a call through it succeeds.
        if (outcome === "connected" && (await this.#answers())) return;
        // Anything but a refusal (a timeout, an unreachable host) may be the network: keep the old rules.
        refusedSince = outcome === "refused" ? (refusedSince ?? Date.now()) : undefined;
        if (refusedSince !== undefined && Date.now() - refusedSince >= this.#o.refusedForMs) {
          this.#gone = goneError(this.#o, refusedSince);
          this.#o.logger.error("the rendezvous store is gone", { error: this.#gone.message });
          await this.#store.close();
          return;
        }
        await new Promise((resolve) => setTimeout(resolve, this.#o.probeIntervalMs).unref());
      }
    } finally {
      this.#probing = false;
    }
  }

  async #answers(): Promise<boolean> {
    const timeoutMs = Math.max(this.#o.probeIntervalMs, 1000);
    return this.#store.check([STORE_HOST_KEY], { timeoutMs }).then(
      () => true,
      () => false,
    );
  }
}

function goneError(o: StoreHostWatchOptions, refusedSince: number): RendezvousConnectionError {
  return new RendezvousConnectionError(
    `the rendezvous store at ${peerName(o.host, o.port)}, hosted by node ${o.storeHost.addr}'s agent ` +
      `(pid ${o.storeHost.pid}), is gone (connection refused since ${new Date(refusedSince).toISOString()}): ` +
      "the c10d backend's store lives in one agent and dies with it; use rdzv serve (or etcd/redis) for a " +
      "store that outlives any node",
  );
}

/** One plain TCP connect: whether it connected, was refused, or failed otherwise (or timed out). */
function probeOnce(
  host: string,
  port: number,
  timeoutMs: number,
): Promise<"connected" | "refused" | "other"> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    const done = (outcome: "connected" | "refused" | "other"): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve(outcome);
    };
    const timer = setTimeout(() => done("other"), Math.max(timeoutMs, 1000));
    socket.once("connect", () => done("connected"));
    socket.once("error", (err: NodeJS.ErrnoException) =>
      done(err.code === "ECONNREFUSED" ? "refused" : "other"),
    );
  });
}

/**
 * `store` whose calls fail with `watch.gone` once the store is gone (the calls in flight then fail as
 * the store closes; they are given the same error). Methods run on `store` itself (its private fields).
 */
export function failingWhenGone<S extends Store>(store: S, watch: StoreHostWatch): S {
  return new Proxy(store, {
    get(target, prop) {
      const value: unknown = Reflect.get(target, prop, target);
      if (typeof value !== "function" || prop === "close") return value;
      return (...args: unknown[]): unknown => {
        const gone = watch.gone;
        if (gone !== undefined) return Promise.reject(gone);
        const result: unknown = (value as (...a: unknown[]) => unknown).apply(target, args);
        if (!(result instanceof Promise)) return result;
        return result.catch((err: unknown) => {
          throw watch.gone ?? err;
        });
      };
    },
  });
}

/**
 * The store backend over a store hosted by another agent: once that store is gone, the rendezvous is
 * over for good, so `isClosed` and `waitEnded` say so (the agent stops its workers rather than waiting
 * for a round end that never comes) and every other call fails with the error that says why.
 */
export class HostedStoreBackend extends StoreRendezvousBackend {
  readonly #watch: StoreHostWatch;

  constructor(store: Store, runId: string, watch: StoreHostWatch, options: StoreBackendOptions) {
    super(store, runId, options);
    this.#watch = watch;
  }

  override async isClosed(options?: CallOptions): Promise<boolean> {
    return this.#whenGone(true, () => super.isClosed(options));
  }

  override async waitEnded(round: number, options: CallOptions & { timeoutMs: number }): Promise<boolean> {
    return this.#whenGone(true, () => super.waitEnded(round, options));
  }

  async #whenGone<T>(value: T, call: () => Promise<T>): Promise<T> {
    if (this.#watch.gone !== undefined) return value;
    try {
      return await call();
    } catch (err) {
      if (this.#watch.gone !== undefined) return value;
      throw err;
    }
  }
}
