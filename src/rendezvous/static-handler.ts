/**
 * The static rendezvous (PyTorch `StaticTCPRendezvous`, `rendezvous/static_tcp_rendezvous.py`): a fixed
 * world of `world_size` nodes with fixed ranks, around one TCP store hosted by rank 0 at the endpoint.
 */

import {
  AbortedError,
  ErrorCode,
  hasErrorCode,
  InvalidArgumentError,
  RendezvousClosedError,
  RendezvousGracefulExitError,
  RendezvousTimeoutError,
} from "../errors.js";
import { type Logger, silentLogger } from "../log.js";
import { bytesToText } from "../store/bytes.js";
import { PrefixStore } from "../store/prefix-store.js";
import { TCPStore } from "../store/tcp/client.js";
import { createTCPStoreServer, type TCPStoreServer } from "../store/tcp/server.js";
import type {
  RendezvousCallOptions,
  RendezvousHandler,
  RendezvousInfo,
  RendezvousParameters,
} from "./api.js";
import { isLoopbackHost, splitRendezvousEndpoint } from "./endpoint.js";
import { type RendezvousSettings, resolveRendezvousSettings } from "./parameters.js";

/** Options of `createStaticRendezvousHandler` beyond the parameters. */
export interface StaticHandlerOptions {
  logger?: Logger;
}

/** What the static handler was configured with (resolved and checked). */
export interface StaticRendezvousConfig {
  readonly runId: string;
  readonly rank: number;
  readonly worldSize: number;
  /** Rank 0's store address (PyTorch `master_addr`). */
  readonly host: string;
  /** Rank 0's store port (PyTorch `master_port`). */
  readonly port: number;
  /** Whether this node runs the store server: config `is_host`, else `rank === 0`. */
  readonly isHost: boolean;
  /** Connect, barrier and store-call timeout (config `timeout`, default 600 s). */
  readonly storeTimeoutMs: number;
  readonly useAgentStore: boolean;
  readonly localAddr: string;
}

/**
 * Creates a static handler. Checks the parameters eagerly and does no I/O: the store is started or
 * connected by the first call that needs it. Throws `InvalidArgumentError` naming every problem: config
 * `rank` missing (torchrun `--node-rank`) or outside 0..worldSize-1; `minNodes !== maxNodes` (a static
 * world has a fixed size, torchrun `--nnodes N`); config `world_size` given but not `maxNodes`; an
 * endpoint without host or port (torchrun `--master-addr`/`--master-port`), or with port 0.
 */
export async function createStaticRendezvousHandler(
  params: RendezvousParameters,
  options: StaticHandlerOptions = {},
): Promise<StaticRendezvousHandler> {
  const settings = resolveRendezvousSettings(params);
  return new StaticRendezvousHandler(resolveStaticConfig(params, settings), options.logger ?? silentLogger);
}

/** Resolves and checks the static handler's configuration; see `createStaticRendezvousHandler`. */
export function resolveStaticConfig(
  params: RendezvousParameters,
  settings: RendezvousSettings,
): StaticRendezvousConfig {
  const problems: string[] = [];
  const { rank, minNodes, maxNodes } = settings;
  if (minNodes !== maxNodes) {
    problems.push(
      `a static rendezvous needs a fixed number of nodes: minNodes (${minNodes}) must equal maxNodes (${maxNodes})`,
    );
  }
  if (settings.worldSize !== undefined && settings.worldSize !== maxNodes) {
    problems.push(`config option 'world_size' (${settings.worldSize}) must equal maxNodes (${maxNodes})`);
  }
  const worldSize = maxNodes;
  if (rank === undefined) {
    problems.push("config option 'rank' is required by the static rendezvous (torchrun --node-rank)");
  } else if (rank >= worldSize) {
    problems.push(
      `config option 'rank' (${rank}) must be in 0..${worldSize - 1} for a world of ${worldSize}`,
    );
  }
  let host = "";
  let port = 0;
  if (settings.endpoint.trim() === "") {
    problems.push(
      "the static rendezvous needs an endpoint host:port (torchrun --master-addr, --master-port)",
    );
  } else {
    try {
      const split = splitRendezvousEndpoint(settings.endpoint);
      host = split.host;
      if (split.port === undefined || split.port === 0) {
        problems.push(
          `the endpoint '${settings.endpoint}' needs a port in 1..65535 (torchrun --master-port)`,
        );
      } else {
        port = split.port;
      }
    } catch (err) {
      problems.push(err instanceof Error ? err.message : String(err));
    }
  }
  if (problems.length > 0) {
    throw new InvalidArgumentError(`invalid static rendezvous parameters: ${problems.join("; ")}`);
  }
  const useAgentStore = params.config?.use_agent_store === undefined ? true : settings.useAgentStore;
  return Object.freeze({
    runId: settings.runId,
    rank: rank ?? 0,
    worldSize,
    host,
    port,
    isHost: settings.isHost ?? rank === 0,
    storeTimeoutMs: settings.storeTimeoutMs,
    useAgentStore,
    localAddr: settings.localAddr,
  });
}

