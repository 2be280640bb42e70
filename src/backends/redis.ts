/**
 * The `redis` rendezvous backend: the dynamic handler over a Redis server, through the store-backed
 * backend on a `RedisStore` (Lua compare-and-set, keyspace-notification waits; see store/redis/). The
 * endpoint is `host:port` (port 6379 when left out), or a Redis URL
 * `redis[s]://[[username]:password@]host[:port][/db]` (see `parseRedisUrl`). Config keys: `username` / `password` (the password
 * may also come from `RDZV_REDIS_PASSWORD`), `db`, `protocol` (`redis` or `rediss` for TLS), `cacert`,
 * `cert`, `key` (TLS files, as the etcd backend), `key_prefix` (default none).
 *
 * A Redis server outlives the job: once round R completes, the keys of round R - 2 are deleted but for its
 * outcome (one key of about 100 bytes per round stays; a run's last two rounds stay whole).
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

/** What a Redis URL endpoint says. */
export interface RedisUrlParts {
  /** `host:port` (IPv6 hosts in brackets). */
  endpoint: string;
  protocol: "redis" | "rediss";
  username?: string;
  password?: string;
  db?: number;
}

/**
 * Parses `redis://[[username]:password@]host[:port][/db]` (or `rediss://`, TLS), the form Redis clients
 * take; undefined for an endpoint that is not such a URL (`host:port`). User and password are
 * percent-decoded. Throws `InvalidArgumentError` for a URL that does not parse, a db that is not an
 * integer >= 0, or a query or fragment (rdzv takes options as config keys, and would otherwise ignore them).
 */
export function parseRedisUrl(endpoint: string): RedisUrlParts | undefined {
  const text = endpoint.trim();
  const scheme = /^(rediss?):\/\//i.exec(text)?.[1]?.toLowerCase();
  if (scheme === undefined) return undefined;
  // The URL without its credentials, for messages.
  const shown = text.replace(/\/\/[^@/]*@/, "//***@");
  let url: URL;
  try {
    url = new URL(text);
  } catch (err) {
    throw new InvalidArgumentError(`the Redis URL ${JSON.stringify(shown)} does not parse`, { cause: err });
  }
  if (url.search !== "" || url.hash !== "") {
    throw new InvalidArgumentError(
      `the Redis URL ${JSON.stringify(shown)} has a query or fragment: give options as --rdzv-conf keys`,
    );
  }
  const path = url.pathname.replace(/^\//, "");
  if (path !== "" && !/^[0-9]+$/.test(path)) {
    throw new InvalidArgumentError(
      `the database of the Redis URL ${JSON.stringify(shown)} must be an integer >= 0, got ${JSON.stringify(path)}`,
    );
  }
  const username = decodeURIComponent(url.username);
  const password = decodeURIComponent(url.password);
  return {
    endpoint: url.port === "" ? url.hostname : `${url.hostname}:${url.port}`,
    protocol: scheme as "redis" | "rediss",
    ...(username === "" ? {} : { username }),
    ...(password === "" ? {} : { password }),
    ...(path === "" ? {} : { db: Number(path) }),
  };
}

/** `fromKey` or else `fromUrl`; both given and different is an `InvalidArgumentError` naming the key. */
function either<T>(key: string, fromKey: T | undefined, fromUrl: T | undefined): T | undefined {
  if (fromKey !== undefined && fromUrl !== undefined && fromKey !== fromUrl) {
    throw new InvalidArgumentError(
      `config option '${key}' contradicts the endpoint's Redis URL: give it in one place`,
    );
  }
  return fromKey ?? fromUrl;
}

/** The connection options the rendezvous settings describe (throws `InvalidArgumentError` for bad ones). */
export function redisConnectOptions(settings: RendezvousSettings): ConnectRedisOptions {
  const raw = settings.raw;
  const url = parseRedisUrl(settings.endpoint);
  const protocol = either("protocol", configString(raw, "protocol"), url?.protocol) ?? "redis";
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
  const username = either("username", configString(raw, "username"), url?.username);
  const password =
    either("password", configString(raw, "password"), url?.password) ?? process.env.RDZV_REDIS_PASSWORD;
  const db = either("db", configInt(raw, "db", 0), url?.db);
  return {
    endpoint: url?.endpoint ?? settings.endpoint,
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
    // A Redis server outlives the job: old rounds' keys are deleted, not left to pile up.
    backend: new StoreRendezvousBackend(store, settings.runId, {
      name: "redis",
      logger,
      cleanOldRounds: true,
    }),
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
