/**
 * A live one-line status at the bottom of a terminal ("round 3 · 2/1..4 nodes · 8 workers · restarts
 * 1/3"). It only draws on a TTY; elsewhere every call is a no-op, so logs stay clean.
 */

import type { WriteStream } from "node:tty";

/** What the status line shows. */
export interface AgentStatus {
  readonly phase: "joining" | "running" | "restarting" | "finishing";
  readonly round?: number;
  /** Nodes in the round. */
  readonly nodes?: number;
  readonly minNodes: number;
  readonly maxNodes: number;
  readonly workers?: number;
  readonly restarts: number;
  readonly maxRestarts: number;
  /** Why the group restarts (phase "restarting"). */
  readonly reason?: string;
}

/** The status text (pure, for tests). */
export function formatStatus(s: AgentStatus): string {
  const range = s.minNodes === s.maxNodes ? `${s.maxNodes}` : `${s.minNodes}..${s.maxNodes}`;
  const restarts = `restarts ${s.restarts}/${s.maxRestarts}`;
  switch (s.phase) {
    case "joining":
      return `rdzv: joining the rendezvous (needs ${range} nodes) · ${restarts}`;
    case "running":
      return (
        `rdzv: round ${s.round ?? "?"} · ${s.nodes ?? "?"}/${range} nodes · ${s.workers ?? 0} workers running · ` +
        restarts
      );
    case "restarting":
      return `rdzv: restarting (${s.reason ?? "membership change"}) · ${restarts}`;
    case "finishing":
      return `rdzv: workers done, waiting for the other nodes · round ${s.round ?? "?"}`;
  }
}

const CLEAR = "\r\x1b[2K";

/** A status line on `stream`, redrawn after other output (which must call `hide()` first). */
export class StatusLine {
  readonly #stream: WriteStream | undefined;
  #text = "";
  #shown = false;
  #redraw: NodeJS.Timeout | undefined;
  /** Output left its line unfinished: no drawing until output ends a line. */
  #held = false;

  /** Draws only when `enabled` and `stream` is a TTY. */
  constructor(stream: NodeJS.WriteStream, enabled = true) {
    this.#stream = enabled && stream.isTTY ? (stream as WriteStream) : undefined;
  }

  get active(): boolean {
    return this.#stream !== undefined;
  }

  /** Shows `text` (cut to the terminal width). */
  set(text: string): void {
    if (this.#stream === undefined) return;
    this.#text = text;
    this.#draw();
  }

  /**
   * Takes the line off the screen before other output; it comes back shortly after, unless that output
   * leaves its line unfinished (`lineOpen`: a prompt, a progress bar): then it stays away until output
   * that ends its line, so that it never overwrites the unfinished one.
   */
  hide(lineOpen = false): void {
    if (this.#stream === undefined) return;
    if (this.#shown) {
      this.#stream.write(CLEAR);
      this.#shown = false;
    }
    this.#held = lineOpen;
    if (lineOpen) {
      clearTimeout(this.#redraw);
      this.#redraw = undefined;
      return;
    }
    if (this.#redraw === undefined) {
      this.#redraw = setTimeout(() => {
        this.#redraw = undefined;
        this.#draw();
      }, 100);
      this.#redraw.unref();
    }
  }

  /** Removes the line for good. */
  clear(): void {
    if (this.#redraw !== undefined) clearTimeout(this.#redraw);
    this.#redraw = undefined;
    this.#text = "";
    if (this.#stream !== undefined && this.#shown) this.#stream.write(CLEAR);
    this.#shown = false;
  }

  #draw(): void {
    const stream = this.#stream;
    if (stream === undefined || this.#text === "" || this.#redraw !== undefined || this.#held) return;
    const width = Math.max(10, (stream.columns ?? 80) - 1);
    const text = this.#text.length > width ? `${this.#text.slice(0, width - 1)}…` : this.#text;
    stream.write(`${CLEAR}${text}`);
    this.#shown = true;
  }
}