interface Connection {
  readonly client: TCPStore;
  readonly server: TCPStoreServer | undefined;
}

/** Store layout of the static handler's own keys, beside the run's `PrefixStore(runId)`. */
const KEYS_PREFIX = "rdzv/static";
const COMPLETE_KEY = "complete";
const COUNT_KEY = "count";
const CLOSED_KEY = "closed";
const arrivedKey = (rank: number): string => `arrived/${rank}`;

/**
 * PyTorch's `StaticTCPRendezvous`. The first `nextRendezvous()` starts the store server when this node is
 * the host, connects to `host:port` (retrying until `storeTimeoutMs`) and waits until every rank has
 * arrived; it then returns `PrefixStore(runId, store)` (PyTorch's prefix), the fixed rank and world size,
 * and rank 0's endpoint as bootstrap store. Later calls return the same world at once, as PyTorch's does
 * (so an agent can restart its workers), unless the rendezvous was closed.
 *
 * Unlike PyTorch's (where they are no-ops), `setClosed()`/`isClosed()` work, through a key in the store.
 * `useAgentStore` is true, as PyTorch's, unless config `use_agent_store` says otherwise.
 */
export class StaticRendezvousHandler implements RendezvousHandler {
  readonly config: StaticRendezvousConfig;
  readonly #logger: Logger;
  readonly #life = new AbortController();
  readonly #nodeId: string;
  #client: TCPStore | undefined;
  #connecting: Promise<Connection> | undefined;
  #joining: Promise<RendezvousInfo> | undefined;
  #shutdown: Promise<boolean> | undefined;

  /** @internal Use `createStaticRendezvousHandler`. */
  constructor(config: StaticRendezvousConfig, logger: Logger) {
    this.config = config;
    this.#logger = logger;
    this.#nodeId = `${config.localAddr}_${process.pid}_${Math.random().toString(36).slice(2, 10)}`;
  }

  get useAgentStore(): boolean {
    return this.config.useAgentStore;
  }

  getBackend(): string {
    return "static";
  }

  getRunId(): string {
    return this.config.runId;
  }

