/**
 * Worker output: forwarding each worker's stdout/stderr to the agent's (optionally prefixed by rank, line
 * by line, as torchrun's `[default0]:` prefixes), and keeping the tail of each worker's stderr for the
 * failure summary.
 */

import type { Readable, Writable } from "node:stream";

/** Which of a worker's streams. */
export type StreamName = "stdout" | "stderr";

/** The most of an unfinished line held back, in characters: past it, the line goes out in pieces. */
export const MAX_HELD_CHARS = 64 * 1024;

/**
 * Splits text into complete lines, carrying a partial last line over to the next chunk. Linear in the
 * text: each chunk is searched once, and the partial line is kept as a list of pieces, joined once at its
 * end. A partial line longer than `maxLineChars` comes out as a line as it is, so memory stays bounded.
 */
export class LineSplitter {
  readonly #pieces: string[] = [];
  #held = 0;
  readonly #maxLineChars: number;

  constructor(maxLineChars = MAX_HELD_CHARS) {
    this.#maxLineChars = maxLineChars;
  }

  /** Characters of the partial line held back now. */
  get heldChars(): number {
    return this.#held;
  }

  /** The lines that `text` completes, without their `\n` (a `\r\n` loses its `\r` too). */
  push(text: string): string[] {
    const lines: string[] = [];
    let start = 0;
    for (let nl = text.indexOf("\n"); nl >= 0; nl = text.indexOf("\n", start)) {
      this.#pieces.push(text.slice(start, nl));
      lines.push(stripCR(this.#take()));
      start = nl + 1;
    }
    if (start < text.length) {
      this.#pieces.push(start === 0 ? text : text.slice(start));
      this.#held += text.length - start;
      if (this.#held > this.#maxLineChars) lines.push(this.#take());
    }
    return lines;
  }

  /** The partial line left over, if any (at end of stream). */
  flush(): string[] {
    const rest = this.#take();
    return rest === "" ? [] : [stripCR(rest)];
  }

  #take(): string {
    const line = this.#pieces.length === 1 ? this.#pieces[0]! : this.#pieces.join("");
    this.#pieces.length = 0;
    this.#held = 0;
    return line;
  }
}

function stripCR(line: string): string {
  return line.endsWith("\r") ? line.slice(0, -1) : line;
}

/**
 * The last `maxLines` lines written to a stream, each cut to `maxLineChars`, as a terminal shows them: of
 * a line that `\r` rewrites (a progress bar), only the last rewrite. Linear in the text, and it holds at
 * most `maxLines + 1` lines of `maxLineChars + 1` characters, however long the lines are.
 */
export class TailBuffer {
  readonly #lines: string[] = [];
  readonly #maxLines: number;
  readonly #maxLineChars: number;
  /** The current line's last `\r`-segment so far, at most `maxLineChars + 1` characters. */
  #current = "";
  /** The last character was a `\r`: the next one either ends the line (`\n`) or rewrites it. */
  #afterCR = false;

  constructor(maxLines = 20, maxLineChars = 400) {
    this.#maxLines = maxLines;
    this.#maxLineChars = maxLineChars;
  }

  push(text: string): void {
    let nl = text.indexOf("\n");
    let cr = text.indexOf("\r");
    for (let start = 0; start < text.length; ) {
      // Both positions are searched again only once passed: one pass over the text in all.
      if (nl >= 0 && nl < start) nl = text.indexOf("\n", start);
      if (cr >= 0 && cr < start) cr = text.indexOf("\r", start);
      const end = nl < 0 ? cr : cr < 0 ? nl : Math.min(nl, cr);
      this.#append(text, start, end < 0 ? text.length : end);
      if (end < 0) return;
      if (end === nl) this.#endLine();
      else this.#afterCR = true;
      start = end + 1;
    }
  }

  /** The kept lines, the partial last line included. */
  lines(): string[] {
    const lines = this.#lines.map((l) => this.#cut(l));
    if (this.#current !== "") lines.push(this.#cut(this.#current));
    return lines.slice(-this.#maxLines);
  }

  #append(text: string, start: number, end: number): void {
    if (end === start) return;
    if (this.#afterCR) {
      this.#current = "";
      this.#afterCR = false;
    }
    const room = this.#maxLineChars + 1 - this.#current.length;
    if (room > 0) this.#current += text.slice(start, Math.min(end, start + room));
  }

  #endLine(): void {
    this.#lines.push(this.#current);
    if (this.#lines.length > this.#maxLines) this.#lines.shift();
    this.#current = "";
    this.#afterCR = false;
  }

  #cut(line: string): string {
    return line.length > this.#maxLineChars ? `${line.slice(0, this.#maxLineChars)}…` : line;
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
      // Only the new chunk is searched, and what is held back is kept in pieces.
      const held: string[] = [];
      let heldChars = 0;
      const release = (upTo = ""): string => {
        held.push(upTo);
        const text = held.join("");
        held.length = 0;
        heldChars = 0;
        return text;
      };
      source.on("data", (chunk: string) => {
        const lineEnd = Math.max(chunk.lastIndexOf("\n"), chunk.lastIndexOf("\r")) + 1;
        if (lineEnd > 0) write(release(chunk.slice(0, lineEnd)));
        if (lineEnd === chunk.length) return;
        held.push(lineEnd === 0 ? chunk : chunk.slice(lineEnd));
        heldChars += chunk.length - lineEnd;
        // A line longer than MAX_HELD_CHARS goes out in pieces rather than pile up.
        if (heldChars > MAX_HELD_CHARS) write(release());
      });
      source.on("end", () => write(release()));
    },
  };
}

/** Output that drops everything (tests, benchmarks). */
export const discardWorkerOutput: WorkerOutput = {
  attach(_rank, _stream, source) {
    source.resume();
  },
};
