/** `rdzv status`'s text (status-text.ts): a run's head line counts. */

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { NodeView, RunView } from "./run-view.js";
import { formatRun } from "./status-text.js";

const node = (i: number): NodeView => ({
  id: `host${i}_1${i}_0`,
  addr: `host${i}`,
  pid: 10 + i,
  status: "alive",
});

function view(participants: number, waiting: number, spares: number): RunView {
  const nodes = (n: number, from: number) => Array.from({ length: n }, (_, i) => node(from + i));
  return {
    runId: "job",
    source: "pytorch",
    state: "complete",
    round: 2,
    participants: nodes(participants, 0),
    waiting: nodes(waiting, 100),
    redundant: nodes(spares, 200),
    notes: [],
  };
}

describe("formatRun", () => {
  it("counts participants and spares in the singular for one, the plural otherwise", () => {
    const head = (v: RunView) => formatRun(v, 0).split("\n")[0];
    assert.equal(head(view(1, 0, 1)), "run job (pytorch)  complete  round 2  1 participant, 1 spare");
    assert.equal(
      head(view(2, 3, 2)),
      "run job (pytorch)  complete  round 2  2 participants, 3 waiting, 2 spares",
    );
    assert.equal(head(view(0, 1, 0)), "run job (pytorch)  complete  round 2  0 participants, 1 waiting");
  });
});
