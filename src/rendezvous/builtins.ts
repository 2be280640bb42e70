/**
 * Registers the handlers that ship with rdzv: `c10d` (dynamic, over the TCP store), `etcd` (and `etcd-v2`; dynamic, over
 * an etcd v3 cluster), `redis` (dynamic, over Redis) and `static`.
 */

import { createC10dRendezvousHandler } from "../backends/c10d.js";
import type { RendezvousHandlerOptions, RendezvousParameters } from "./api.js";
import { registerRendezvousHandler } from "./registry.js";
import { createStaticRendezvousHandler } from "./static-handler.js";

let registered = false;

/** Registers the built-in handlers once; later calls do nothing. */
export function registerBuiltinRendezvousHandlers(): void {
  if (registered) return;
  registered = true;
  registerRendezvousHandler("c10d", (params, options) => createC10dRendezvousHandler(params, options));
  // Loaded on first use: the etcd (gRPC) and Redis clients cost start-up time that other backends need not pay.
  const etcd = async (params: RendezvousParameters, options?: RendezvousHandlerOptions) =>
    (await import("../backends/etcd.js")).createEtcdRendezvousHandler(params, options);
  registerRendezvousHandler("etcd", etcd);
  // PyTorch's name for its dynamic handler over etcd (its `etcd` is the older, non-dynamic one), so that
  // torchrun's `--rdzv-backend etcd-v2` works as given. Both are rdzv's etcd v3 backend.
  registerRendezvousHandler("etcd-v2", etcd);
  registerRendezvousHandler("redis", async (params, options) =>
    (await import("../backends/redis.js")).createRedisRendezvousHandler(params, options),
  );
  registerRendezvousHandler("static", (params, options) => createStaticRendezvousHandler(params, options));
}