  /**
   * Joins the static world: see the class. Rejects with `RendezvousTimeoutError` when not every rank
   * arrived within `storeTimeoutMs`, `RendezvousConnectionError` when the store cannot be started or
   * reached, `RendezvousClosedError` when the rendezvous was closed, `RendezvousGracefulExitError` after
   * `shutdown()`, `AbortedError` when `signal` fires.
   */
  async nextRendezvous(options: RendezvousCallOptions = {}): Promise<RendezvousInfo> {
    return this.#guard(async (signal) => {
      const { client } = await untilAborted(this.#connect(), signal);
      if (await this.#keys(client).check([CLOSED_KEY], { signal })) throw new RendezvousClosedError();
      if (this.#joining === undefined) {
        // Shared by concurrent callers, so it only stops on shutdown; each caller's signal stops its own wait.
        const joining = this.#join(client, this.#life.signal).catch((err: unknown) => {
          this.#joining = undefined;
          throw err;
        });
        joining.catch(() => {});
        this.#joining = joining;
      }
      return untilAborted(this.#joining, signal);
    }, options.signal);
  }

  /** Whether any node called `setClosed()` (reads the store). */
  isClosed(options: RendezvousCallOptions = {}): Promise<boolean> {
    return this.#guard(async (signal) => {
      const { client } = await untilAborted(this.#connect(), signal);
      return this.#keys(client).check([CLOSED_KEY], { signal });
    }, options.signal);
  }

  /** Marks the rendezvous closed for every node: later `nextRendezvous()` calls reject. */
  setClosed(options: RendezvousCallOptions = {}): Promise<void> {
    return this.#guard(async (signal) => {
      const { client } = await untilAborted(this.#connect(), signal);
      await this.#keys(client).set(CLOSED_KEY, this.#nodeId, { signal });
    }, options.signal);
  }

  /** Always 0: a static world admits no one else. */
  async numNodesWaiting(): Promise<number> {
    return 0;
  }

  /**
   * Closes the store client and, on the host, the store server (every node's store goes with it).
   * Pending calls reject with `RendezvousGracefulExitError`. Idempotent; resolves true when all closed cleanly.
   */
  shutdown(): Promise<boolean> {
    this.#shutdown ??= this.#close();
    return this.#shutdown;
  }

  async #close(): Promise<boolean> {
    this.#life.abort(new RendezvousGracefulExitError());
    try {
      await this.#client?.close();
      const connection = await this.#connecting?.catch(() => undefined);
      await connection?.client.close();
      await connection?.server?.close();
      return true;
    } catch (err) {
      this.#logger.warn("static rendezvous: shutdown failed", { error: String(err) });
      return false;
    }
  }

  /** Runs `body` with a signal that fires on abort or shutdown; maps shutdown-caused failures. */
  async #guard<T>(body: (signal: AbortSignal) => Promise<T>, signal: AbortSignal | undefined): Promise<T> {
    if (this.#life.signal.aborted) throw new RendezvousGracefulExitError();
    const combined = signal === undefined ? this.#life.signal : AbortSignal.any([signal, this.#life.signal]);
    try {
      return await body(combined);
    } catch (err) {
      if (this.#life.signal.aborted) throw new RendezvousGracefulExitError(undefined, { cause: err });
      throw err;
    }
  }

  #keys(client: TCPStore): PrefixStore {
    return new PrefixStore(`${KEYS_PREFIX}/${this.config.runId}`, client);
  }

  #connect(): Promise<Connection> {
    this.#connecting ??= this.#open().catch((err: unknown) => {
      this.#connecting = undefined;
      throw err;
    });
    return this.#connecting;
  }

  async #open(): Promise<Connection> {
    const { host, port, isHost, worldSize, storeTimeoutMs } = this.config;
    const server = isHost ? await startServer(host, port, this.#logger) : undefined;
    const client = new TCPStore({
      // The host talks to its own server over loopback: its public name may not route back to itself.
      host:
        server === undefined
          ? host
          : server.host === "::" || server.host === "0.0.0.0"
            ? "127.0.0.1"
            : server.host,
      port,
      timeoutMs: storeTimeoutMs,
      connectTimeoutMs: storeTimeoutMs,
      worldSize,
      logger: this.#logger,
    });
    this.#client = client;
    try {
      if (this.#life.signal.aborted) throw new RendezvousGracefulExitError();
      await client.connect();
    } catch (err) {
      await client.close();
      await server?.close();
      throw err;
    }
    return { client, server };
  }

  async #join(client: TCPStore, signal: AbortSignal): Promise<RendezvousInfo> {
    const { rank, worldSize, storeTimeoutMs, runId, host, port } = this.config;
    const keys = this.#keys(client);
    const claimed = bytesToText(await keys.compareSet(arrivedKey(rank), "", this.#nodeId, { signal }));
    if (claimed === this.#nodeId) {
      if ((await keys.add(COUNT_KEY, 1, { signal })) === worldSize)
        await keys.set(COMPLETE_KEY, "1", { signal });
    } else {
      // A restarted agent, or a second node configured with the same rank: the store cannot tell which.
      this.#logger.warn("static rendezvous: rank already arrived; joining again", {
        rank,
        previous: claimed,
      });
    }
    try {
      await keys.wait([COMPLETE_KEY], { timeoutMs: storeTimeoutMs, signal });
    } catch (err) {
      if (!hasErrorCode(err, ErrorCode.Timeout)) throw err;
      throw new RendezvousTimeoutError(
        `static rendezvous '${runId}': ${await this.#missing(keys)} within ${storeTimeoutMs}ms`,
        { cause: err },
      );
    }
    this.#logger.info("static rendezvous complete", { runId, rank, worldSize });
    return Object.freeze({
      store: new PrefixStore(runId, client),
      rank,
      worldSize,
      bootstrapStoreInfo: Object.freeze({ masterAddr: host, masterPort: port }),
      round: 0,
    });
  }

  /** Which ranks never arrived, for the timeout message (best effort). */
  async #missing(keys: PrefixStore): Promise<string> {
    const { worldSize } = this.config;
    try {
      const shown = Math.min(worldSize, 64);
      const present = await Promise.all(
        Array.from({ length: shown }, (_, r) => keys.check([arrivedKey(r)], { timeoutMs: 5000 })),
      );
      const missing = present.flatMap((ok, r) => (ok ? [] : [r]));
      const more = worldSize > shown ? ` (ranks >= ${shown} not checked)` : "";
      return `ranks ${missing.join(", ") || "none"} of ${worldSize} did not arrive${more}`;
    } catch {
      return `not all ${worldSize} ranks arrived`;
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.shutdown();
  }
}

/**
 * Starts the store server for the endpoint `host:port`. A loopback endpoint binds only that address;
 * any other binds every interface, as PyTorch's TCPStore server does (dual-stack, else IPv4 only).
 */
async function startServer(host: string, port: number, logger: Logger): Promise<TCPStoreServer> {
  if (isLoopbackHost(host)) {
    return createTCPStoreServer({ host: host === "localhost" ? "127.0.0.1" : host, port, logger });
  }
  try {
    return await createTCPStoreServer({ host: "::", port, logger });
  } catch (err) {
    if (hasErrorCode(err, ErrorCode.Connection) && causeCode(err) !== "EADDRINUSE") {
      return createTCPStoreServer({ host: "0.0.0.0", port, logger });
    }
    throw err;
  }
}

/** Settles like `promise`, or rejects with `AbortedError` once `signal` fires. */
function untilAborted<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(new AbortedError(undefined, { cause: signal.reason }));
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(new AbortedError(undefined, { cause: signal.reason }));
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener("abort", onAbort);
        resolve(value);
      },
      (err: unknown) => {
        signal.removeEventListener("abort", onAbort);
        reject(err);
      },
    );
  });
}

function causeCode(err: Error): string | undefined {
  const cause = err.cause as { code?: unknown } | undefined;
  return typeof cause?.code === "string" ? cause.code : undefined;
}
