/**
 * The `c10d` rendezvous backend: the dynamic handler over rdzv's TCP store (PyTorch's
 * `C10dRendezvousBackend` + `create_handler` counterpart). The node whose address matches the endpoint host
 * (or that is told `is_host=true`) hosts the store server in-process; when the port is taken (another agent
 * on this machine hosts it, or `rdzv serve` runs there) it connects as a client, as PyTorch does. The
 * store dies with its agent: the other nodes' store clients then give up on it within a keep-alive budget,
 * saying so (c10d-host.ts), and their agents stop.
 *
 * `rdzv serve` can keep a store for weeks across many jobs: once round R completes, rdzv's own keys of
 * round R - 2 are deleted but for its outcome (store-backend.ts, `cleanOldRounds`). Keys that workers
 * wrote into a round's store stay; they are not rdzv's to name.
 */

import { RendezvousConnectionError } from "../errors.js";
import { type Logger, silentLogger } from "../log.js";
import type { RendezvousParameters } from "../rendezvous/api.js";
import {
  createDynamicRendezvousHandler,
  type DynamicRendezvousHandler,
} from "../rendezvous/dynamic-handler.js";
import {
  isLoopbackAddress,
  isLoopbackHost,
  matchesMachineHostname,
  parseRendezvousEndpoint,
} from "../rendezvous/endpoint.js";
import { resolveRendezvousSettings } from "../rendezvous/parameters.js";
import type { KvEngine } from "../store/kv-engine.js";
import { connectTCPStore, type TCPStore } from "../store/tcp/client.js";
import { createTCPStoreServer, type TCPStoreServer } from "../store/tcp/server.js";
import { hostedEngine, hostedStoreGiveUp, readStoreHost } from "./c10d-host.js";
import { StoreRendezvousBackend } from "./store-backend.js";

/** Options of `createC10dRendezvousHandler` beyond the parameters. */
export interface C10dHandlerOptions {
  logger?: Logger;
}

/** Creates a dynamic handler over a TCP store at `params.endpoint`. */
export async function createC10dRendezvousHandler(
  params: RendezvousParameters,
  options: C10dHandlerOptions = {},
): Promise<DynamicRendezvousHandler> {
  const logger = options.logger ?? silentLogger;
  const settings = resolveRendezvousSettings(params);
  const { host, port } = parseRendezvousEndpoint(settings.endpoint);
  const isHost = settings.isHost ?? (await matchesMachineHostname(host));
  const storeHost = { addr: settings.localAddr, pid: process.pid };
  const server = isHost ? await hostStore(host, port, hostedEngine(storeHost), logger) : undefined;
  let store: TCPStore;
  try {
    store = await connectTCPStore({
      host: server !== undefined && !isLoopbackAddress(host) ? "127.0.0.1" : host,
      port,
      timeoutMs: settings.readTimeoutMs,
      connectTimeoutMs: settings.readTimeoutMs,
      logger,
    });
  } catch (err) {
    await server?.close();
    throw err;
  }
  try {
    if (server === undefined) await giveUpWithHost(store, settings, logger);
  } catch (err) {
    await store.close();
    await server?.close();
    throw err;
  }
  // `rdzv serve` may hold the store for weeks, across jobs and restarts: old rounds' keys are deleted.
  const backendOptions = { name: "c10d", logger, cleanOldRounds: true };
  const backend = new StoreRendezvousBackend(store, settings.runId, backendOptions);
  return createDynamicRendezvousHandler({
    backend,
    runId: settings.runId,
    settings: {
      minNodes: settings.minNodes,
      maxNodes: settings.maxNodes,
      joinTimeoutMs: settings.joinTimeoutMs,
      lastCallTimeoutMs: settings.lastCallTimeoutMs,
      keepAliveIntervalMs: settings.keepAliveIntervalMs,
      keepAliveMaxAttempts: settings.keepAliveMaxAttempts,
      stickyRanks: settings.stickyRanks,
      useAgentStore: settings.useAgentStore,
    },
    localAddr: settings.localAddr,
    storeEndpoint: { masterAddr: host, masterPort: port },
    logger,
    onShutdown: async () => {
      // A closed rendezvous (the job failed or ended for good): the other nodes still have to see it
      // (and read why) through this store before they stop their workers.
      const closed = server !== undefined && (await backend.isClosed({ timeoutMs: 2000 }).catch(() => false));
      await store.close();
      if (server === undefined) return;
      if (closed) {
        const graceMs = Math.max(settings.keepAliveIntervalMs * settings.keepAliveMaxAttempts, 10_000);
        await untilClientsLeft(server, graceMs, logger);
      }
      await server.close();
    },
  });
}

/**
 * A node that does not host reads who hosts the store (the host's server starts with its record) and,
 * when an agent does, gives its client the rule that gives up on that store once connections to it have
 * been refused for a keep-alive budget (c10d-host.ts): as long as the others take to count a node dead.
 * Stores no agent hosts (`rdzv serve`, torchrun's) keep the client's plain reconnect rules.
 */
async function giveUpWithHost(
  store: TCPStore,
  settings: ReturnType<typeof resolveRendezvousSettings>,
  logger: Logger,
): Promise<void> {
  const storeHost = await readStoreHost(store, { timeoutMs: settings.readTimeoutMs });
  if (storeHost === undefined) return;
  logger.debug("the rendezvous store is hosted by another node's agent", { ...storeHost });
  store.giveUp = hostedStoreGiveUp(storeHost, settings.keepAliveIntervalMs * settings.keepAliveMaxAttempts);
}

/**
 * Starts the store server for the endpoint, or returns undefined when the port is already served (then
 * this node is a client like the others). Binds loopback endpoints to that address only, anything else
 * to every interface, as the other nodes must reach it.
 */
async function hostStore(
  host: string,
  port: number,
  engine: KvEngine,
  logger: Logger,
): Promise<TCPStoreServer | undefined> {
  const bindHost = isLoopbackHost(host) ? host : "::";
  try {
    return await createTCPStoreServer({ host: bindHost, port, engine, logger });
  } catch (err) {
    if (err instanceof RendezvousConnectionError) {
      logger.info("the rendezvous store port is taken; joining as a client", { host, port });
      return undefined;
    }
    throw err;
  }
}

/**
 * Waits until no client is connected to `server`, at most `graceMs` (the time the other nodes would take
 * to count this node dead anyway, and at least 10 s). The node hosting the store would otherwise take it down with it: the
 * other nodes, whose workers still ran, lost the store before they saw the rendezvous closed, and their
 * agents hung in the exit barrier instead of stopping and reporting the failure.
 */
async function untilClientsLeft(server: TCPStoreServer, graceMs: number, logger: Logger): Promise<void> {
  const deadline = Date.now() + graceMs;
  if (server.stats().connections === 0) return;
  logger.info("keeping the rendezvous store up until the other nodes have left", { graceMs });
  while (server.stats().connections > 0 && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
