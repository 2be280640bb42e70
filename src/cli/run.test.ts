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

  it("refuses a Python script that is not executable as the command, saying to run it with python3", () => {
    assert.throws(
      () => parseRunArgs(["--standalone", "train.py"]),
      /train\.py is not an executable: write -- python3 train\.py/,
    );
  });
});
