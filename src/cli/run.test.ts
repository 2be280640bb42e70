/** `rdzv run`'s argument parsing: torchrun's spellings and the hints for torchrun options it lacks. */

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { UsageError } from "./args.js";
import { parseRunArgs, splitCommand } from "./run.js";

describe("rdzv run arguments", () => {
  it("takes torchrun's underscore spellings of its options, before the command only", () => {
    const parsed = parseRunArgs([
      "--nproc_per_node=3",
      "--rdzv_backend",
      "c10d",
      "--rdzv_endpoint=h:1",
      "--max_restarts",
      "2",
      "--",
      "node",
      "--keep_this",
    ]);
    assert.equal(parsed?.nprocPerNode, 3);
    assert.equal(parsed?.backend, "c10d");
    assert.equal(parsed?.endpoint, "h:1");
    assert.equal(parsed?.maxRestarts, 2);
    assert.deepEqual(parsed?.args, ["--keep_this"]);
    assert.deepEqual(splitCommand(["--nproc_per_node", "2", "node", "--a_b"]), {
      options: ["--nproc-per-node", "2"],
      command: ["node", "--a_b"],
    });
  });

  it("says what to write instead of torchrun options it does not have", () => {
    const cases: [string[], RegExp][] = [
      [["--master_addr", "h", "--", "true"], /--master-addr is not an rdzv run option: .*--rdzv-endpoint/],
      [["--master-port=1", "--", "true"], /--master-port is not an rdzv run option/],
      [["-m", "pkg", "--", "true"], /-m is not an rdzv run option: .*python3 -m MODULE/],
      [["--no_python", "--", "true"], /--no-python is not an rdzv run option/],
      [["--run-path", "x", "--", "true"], /python3 PATH/],
    ];
    for (const [argv, message] of cases) {
      assert.throws(
        () => parseRunArgs(argv),
        (err: unknown) => err instanceof UsageError && message.test(String(err)),
      );
    }
    assert.throws(() => parseRunArgs(["--bogus", "--", "true"]), /Unknown option '--bogus'/);
  });

  it("says what rdzv run does instead of torchrun's log, output and process options, in either spelling", () => {
    const cases: [string[], RegExp][] = [
      [
        ["--tee", "3", "--", "true"],
        /--tee is not an rdzv run option: rdzv run writes no log files: .*stdout/,
      ],
      [["-t", "3", "--", "true"], /-t is not an rdzv run option: .*2>&1 \| tee/],
      [["-t3", "--", "true"], /-t is not an rdzv run option/],
      [["--log_dir=/tmp/x", "--", "true"], /--log-dir is not an rdzv run option: .*out\.\$RANK\.log/],
      [["--log-dir", "/tmp/x", "train.py"], /--log-dir is not an rdzv run option/],
      [["-r", "3", "--", "true"], /-r is not an rdzv run option: rdzv run writes no log files/],
      [["--redirects", "0:1", "--", "true"], /--redirects is not an rdzv run option/],
      [["--local_ranks_filter", "0", "--", "true"], /--local-ranks-filter .*\$LOCAL_RANK/],
      [["--local-ranks-filter=0,1", "--", "true"], /--local-ranks-filter is not an rdzv run option/],
      [["--start_method", "spawn", "--", "true"], /--start-method is not an rdzv run option: .*drop it/],
      [["--start-method=fork", "--", "true"], /--start-method is not an rdzv run option/],
      [["--logs_specs", "x", "--", "true"], /--logs-specs is not an rdzv run option/],
      [["--shutdown-timeout", "5", "--", "true"], /--shutdown-timeout .*--stop-timeout SECS/],
      [["--signals_to_handle", "SIGUSR1", "--", "true"], /--signals-to-handle .*forwards no other signal/],
      [["--numa-binding", "node", "--", "true"], /--numa-binding .*numactl/],
      [["--virtual-local-rank", "--", "true"], /--virtual-local-rank .*CUDA_VISIBLE_DEVICES/],
      [["--event_log_handler", "console", "--", "true"], /--event-log-handler is not an rdzv run option/],
      [["--duplicate-stdout-filters", "a", "--", "true"], /--duplicate-stdout-filters .*grep/],
      [["--use_env", "--", "true"], /--use-env .*LOCAL_RANK/],
    ];
    for (const [argv, message] of cases) {
      assert.throws(
        () => parseRunArgs(argv),
        (err: unknown) => err instanceof UsageError && message.test(String(err)),
        argv.join(" "),
      );
    }
  });

  it("takes torchrun's options that rdzv run has under the same name", () => {
    const parsed = parseRunArgs([
      "--role=trainer",
      "--monitor_interval",
      "0.5",
      "--rdzv_backend",
      "static",
      "--node_rank",
      "1",
      "--",
      "true",
    ]);
    assert.equal(parsed?.role, "trainer");
    assert.equal(parsed?.monitorIntervalMs, 500);
    assert.equal(parsed?.backend, "static");
    assert.equal(parsed?.config.rank, "1");
  });

  it("refuses a Python script that is not executable as the command, saying to run it with python3", () => {
    assert.throws(
      () => parseRunArgs(["--standalone", "train.py"]),
      /train\.py is not an executable: write -- python3 train\.py/,
    );
  });
});
