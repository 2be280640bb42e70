/**
 * The c10d backend's store lives in one node's agent (`is_host`): when that agent dies, the store dies
 * with it, for good, and nothing can recover the job (torchrun fails too). The hosting agent records who
 * it is in the store; the other nodes read the record and give their store client a give-up rule
 * (`hostedStoreGiveUp`, option `giveUp` of the TCP store): once connections to the store have been refused
 * (nothing listens any more) for a keep-alive budget, every call fails at once with an error that names
 * the cause, and the agent stops (agent-monitor.ts), instead of retrying connects for the store's whole
 * read timeout (60 s by default) while it looks for a round end that never comes.
 *
 * Only a store known to be hosted by an agent gets the rule: a refused `rdzv serve` may be restarting
 * (`--data-dir`), and its clients reconnect as before, within the agent's own bound on an unreachable store
 * (`store_unreachable_timeout`).
 */

import { KvEngine } from "../store/kv-engine.js";
import type { CallOptions, Store } from "../store/store.js";
import type { GiveUpRule } from "../store/tcp/client-give-up.js";

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

/**
 * The give-up rule (client-give-up.ts) of a store that `storeHost`'s agent hosts: once every
 * connect has been refused for `afterRefusedMs` (nothing listens there any more, the agent is dead), every
 * call fails with an error that names the agent and says what to use instead.
 */
export function hostedStoreGiveUp(storeHost: StoreHost, afterRefusedMs: number): GiveUpRule {
  return {
    afterRefusedMs,
    message: (r) =>
      `the rendezvous store at ${r.peer}, hosted by node ${storeHost.addr}'s agent (pid ${storeHost.pid}), ` +
      `is gone (${refusedWords(r.code)} since ${new Date(r.sinceMs).toISOString()}): the c10d backend's ` +
      "store lives in one agent and dies with it; use rdzv serve (or etcd/redis) for a store that outlives " +
      "any node",
  };
}

function refusedWords(code: string): string {
  return code === "ECONNREFUSED" ? "connection refused" : `host unreachable, ${code}`;
}
