/** The live status line: drawn on a terminal, hidden around output, never over an unfinished line. */

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { setTimeout as delay } from "node:timers/promises";
import { StatusLine } from "./status-line.js";

/** A terminal that records what is written to it. */
function terminal(): { stream: NodeJS.WriteStream; written: string[] } {
  const written: string[] = [];
  const stream = {
    isTTY: true,
    columns: 80,
    write: (text: string) => {
      written.push(text);
      return true;
    },
  } as unknown as NodeJS.WriteStream;
  return { stream, written };
}

const draws = (written: string[]) => written.filter((w) => w.endsWith("round 3")).length;

describe("StatusLine", () => {
  it("comes back after output that ends its line, and stays away while a line is left unfinished", async () => {
    const { stream, written } = terminal();
    const status = new StatusLine(stream);
    status.set("round 3");
    assert.equal(draws(written), 1);
    status.hide(); // a worker wrote whole lines
    await delay(250);
    assert.equal(draws(written), 2);
    status.hide(true); // a worker wrote a prompt: "(Pdb) "
    status.set("round 3");
    await delay(250);
    assert.equal(draws(written), 2, "the status line was drawn over an unfinished line");
    status.hide(false); // the worker's line ended
    await delay(250);
    assert.equal(draws(written), 3);
    status.clear();
  });
});
