/**
 * The `etcd` rendezvous backend: the dynamic handler over an etcd v3 cluster (PyTorch's
 * `EtcdRendezvousBackend` + `create_handler` counterpart), also registered as `etcd-v2`, PyTorch's name
 * for that handler. The endpoint lists one or more members (`host1:2379,host2:2379`, port 2379 when left
 * out). Config keys, as PyTorch's etcd backend where it has them: `protocol` (`http`/`https`), `cacert`,
 * `cert`, `key` (TLS files; `ca_cert`, `ssl_cert`, `ssl_cert_key` as PyTorch's `etcd-v2` names them), plus
 * `username` / `password`
 * (etcd authentication; the password may also come from `RDZV_ETCD_PASSWORD`) and `key_prefix` (default
 * none: keys start with `rdzv/<run_id>/`).
 */

import { InvalidArgumentError } from "../errors.js";
import { type Logger, silentLogger } from "../log.js";
import type { RendezvousParameters } from "../rendezvous/api.js";
import {
  createDynamicRendezvousHandler,
  type DynamicRendezvousHandler,
} from "../rendezvous/dynamic-handler.js";
import {
  configString,
  type RendezvousSettings,
  resolveRendezvousSettings,
} from "../rendezvous/parameters.js";
import { type ConnectEtcdOptions, connectEtcdStore } from "../store/etcd/connect.js";
import { EtcdRendezvousBackend } from "./etcd-backend.js";

/** Options of `createEtcdRendezvousHandler` beyond the parameters. */
export interface EtcdHandlerOptions {
  logger?: Logger;
}

/** The connection options the rendezvous settings describe (throws `InvalidArgumentError` for bad ones). */
export function etcdConnectOptions(settings: RendezvousSettings): ConnectEtcdOptions {
  const raw = settings.raw;
  const protocol = configString(raw, "protocol");
  if (protocol !== undefined && protocol !== "http" && protocol !== "https") {
    throw new InvalidArgumentError(
      `config option 'protocol' must be "http" or "https", got ${JSON.stringify(protocol)}`,
    );
  }
  const cacert = tlsFile(["cacert", configString(raw, "cacert")], ["ca_cert", configString(raw, "ca_cert")]);
  const cert = tlsFile(["cert", configString(raw, "cert")], ["ssl_cert", configString(raw, "ssl_cert")]);
  const key = tlsFile(["key", configString(raw, "key")], ["ssl_cert_key", configString(raw, "ssl_cert_key")]);
  const tls = {
    ...(cacert === undefined ? {} : { cacert }),
    ...(cert === undefined ? {} : { cert }),
    ...(key === undefined ? {} : { key }),
  };
  const username = configString(raw, "username");
  const password = configString(raw, "password") ?? process.env.RDZV_ETCD_PASSWORD;
  if (username === undefined && password !== undefined && configString(raw, "password") !== undefined) {
    throw new InvalidArgumentError("config option 'password' needs 'username'");
  }
  const prefix = configString(raw, "key_prefix") ?? "";
  return {
    endpoints: settings.endpoint === "" ? "localhost:2379" : settings.endpoint,
    ...(protocol === undefined ? {} : { protocol }),
    tls,
    ...(username === undefined ? {} : { auth: { username, password: password ?? "" } }),
    prefix,
    timeoutMs: settings.readTimeoutMs,
    connectTimeoutMs: Math.min(settings.readTimeoutMs, 30_000),
  };
}

/**
 * A TLS file's path under rdzv's key (PyTorch's `etcd` backend's name) or PyTorch `etcd-v2`'s name for it,
 * so that a torchrun `--rdzv-conf` works unchanged; both at once must agree.
 */
function tlsFile(
  [key, own]: [string, string | undefined],
  [alias, other]: [string, string | undefined],
): string | undefined {
  if (own !== undefined && other !== undefined && own !== other) {
    throw new InvalidArgumentError(
      `config options '${key}' and '${alias}' name the same file and disagree (${JSON.stringify(own)}, ${JSON.stringify(other)}): give one`,
    );
  }
  return own ?? other;
}

/**
 * The TTL (whole seconds) of a node's lease for keep-alives every `intervalMs`, `maxAttempts` of which
 * may be missed: never stricter than the keep-alive counters beside it (PyTorch's rule: dead once the last
 * heartbeat is `intervalMs * maxAttempts` old), so a node survives through the lease every stall the
 * counters let it survive. The counters survive any stall shorter than the budget less one interval (the
 * stall may start just before a beat). etcd3 renews a lease every TTL / 3, so the lease survives any stall
 * shorter than 2/3 of its TTL: the TTL is the larger of the budget and 1.5 x (budget - interval). A TTL of
 * the budget alone, as before, made the lease the stricter signal past 3 attempts (10 x 1 s: a stall of
 * 6.7 s lapsed the lease, which the counters allow up to 9 s).
 */
export function leaseTtlS(intervalMs: number, maxAttempts: number): number {
  const budgetMs = intervalMs * maxAttempts;
  return Math.ceil(Math.max(budgetMs, 1.5 * (budgetMs - intervalMs)) / 1000);
}

/** Creates a dynamic handler over etcd at `params.endpoint`. */
export async function createEtcdRendezvousHandler(
  params: RendezvousParameters,
  options: EtcdHandlerOptions = {},
): Promise<DynamicRendezvousHandler> {
  const logger = options.logger ?? silentLogger;
  const settings = resolveRendezvousSettings(params);
  const store = await connectEtcdStore(etcdConnectOptions(settings));
  const backend = new EtcdRendezvousBackend(store, settings.runId, {
    leaseTtlS: leaseTtlS(settings.keepAliveIntervalMs, settings.keepAliveMaxAttempts),
    logger,
    name: params.backend === "etcd-v2" ? "etcd-v2" : "etcd",
  });
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
      // Workers cannot bootstrap from etcd (it speaks no TCPStore protocol): rank 0 always hosts.
      useAgentStore: false,
    },
    localAddr: settings.localAddr,
    logger,
    onShutdown: async () => {
      await backend.close();
      await store.close();
    },
  });
}
