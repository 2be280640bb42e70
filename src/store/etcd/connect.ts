/**
 * Connecting to etcd: the member list syntax, TLS files and user/password, as PyTorch's etcd rendezvous
 * backend reads them (`protocol`, `cacert`, `cert`, `key` in the rendezvous config), plus several members.
 */

import { readFileSync } from "node:fs";
import {
  ConsecutiveBreaker,
  circuitBreaker,
  ExponentialBackoff,
  handleWhen,
  type IBackoff,
  noop,
  retry,
} from "cockatiel";
import { Etcd3, type IOptions, Namespace } from "etcd3";
import { ErrorCode, InvalidArgumentError, RendezvousConnectionError } from "../../errors.js";
import { formatEndpoint, parseRendezvousEndpoint } from "../../rendezvous/endpoint.js";
import { checkTimeoutMs } from "../deadline.js";
import { isLeaderChange, isMemberFailure, mapEtcdError } from "./errors.js";
import { EtcdStore, type EtcdStoreOptions } from "./store.js";

/** etcd's client port. */
export const DEFAULT_ETCD_PORT = 2379;

/** TLS material, as file paths (PyTorch's `cacert`, `cert`, `key`). */
export interface EtcdTlsFiles {
  /** CA certificate that signs the members' certificates. */
  cacert?: string;
  /** Client certificate, for members that require one (with `key`). */
  cert?: string;
  /** Private key of `cert`. */
  key?: string;
}

/** Options of `connectEtcdStore`. */
export interface ConnectEtcdOptions extends Omit<EtcdStoreOptions, "hosts" | "ownsClient"> {
  /**
   * The members: `host:port` entries separated by commas (port 2379 when left out), each optionally with
   * its own `http://` / `https://` scheme; or an array of them.
   */
  endpoints: string | readonly string[];
  /** `http` (default) or `https`, for entries without a scheme (PyTorch's `protocol`). */
  protocol?: "http" | "https";
  /** TLS files; any of them implies `https`. */
  tls?: EtcdTlsFiles;
  /** etcd user/password authentication. */
  auth?: { username: string; password: string };
  /** How long connecting may take (default 10 000 ms). */
  connectTimeoutMs?: number;
}

/**
 * Parses a member list into URLs. Throws `InvalidArgumentError` naming the bad entry for an empty list,
 * a bad host or port, or an unknown scheme.
 */
export function parseEtcdEndpoints(endpoints: string | readonly string[], protocol = "http"): string[] {
  if (protocol !== "http" && protocol !== "https") {
    throw new InvalidArgumentError(
      `the etcd protocol must be "http" or "https", got ${JSON.stringify(protocol)}`,
    );
  }
  const list = (typeof endpoints === "string" ? endpoints.split(",") : [...endpoints])
    .map((e) => e.trim())
    .filter((e) => e !== "");
  if (list.length === 0) {
    throw new InvalidArgumentError(
      `the etcd endpoint must name at least one member, got ${JSON.stringify(endpoints)}`,
    );
  }
  return list.map((entry) => {
    const m = /^([a-z][a-z0-9+.-]*):\/\/(.*)$/i.exec(entry);
    const scheme = (m?.[1] ?? protocol).toLowerCase();
    if (scheme !== "http" && scheme !== "https") {
      throw new InvalidArgumentError(
        `the etcd member ${JSON.stringify(entry)} has an unknown scheme ${scheme}`,
      );
    }
    const rest = (m?.[2] ?? entry).replace(/\/+$/, "");
    try {
      const { host, port } = parseRendezvousEndpoint(rest, DEFAULT_ETCD_PORT);
      return `${scheme}://${formatEndpoint(host, port)}`;
    } catch (err) {
      throw new InvalidArgumentError(`bad etcd member ${JSON.stringify(entry)}: ${(err as Error).message}`, {
        cause: err,
      });
    }
  });
}

function readTlsFile(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new InvalidArgumentError(
      `cannot read the etcd ${what} file ${JSON.stringify(path)}: ${String(err)}`,
      {
        cause: err,
      },
    );
  }
}

