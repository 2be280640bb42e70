/**
 * The log of `rdzv serve`: one line per record on stderr, with every character a terminal or a log
 * viewer would act on escaped. Records carry text that clients wrote (keys, run ids, values quoted in
 * errors); the JSON of their fields escapes C0 controls and newlines, but not C1 controls (U+009B is a
 * CSI to many terminals), DEL, Unicode line separators or bidirectional overrides, which could recolour
 * the terminal or make one record read as another.
 */

import { createConsoleLogger, type Logger, type LogLevel } from "../log.js";

/** C0 except tab, DEL, C1, U+2028/2029 (line/paragraph separators), bidi embeddings, overrides, isolates. */
function unsafe(code: number): boolean {
  return (
    (code < 0x20 && code !== 0x09) ||
    (code >= 0x7f && code <= 0x9f) ||
    code === 0x2028 ||
    code === 0x2029 ||
    (code >= 0x202a && code <= 0x202e) ||
    (code >= 0x2066 && code <= 0x2069)
  );
}

/** `line` with each unsafe character (see the file comment) written as `\uXXXX`. */
export function escapeLogLine(line: string): string {
  let out = "";
  let from = 0;
  for (let i = 0; i < line.length; i++) {
    const code = line.charCodeAt(i);
    if (!unsafe(code)) continue;
    out += `${line.slice(from, i)}\\u${code.toString(16).padStart(4, "0")}`;
    from = i + 1;
  }
  return from === 0 ? line : out + line.slice(from);
}

/** A console logger at `level` whose lines go through `escapeLogLine` to `write` (default: stderr). */
export function createServeLogger(
  level: LogLevel,
  write: (line: string) => void = (line) => process.stderr.write(`${line}\n`),
): Logger {
  return createConsoleLogger(level, (line) => write(escapeLogLine(line)));
}
