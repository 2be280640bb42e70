/** Connecting `RedisStore`: address, credentials, TLS, and switching keyspace notifications on. */

import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { Redis, type RedisOptions } from "ioredis";
import {
  InvalidArgumentError,
  RendezvousConnectionError,
  RendezvousError,
  StoreError,
} from "../../errors.js";
import { parseRendezvousEndpoint } from "../../rendezvous/endpoint.js";
import { checkTimeoutMs } from "../deadline.js";
import { mapRedisError } from "./errors.js";
import { EPOCH_KEY, RedisStore } from "./store.js";

/** Redis's port. */
export const DEFAULT_REDIS_PORT = 6379;

/** Options of `connectRedisStore`. */
export interface ConnectRedisOptions {
  /** `host:port` (port 6379 when left out). */
  endpoint: string;
  /** Database number (default 0). */
  db?: number;
  username?: string;
  password?: string;
  /** TLS: CA file, and client certificate and key files; any of them (or `tls: {}`) turns TLS on. */
  tls?: { cacert?: string; cert?: string; key?: string };
  /** Prefix of every key of this store (default ""). */
  prefix?: string;
  /** Default timeout of every call (default 300 000 ms). */
  timeoutMs?: number;
  /** How long connecting may take (default 10 000 ms). */
  connectTimeoutMs?: number;
  /**
   * How long blocking waits ride out a lost connection before they fail with `RDZV_CONNECTION` (default
   * 5 000 ms; see `RedisStore`).
   */
  reconnectGraceMs?: number;
}

/** Keyspace events the waits need: K (keyspace channel), $ (string commands), g (generic: rename, del). */
const NEEDED_EVENTS = ["K", "$", "g"];

function readFile(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new InvalidArgumentError(
      `cannot read the Redis ${what} file ${JSON.stringify(path)}: ${String(err)}`,
      {
        cause: err,
      },
    );
  }
}

/** ioredis options for `options` (throws `InvalidArgumentError` for a bad endpoint, db or TLS file). */
export function redisClientOptions(
  options: ConnectRedisOptions,
): RedisOptions & { host: string; port: number } {
  const { host, port } = parseRendezvousEndpoint(options.endpoint || "localhost", DEFAULT_REDIS_PORT);
  const db = options.db ?? 0;
  if (!Number.isSafeInteger(db) || db < 0) {
    throw new InvalidArgumentError(`the Redis database must be an integer >= 0, got ${String(options.db)}`);
  }
  const tls = options.tls;
  return {
    host,
    port,
    db,
    ...(options.username === undefined ? {} : { username: options.username }),
    ...(options.password === undefined ? {} : { password: options.password }),
    ...(tls === undefined
      ? {}
      : {
          tls: {
            ...(tls.cacert === undefined ? {} : { ca: readFile(tls.cacert, "CA certificate") }),
            ...(tls.cert === undefined ? {} : { cert: readFile(tls.cert, "client certificate") }),
            ...(tls.key === undefined ? {} : { key: readFile(tls.key, "client key") }),
          },
        }),
    lazyConnect: true,
    connectTimeout: options.connectTimeoutMs ?? 10_000,
    // A command in flight when the connection drops fails instead of being sent twice; commands issued
    // while reconnecting wait for a few attempts (about a second), then fail with a connection error.
    autoResendUnfulfilledCommands: false,
    maxRetriesPerRequest: 5,
    retryStrategy: (times: number) => Math.min(times * 100, 500),
  };
}

/**
 * Switches on the keyspace events the waits need, keeping the flags already set. Throws a `StoreError`
 * with what to configure when they are off and `CONFIG SET` is not allowed (managed Redis services).
 */
async function enableNotifications(client: Redis, address: string): Promise<void> {
  let current = "";
  try {
    const reply = (await client.config("GET", "notify-keyspace-events")) as string[];
    current = reply[1] ?? "";
    const has = (f: string): boolean => current.includes(f) || (f !== "K" && current.includes("A"));
    if (NEEDED_EVENTS.every(has)) return;
    await client.config(
      "SET",
      "notify-keyspace-events",
      `${current}${NEEDED_EVENTS.filter((f) => !has(f)).join("")}`,
    );
  } catch (err) {
    throw new StoreError(
      `Redis at ${address} has keyspace notifications "${current}" and does not let rdzv change them ` +
        `(${(err as Error).message}); rdzv's blocking waits need them: set notify-keyspace-events to ` +
        `include "K$g" in the server's configuration`,
      undefined,
      { cause: err },
    );
  }
}

/**
 * Connects to Redis and returns a `RedisStore` under `options.prefix`: two connections (commands, and
 * keyspace-notification subscriptions), notifications switched on, the epoch key written. Rejects with
 * `RendezvousConnectionError` when the server does not answer within `connectTimeoutMs`,
 * `RendezvousAuthError` for refused credentials, `StoreError` when notifications cannot be enabled.
 */
export async function connectRedisStore(options: ConnectRedisOptions): Promise<RedisStore> {
  const connectTimeoutMs = checkTimeoutMs(options.connectTimeoutMs ?? 10_000, "connectTimeoutMs");
  const clientOptions = redisClientOptions(options);
  const address = `${clientOptions.host}:${clientOptions.port}`;
  // ioredis's own option types do not type-check under exactOptionalPropertyTypes (`replyMapping`).
  const client = new Redis(clientOptions as never);
  const subscriber = client.duplicate();
  // ioredis reports connection errors through these events as well as through the failing calls. While
  // connecting, a failing call says only "Connection is closed": the event says why (refused credentials,
  // an untrusted certificate, an unknown host), so the first one is what a failed connect reports.
  let why: Error | undefined;
  const remember = (err: Error): void => {
    why ??= err;
  };
  client.on("error", remember);
  subscriber.on("error", remember);
  const prefix = options.prefix ?? "";
  const epochKey = Buffer.concat([Buffer.from(prefix, "utf8"), Buffer.from(EPOCH_KEY, "utf8")]);
  let timer: NodeJS.Timeout | undefined;
  try {
    const epoch = await Promise.race([
      (async () => {
        await Promise.all([client.connect(), subscriber.connect()]);
        await enableNotifications(client, address);
        await client.set(epochKey, randomUUID(), "NX");
        return (await client.get(epochKey)) ?? "";
      })(),
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () =>
            reject(
              new RendezvousConnectionError(
                `Redis at ${address} did not answer within ${connectTimeoutMs} ms` +
                  // A plain-text Redis reads a TLS handshake as the start of a command and waits for the
                  // rest: it never answers, and nothing else says why.
                  (clientOptions.tls === undefined
                    ? ""
                    : " (TLS is on: a Redis that serves plain text on that port never answers the TLS handshake; check the port, or drop protocol=rediss / tls)"),
              ),
            ),
          connectTimeoutMs,
        );
      }),
    ]);
    return new RedisStore({
      client,
      subscriber,
      db: clientOptions.db ?? 0,
      prefix,
      address,
      epoch,
      // A restarted server forgets CONFIG SET: switch the notifications on again after every reconnect.
      onReconnect: () => enableNotifications(client, address),
      ...(options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs }),
      ...(options.reconnectGraceMs === undefined ? {} : { reconnectGraceMs: options.reconnectGraceMs }),
    });
  } catch (err) {
    client.disconnect();
    subscriber.disconnect();
    throw mapRedisError(err instanceof RendezvousError ? err : (why ?? err), "connect", address);
  } finally {
    clearTimeout(timer);
    client.off("error", remember);
    subscriber.off("error", remember);
    client.on("error", () => undefined);
    subscriber.on("error", () => undefined);
  }
}