/** etcd3 client options for `options` (reads the TLS files; throws `InvalidArgumentError` when one is unreadable). */
export function etcdClientOptions(options: ConnectEtcdOptions): { hosts: string[]; client: IOptions } {
  const tls = options.tls ?? {};
  const anyTls = tls.cacert !== undefined || tls.cert !== undefined || tls.key !== undefined;
  if ((tls.cert === undefined) !== (tls.key === undefined)) {
    throw new InvalidArgumentError("the etcd client certificate needs both 'cert' and 'key'");
  }
  const hosts = parseEtcdEndpoints(options.endpoints, options.protocol ?? (anyTls ? "https" : "http"));
  const client: IOptions = {
    hosts,
    dialTimeout: options.connectTimeoutMs ?? 10_000,
    faultHandling: {
      // etcd3's defaults, except that a missed deadline is neither retried nor counted against a member
      // (a call that ran out of time says nothing about the member's health), and neither is "leader
      // changed" (every member says so to the reads pending at an election: counting it opened the
      // circuits of the healthy members too, and then every call failed at once for 2 s).
      host: () =>
        circuitBreaker(
          handleWhen((err) => isMemberFailure(err) && !isLeaderChange(err)),
          {
            halfOpenAfter: 2000,
            breaker: new ConsecutiveBreaker(3),
          },
        ),
      global: retry(handleWhen(isMemberFailure), { maxAttempts: 3 }),
      // A lost watch stream is re-opened within 2 s (etcd3's default backs off to 30 s), which also bounds
      // how long a retry timer pending at close keeps the process alive.
      // (etcd3 types this as a backoff, but calls `next()` on it first, as on a factory.)
      watchBackoff: new ExponentialBackoff({
        initialDelay: 100,
        maxDelay: 2000,
      }) as unknown as IBackoff<unknown>,
    },
  };
  if (anyTls) {
    client.credentials = {
      rootCertificate: tls.cacert === undefined ? Buffer.alloc(0) : readTlsFile(tls.cacert, "CA certificate"),
      ...(tls.key === undefined ? {} : { privateKey: readTlsFile(tls.key, "client key") }),
      ...(tls.cert === undefined ? {} : { certChain: readTlsFile(tls.cert, "client certificate") }),
    };
  }
  if (options.auth !== undefined) {
    const { username, password } = options.auth;
    if (username === "") throw new InvalidArgumentError("the etcd username must not be empty");
    client.auth = { username, password };
  }
  return { hosts, client };
}

/**
 * A client over `client`'s own gRPC connections whose calls etcd3 never runs again itself: etcd3's
 * pool runs every call through its `globalPolicy` (a retry, 3 tries), and this view of the pool has a
 * no-op one; hosts, their circuits and the authenticator are the pool's. (A second `Etcd3` with that
 * policy, as before, had circuits and an etcd auth token of its own, and over TLS a second connection to
 * every member: grpc-js shares a connection only between equal credentials, and each `Etcd3` makes its
 * own.)
 */
export function onceView(client: Etcd3): Namespace {
  const pool = (client as unknown as { pool: object }).pool;
  const view = Object.create(pool, { globalPolicy: { value: noop } }) as object;
  // Namespace's constructor is internal to etcd3: (prefix, pool, options), as Etcd3.namespace() calls it.
  const make = Namespace as unknown as new (prefix: Buffer, pool: object, options: IOptions) => Namespace;
  return new make(Buffer.alloc(0), view, (client as unknown as { options: IOptions }).options);
}

/**
 * Connects to etcd and returns an `EtcdStore` under `options.prefix`, after one round trip that proves
 * the cluster answers (and accepts the credentials). Rejects with `RendezvousConnectionError` when no
 * member answers within `connectTimeoutMs`, `RendezvousAuthError` for refused credentials.
 */
export async function connectEtcdStore(options: ConnectEtcdOptions): Promise<EtcdStore> {
  const connectTimeoutMs = checkTimeoutMs(options.connectTimeoutMs ?? 10_000, "connectTimeoutMs");
  const { hosts, client: clientOptions } = etcdClientOptions(options);
  const client = new Etcd3(clientOptions);
  const store = new EtcdStore(client, {
    hosts,
    // For writes that must not happen twice: the same connections and member circuits, but no call is
    // run again by etcd3 itself (see EtcdStore's `add`).
    onceClient: () => onceView(client),
    ...(options.prefix === undefined ? {} : { prefix: options.prefix }),
    ...(options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs }),
  });
  try {
    await client
      .get(store.etcdKey("\0"))
      .options({ deadline: new Date(Date.now() + connectTimeoutMs) })
      .exec();
  } catch (err) {
    client.close();
    const mapped = mapEtcdError(err, "connect", hosts);
    if (mapped.code !== ErrorCode.Timeout) throw mapped;
    throw new RendezvousConnectionError(
      `connect: no etcd member of ${hosts.join(",")} answered within ${connectTimeoutMs} ms`,
      { cause: err },
    );
  }
  return store;
}
