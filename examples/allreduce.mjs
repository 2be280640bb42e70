// An all-reduce through the round's store: every worker adds its value, waits for all, reads the sum.
//
//   npm run build && npx rdzv run --standalone --nproc-per-node 4 -- node examples/allreduce.mjs
//   (sum = 1 + 2 + 3 + 4 = 10; pass a number to add that instead of RANK + 1)
//
// The agent gives each worker the round's store as RDZV_STORE_ADDR/RDZV_STORE_PORT (the rendezvous TCP
// store) and RDZV_STORE_PREFIX (the round's key prefix): every key a worker writes there is private to
// this round, so a restarted group starts from a clean slate.

import { connectTCPStore, PrefixStore } from "rdzv";

const env = process.env;
if (!env.RDZV_STORE_ADDR) {
  console.error(
    "allreduce.mjs: RDZV_STORE_ADDR is not set: run it under `rdzv run` with the c10d (default) or static " +
      "backend, whose workers get the round's TCP store (etcd and Redis rendezvous have none)",
  );
  process.exit(2);
}
const rank = Number(env.RDZV_RANK);
const worldSize = Number(env.RDZV_WORLD_SIZE);
const value = Number(process.argv[2] ?? rank + 1);

const tcp = await connectTCPStore({ host: env.RDZV_STORE_ADDR, port: Number(env.RDZV_STORE_PORT) });
const store = new PrefixStore(env.RDZV_STORE_PREFIX, tcp);
try {
  await store.add("allreduce/sum", value);
  // The last to arrive opens the gate; everyone else blocks on it in the server.
  if ((await store.add("allreduce/arrived", 1)) === worldSize) await store.set("allreduce/done", "1");
  await store.wait(["allreduce/done"], { timeoutMs: 60_000 });
  const sum = await store.add("allreduce/sum", 0);
  console.log(`rank ${rank}/${worldSize}: sum = ${sum}`);
} finally {
  await tcp.close();
}
