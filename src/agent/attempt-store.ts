/**
 * A fresh bootstrap store for every attempt when the workers use the agent's store (PyTorch
 * `use_agent_store`, the static backend's default: `TORCHELASTIC_USE_AGENT_STORE=True`, and every worker's
 * `env://` connects to `MASTER_ADDR:MASTER_PORT` as a client). PyTorch 1.13's `env://` puts each attempt
 * under `/worker/attempt_<restart count>`; PyTorch 2.x's no longer does ("We create a new TCPStore for
 * every retry", torch/distributed/rendezvous.py in 2.13), so on a store that outlives the attempt a
 * restarted group's `init_process_group` reads the previous attempt's keys (the dead workers' gloo/NCCL
 * addresses, its barrier counts) and fails or hangs. The group rank 0 agent therefore serves each attempt
 * from a new store server on a free port, and the other agents read that port from the launcher store.
 */

import type { Logger } from "../log.js";
import type { RendezvousHandler, RendezvousInfo, RendezvousStoreInfo } from "../rendezvous/api.js";
import { isLoopbackHost } from "../rendezvous/endpoint.js";
import { createTCPStoreServer, type TCPStoreServer } from "../store/tcp/server.js";
import type { LauncherStore } from "./launcher-store.js";

/**
 * Where an agent's attempts bootstrap, and the attempt store it serves meanwhile (on the group rank 0
 * agent with `useAgentStore`). One per agent: `open` for each attempt, `close` once its workers stopped.
 */
export class AttemptBootstrap {
  readonly #handler: RendezvousHandler;
  readonly #localAddr: string;
  readonly #logger: Logger;
  /** The attempt's bootstrap store, on the group rank 0 agent with `useAgentStore`. */
  #attemptStore: TCPStoreServer | undefined;

  constructor(handler: RendezvousHandler, localAddr: string, logger: Logger) {
    this.#handler = handler;
    this.#localAddr = localAddr;
    this.#logger = logger;
  }

  /**
   * Where this attempt's workers bootstrap: the rendezvous's answer, except with `useAgentStore`, where
   * the group rank 0 agent starts a new store for the attempt and the others read its address (see the
   * module comment). A static rendezvous's bootstrap host is node 0's address; a dynamic one's agent
   * store may be elsewhere (`rdzv serve`), so its rank 0 agent offers its own address.
   */
  async open(
    info: RendezvousInfo,
    launcher: LauncherStore,
    attempt: string,
    signal: AbortSignal,
  ): Promise<RendezvousStoreInfo> {
    if (!this.#handler.useAgentStore) return info.bootstrapStoreInfo;
    if (info.rank !== 0) return launcher.readBootstrap(attempt, { signal });
    const host =
      this.#handler.getBackend() === "static" ? info.bootstrapStoreInfo.masterAddr : this.#localAddr;
    this.#attemptStore = await startAttemptStore(host, this.#logger);
    const bootstrap = { masterAddr: host, masterPort: this.#attemptStore.port };
    await launcher.publishBootstrap(attempt, bootstrap, { signal });
    return bootstrap;
  }

  /** Closes the attempt's store, if this agent serves one (a warning when it cannot). */
  async close(): Promise<void> {
    const server = this.#attemptStore;
    this.#attemptStore = undefined;
    await server?.close().catch((err: unknown) => {
      this.#logger.warn("could not close the attempt's bootstrap store", { error: String(err) });
    });
  }
}

/**
 * Starts an empty store server on a free port for workers that reach it at `host`: a loopback host binds
 * that address only, any other every interface (dual-stack, else IPv4), as the other nodes' workers must
 * reach it. Throws `RendezvousConnectionError` when no port can be bound.
 */
export async function startAttemptStore(host: string, agentLogger: Logger): Promise<TCPStoreServer> {
  // One per attempt: its start and close are routine (debug), its warnings and errors are not.
  const logger: Logger = { ...agentLogger, info: (m, f) => agentLogger.debug(m, f) };
  if (isLoopbackHost(host)) {
    return createTCPStoreServer({ host: host === "localhost" ? "127.0.0.1" : host, port: 0, logger });
  }
  try {
    return await createTCPStoreServer({ host: "::", port: 0, logger });
  } catch {
    return createTCPStoreServer({ host: "0.0.0.0", port: 0, logger });
  }
}

/** `"<port> <addr>"`: what the rank 0 agent publishes (an address may hold colons, a port never). */
export function formatBootstrap(info: RendezvousStoreInfo): string {
  return `${info.masterPort} ${info.masterAddr}`;
}

/** The inverse of `formatBootstrap`; `undefined` for text it did not write. */
export function parseBootstrap(text: string): RendezvousStoreInfo | undefined {
  const space = text.indexOf(" ");
  const port = Number(text.slice(0, space));
  const addr = text.slice(space + 1);
  if (space < 0 || !Number.isInteger(port) || port < 1 || port > 65_535 || addr === "") return undefined;
  return { masterAddr: addr, masterPort: port };
}
