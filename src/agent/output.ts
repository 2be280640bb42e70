/**
 * Worker output: forwarding each worker's stdout/stderr to the agent's (optionally prefixed by rank, line
 * by line, as torchrun's `[default0]:` prefixes), and keeping the tail of each worker's stderr for the
 * failure summary.
 */

import type { Readable, Writable } from "node:stream";

/** Which of a worker's streams. */
export type StreamName = "stdout" | "stderr";

/** Splits text into complete lines, carrying a partial last line over to the next chunk. */
export class LineSplitter {
  #partial = "";

  /** The complete lines in `partial + text`, without their `\n` (a `\r\n` loses its `\r` too). */
  push(text: string): string[] {
    const parts = (this.#partial + text).split("\n");
    this.#partial = parts.pop() ?? "";
    return parts.map(stripCR);
  }

  /** The partial line left over, if any (at end of stream). */
  flush(): string[] {
    const rest = this.#partial;
    this.#partial = "";
    return rest === "" ? [] : [stripCR(rest)];
  }
}

function stripCR(line: string): string {
  return line.endsWith("\r") ? line.slice(0, -1) : line;
}

/** The last `maxLines` lines written to a stream, each cut to `maxLineChars`. */
export class TailBuffer {
  readonly #lines: string[] = [];
  readonly #splitter = new LineSplitter();
  readonly #maxLines: number;
  readonly #maxLineChars: number;

  constructor(maxLines = 20, maxLineChars = 400) {
    this.#maxLines = maxLines;
    this.#maxLineChars = maxLineChars;
  }

  push(text: string): void {
    for (const line of this.#splitter.push(text)) this.#add(line);
  }

  /** The kept lines, the partial last line included. */
  lines(): string[] {
    const pending = this.#splitter.flush();
    for (const line of pending) this.#add(line);
    return [...this.#lines];
  }

  #add(line: string): void {
    const cut = line.length > this.#maxLineChars ? `${line.slice(0, this.#maxLineChars)}…` : line;
    this.#lines.push(cut);
    if (this.#lines.length > this.#maxLines) this.#lines.shift();
  }
}

/** Where worker output goes. */
export interface WorkerOutput {
  /** Forwards `source` (a worker's stream, utf-8 decoded) until it ends. Called once per stream. */
  attach(rank: number, stream: StreamName, source: Readable): void;
}

/** Options of `createWorkerOutput`. */
export interface WorkerOutputOptions {
  /** Prefix each line with `[rank<N>]: ` (complete lines only; partial lines wait for their end). */
  readonly prefix: boolean;
  readonly stdout: Writable;
  readonly stderr: Writable;
  /** Called before each write (the status line hides itself there). */
  readonly beforeWrite?: () => void;
}

/** The most of an unfinished line held back from the agent's output, in characters. */
const MAX_HELD_CHARS = 64 * 1024;

/** Output to the agent's own streams, pausing a worker's stream while its destination is full. */
export function createWorkerOutput(options: WorkerOutputOptions): WorkerOutput {
  return {
    attach(rank, stream, source) {
      const dest = stream === "stdout" ? options.stdout : options.stderr;
      const write = (text: string): void => {
        if (text === "") return;
        options.beforeWrite?.();
        if (!dest.write(text)) {
          source.pause();
          dest.once("drain", () => source.resume());
        }
      };
      if (options.prefix) {
        const splitter = new LineSplitter();
        const tag = `[rank${rank}]: `;
        const format = (lines: string[]): string => lines.map((l) => `${tag}${l}\n`).join("");
        source.on("data", (chunk: string) => write(format(splitter.push(chunk))));
        source.on("end", () => write(format(splitter.flush())));
        return;
      }
      // Untouched, but only up to the last line end (`\n`, or `\r` for progress bars): workers writing at
      // once must not interleave within a line (an unbuffered Python `print` writes text and newline apart).
      let pending = "";
      source.on("data", (chunk: string) => {
        const text = pending + chunk;
        // A line longer than MAX_HELD_CHARS goes out in pieces rather than pile up.
        const lineEnd = Math.max(text.lastIndexOf("\n"), text.lastIndexOf("\r")) + 1;
        const end = text.length - lineEnd > MAX_HELD_CHARS ? text.length : lineEnd;
        pending = text.slice(end);
        write(text.slice(0, end));
      });
      source.on("end", () => write(pending));
    },
  };
}

/** Output that drops everything (tests, benchmarks). */
export const discardWorkerOutput: WorkerOutput = {
  attach(_rank, _stream, source) {
    source.resume();
  },
};
