/**
 * The `redis` rendezvous backend: the dynamic handler over a Redis server, through the store-backed
 * backend on a `RedisStore` (Lua compare-and-set, keyspace-notification waits; see store/redis/). The
 * endpoint is `host:port` (port 6379 when left out). Config keys: `username` / `password` (the password
 * may also come from `RDZV_REDIS_PASSWORD`), `db`, `protocol` (`redis` or `rediss` for TLS), `cacert`,
 * `cert`, `key` (TLS files, as the etcd backend), `key_prefix` (default none).
 *
 * Redis keeps no replicas in sync for a single server: restarting it without persistence loses the
 * rendezvous, and every node then fails with `RDZV_CONNECTION` (see `RedisStore`) rather than rank anew.
 */

import { InvalidArgumentError } from "../errors.js";
import { type Logger, silentLogger } from "../log.js";
import type { RendezvousParameters } from "../rendezvous/api.js";
import {
  createDynamicRendezvousHandler,
  type DynamicRendezvousHandler,
} from "../rendezvous/dynamic-handler.js";
import {
  configInt,
  configString,
  type RendezvousSettings,
  resolveRendezvousSettings,
} from "../rendezvous/parameters.js";
import { type ConnectRedisOptions, connectRedisStore } from "../store/redis/connect.js";
import { StoreRendezvousBackend } from "./store-backend.js";

/** Options of `createRedisRendezvousHandler` beyond the parameters. */
export interface RedisHandlerOptions {
  logger?: Logger;
}

/** The connection options the rendezvous settings describe (throws `InvalidArgumentError` for bad ones). */
export function redisConnectOptions(settings: RendezvousSettings): ConnectRedisOptions {
  const raw = settings.raw;
  const protocol = configString(raw, "protocol") ?? "redis";
  if (protocol !== "redis" && protocol !== "rediss") {
    throw new InvalidArgumentError(
      `config option 'protocol' must be "redis" or "rediss" (TLS), got ${JSON.stringify(protocol)}`,
    );
  }
  const files = {
    ...(configString(raw, "cacert") === undefined ? {} : { cacert: configString(raw, "cacert")! }),
    ...(configString(raw, "cert") === undefined ? {} : { cert: configString(raw, "cert")! }),
    ...(configString(raw, "key") === undefined ? {} : { key: configString(raw, "key")! }),
  };
  const tls = protocol === "rediss" || Object.keys(files).length > 0 ? files : undefined;
  const username = configString(raw, "username");
  const password = configString(raw, "password") ?? process.env.RDZV_REDIS_PASSWORD;
  const db = configInt(raw, "db", 0);
  return {
    endpoint: settings.endpoint,
    ...(db === undefined ? {} : { db }),
    ...(username === undefined ? {} : { username }),
    ...(password === undefined ? {} : { password }),
    ...(tls === undefined ? {} : { tls }),
    prefix: configString(raw, "key_prefix") ?? "",
    timeoutMs: settings.readTimeoutMs,
    connectTimeoutMs: Math.min(settings.readTimeoutMs, 30_000),
  };
}

/** Creates a dynamic handler over Redis at `params.endpoint`. */
export async function createRedisRendezvousHandler(
  params: RendezvousParameters,
  options: RedisHandlerOptions = {},
): Promise<DynamicRendezvousHandler> {
  const logger = options.logger ?? silentLogger;
  const settings = resolveRendezvousSettings(params);
  const store = await connectRedisStore(redisConnectOptions(settings));
  return createDynamicRendezvousHandler({
    backend: new StoreRendezvousBackend(store, settings.runId, { name: "redis", logger }),
    runId: settings.runId,
    settings: {
      minNodes: settings.minNodes,
      maxNodes: settings.maxNodes,
      joinTimeoutMs: settings.joinTimeoutMs,
      lastCallTimeoutMs: settings.lastCallTimeoutMs,
      keepAliveIntervalMs: settings.keepAliveIntervalMs,
      keepAliveMaxAttempts: settings.keepAliveMaxAttempts,
      stickyRanks: settings.stickyRanks,
      // Workers cannot bootstrap from Redis (it speaks no TCPStore protocol): rank 0 always hosts.
      useAgentStore: false,
    },
    localAddr: settings.localAddr,
    logger,
    onShutdown: () => store.close(),
  });
}
