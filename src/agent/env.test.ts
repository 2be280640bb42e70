import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ErrorCode } from "../errors.js";
import { errorFilePath, mergeWorkerEnv, type WorkerGroupSpec, workerEnv, workerRanks } from "./env.js";

const spec: WorkerGroupSpec = {
  nprocPerNode: 4,
  groupRank: 1,
  groupWorldSize: 3,
  role: "trainer",
  round: 5,
  restartCount: 2,
  maxRestarts: 3,
  runId: "job-1",
  masterAddr: "node0",
  masterPort: 29500,
  useAgentStore: false,
  store: { addr: "store-host", port: 29400, prefix: "rdzv/job-1/r5/store" },
};

describe("workerRanks", () => {
  it("gives torchrun's global ranks: groupRank * K + localRank over groupWorldSize * K", () => {
    const all = [0, 1, 2].flatMap((g) => [0, 1, 2, 3].map((l) => workerRanks({ ...spec, groupRank: g }, l)));
    assert.deepEqual(
      all.map((r) => r.rank),
      Array.from({ length: 12 }, (_, i) => i),
    );
    assert.ok(all.every((r) => r.worldSize === 12 && r.localWorldSize === 4));
    assert.deepEqual(workerRanks(spec, 3), { rank: 7, localRank: 3, worldSize: 12, localWorldSize: 4 });
  });

  it("rejects positions outside the group", () => {
    for (const [s, l] of [
      [spec, 4],
      [spec, -1],
      [{ ...spec, groupRank: 3 }, 0],
      [{ ...spec, nprocPerNode: 0 }, 0],
    ] as const) {
      assert.throws(
        () => workerRanks(s, l),
        (e: { code: string }) => e.code === ErrorCode.InvalidArgument,
      );
    }
  });
});

describe("workerEnv", () => {
  it("sets torchrun's variables and the RDZV_* equivalents", () => {
    const env = workerEnv(spec, 2);
    assert.deepEqual(
      {
        RANK: env.RANK,
        LOCAL_RANK: env.LOCAL_RANK,
        WORLD_SIZE: env.WORLD_SIZE,
        LOCAL_WORLD_SIZE: env.LOCAL_WORLD_SIZE,
        GROUP_RANK: env.GROUP_RANK,
        GROUP_WORLD_SIZE: env.GROUP_WORLD_SIZE,
        ROLE_RANK: env.ROLE_RANK,
        ROLE_WORLD_SIZE: env.ROLE_WORLD_SIZE,
        ROLE_NAME: env.ROLE_NAME,
        MASTER_ADDR: env.MASTER_ADDR,
        MASTER_PORT: env.MASTER_PORT,
        TORCHELASTIC_RESTART_COUNT: env.TORCHELASTIC_RESTART_COUNT,
        TORCHELASTIC_MAX_RESTARTS: env.TORCHELASTIC_MAX_RESTARTS,
        TORCHELASTIC_RUN_ID: env.TORCHELASTIC_RUN_ID,
        TORCHELASTIC_USE_AGENT_STORE: env.TORCHELASTIC_USE_AGENT_STORE,
      },
      {
        RANK: "6",
        LOCAL_RANK: "2",
        WORLD_SIZE: "12",
        LOCAL_WORLD_SIZE: "4",
        GROUP_RANK: "1",
        GROUP_WORLD_SIZE: "3",
        ROLE_RANK: "6",
        ROLE_WORLD_SIZE: "12",
        ROLE_NAME: "trainer",
        MASTER_ADDR: "node0",
        MASTER_PORT: "29500",
        TORCHELASTIC_RESTART_COUNT: "2",
        TORCHELASTIC_MAX_RESTARTS: "3",
        TORCHELASTIC_RUN_ID: "job-1",
        TORCHELASTIC_USE_AGENT_STORE: "False",
      },
    );
    assert.equal(env.RDZV_RANK, "6");
    assert.equal(env.RDZV_WORLD_SIZE, "12");
    assert.equal(env.RDZV_ROUND, "5");
    assert.equal(env.RDZV_STORE_ADDR, "store-host");
    assert.equal(env.RDZV_STORE_PORT, "29400");
    assert.equal(env.RDZV_STORE_PREFIX, "rdzv/job-1/r5/store");
  });

  it("writes use_agent_store as Python's str(bool) and leaves RDZV_STORE_* out without a store", () => {
    const { store: _store, ...noStore } = spec;
    const env = workerEnv({ ...noStore, useAgentStore: true }, 0);
    assert.equal(env.TORCHELASTIC_USE_AGENT_STORE, "True");
    assert.equal(env.RDZV_STORE_ADDR, undefined);
    assert.equal(env.RDZV_STORE_PREFIX, undefined);
  });
});

