import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { createServerMetrics } from "./metrics.js";
import { RendezvousMonitor } from "./monitor.js";

const text = (s: string): Uint8Array => new TextEncoder().encode(s);

/** The samples of `name` in an exposition, by their labels. */
function samples(exposition: string, name: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of exposition.split("\n")) {
    const m = new RegExp(`^${name}(\\{.*\\})? (\\S+)$`).exec(line);
    if (m !== null) out.set(m[1] ?? "", Number(m[2]));
  }
  return out;
}

describe("server metrics", () => {
  it("labels nodes that left with the known reasons only: any other marker text is 'other'", async () => {
    const monitor = new RendezvousMonitor();
    const metrics = createServerMetrics({ monitor, processMetrics: false });
    try {
      let slot = 0;
      const gone = (reason: string): void => {
        // A member's descriptor, then its gone marker holding `reason` (whatever a client wrote there).
        monitor.observe(`rdzv/job/r0/node/${slot}`, undefined, text(`{"id":"n${slot}","addr":"h"}`));
        monitor.observe(`rdzv/job/r0/gone/${slot}`, undefined, text(reason));
        slot++;
      };
      gone("rejoined");
      gone("left");
      gone("left");
      for (let i = 0; i < 1000; i++) gone(`made up ${i}`);
      gone("");
      gone("dead"); // a loss, counted in nodes_lost_total
      const body = (await metrics.scrape()).body;
      assert.deepEqual(Object.fromEntries(samples(body, "rdzv_rendezvous_nodes_left_total")), {
        '{reason="rejoined"}': 1,
        '{reason="left"}': 2,
        '{reason="other"}': 1001,
      });
      assert.deepEqual([...samples(body, "rdzv_rendezvous_nodes_lost_total").values()], [1]);
    } finally {
      metrics.close();
    }
  });
});