describe("mergeWorkerEnv", () => {
  it("layers the worker's variables over the base and sets OMP_NUM_THREADS=1 for several workers", () => {
    const env = mergeWorkerEnv({ PATH: "/bin", RANK: "stale", GONE: undefined }, { RANK: "3" }, 2);
    assert.deepEqual(env, {
      PATH: "/bin",
      RANK: "3",
      OMP_NUM_THREADS: "1",
      PYTHONUNBUFFERED: "1",
      TORCH_NCCL_ASYNC_ERROR_HANDLING: "1",
      NCCL_ASYNC_ERROR_HANDLING: "1",
      TORCHELASTIC_SIGNALS_TO_HANDLE: "SIGTERM,SIGINT,SIGHUP,SIGQUIT",
    });
  });

  it("gives every variable torchrun gives its workers (2.x and 1.13)", () => {
    const env = mergeWorkerEnv(
      {},
      workerEnv({ ...spec, errorFileDir: "/tmp/e/attempt_2" }, 0),
      spec.nprocPerNode,
    );
    // torchrun --standalone --nproc-per-node 2 of PyTorch 2.13 and 1.13, less HOME, PATH and LC_CTYPE.
    const torch2 =
      "GROUP_RANK GROUP_WORLD_SIZE LOCAL_RANK LOCAL_WORLD_SIZE MASTER_ADDR MASTER_PORT OMP_NUM_THREADS RANK " +
      "ROLE_NAME ROLE_RANK ROLE_WORLD_SIZE TORCHELASTIC_MAX_RESTARTS TORCHELASTIC_RESTART_COUNT " +
      "TORCHELASTIC_RUN_ID TORCHELASTIC_SIGNALS_TO_HANDLE TORCHELASTIC_USE_AGENT_STORE " +
      "TORCH_NCCL_ASYNC_ERROR_HANDLING WORLD_SIZE TORCHELASTIC_ERROR_FILE";
    const torch113 = "NCCL_ASYNC_ERROR_HANDLING";
    const missing = `${torch2} ${torch113}`.split(" ").filter((k) => env[k] === undefined);
    assert.deepEqual(missing, []);
  });

  it("gives each worker its own TORCHELASTIC_ERROR_FILE in torchrun's layout, never the agent's", () => {
    const withDir = { ...spec, errorFileDir: "/tmp/e/attempt_2" };
    const agentEnv = { TORCHELASTIC_ERROR_FILE: "/scheduler/agent.json" };
    const files = [0, 1, 3].map(
      (l) => mergeWorkerEnv(agentEnv, workerEnv(withDir, l), spec.nprocPerNode).TORCHELASTIC_ERROR_FILE,
    );
    assert.deepEqual(
      files,
      [0, 1, 3].map((l) => `/tmp/e/attempt_2/${l}/error.json`),
    );
    assert.equal(errorFilePath("/d", 5), "/d/5/error.json");
    // Without a folder (the agent could not create one) the workers get none, not the agent's.
    assert.equal(workerEnv(spec, 0).TORCHELASTIC_ERROR_FILE, undefined);
    assert.equal(mergeWorkerEnv(agentEnv, workerEnv(spec, 0), 1).TORCHELASTIC_ERROR_FILE, undefined);
  });

  it("sets both NCCL error handling variables, or neither when the user set one", () => {
    const set = (base: Record<string, string>): [string | undefined, string | undefined] => {
      const env = mergeWorkerEnv(base, {}, 1);
      return [env.TORCH_NCCL_ASYNC_ERROR_HANDLING, env.NCCL_ASYNC_ERROR_HANDLING];
    };
    assert.deepEqual(set({}), ["1", "1"]);
    assert.deepEqual(set({ TORCH_NCCL_ASYNC_ERROR_HANDLING: "0" }), ["0", undefined]);
    assert.deepEqual(set({ NCCL_ASYNC_ERROR_HANDLING: "3" }), [undefined, "3"]);
  });

  it("keeps the user's TORCHELASTIC_SIGNALS_TO_HANDLE", () => {
    const env = mergeWorkerEnv({ TORCHELASTIC_SIGNALS_TO_HANDLE: "SIGUSR1" }, {}, 1);
    assert.equal(env.TORCHELASTIC_SIGNALS_TO_HANDLE, "SIGUSR1");
  });

  it("sets PYTHONUNBUFFERED=1 (output goes through a pipe) unless the user set it, to empty too", () => {
    assert.equal(mergeWorkerEnv({}, {}, 1).PYTHONUNBUFFERED, "1");
    assert.equal(mergeWorkerEnv({ PYTHONUNBUFFERED: undefined }, {}, 1).PYTHONUNBUFFERED, "1");
    assert.equal(mergeWorkerEnv({ PYTHONUNBUFFERED: "" }, {}, 4).PYTHONUNBUFFERED, "");
    assert.equal(mergeWorkerEnv({ PYTHONUNBUFFERED: "x" }, {}, 4).PYTHONUNBUFFERED, "x");
  });

  it("keeps the user's OMP_NUM_THREADS, and sets none for one worker", () => {
    assert.equal(mergeWorkerEnv({ OMP_NUM_THREADS: "8" }, {}, 4).OMP_NUM_THREADS, "8");
    assert.equal(mergeWorkerEnv({}, {}, 1).OMP_NUM_THREADS, undefined);
  });
});
