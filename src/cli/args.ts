/** Small helpers for parsing command-line values with errors that name the option and the bad value. */

import { InvalidArgumentError } from "../errors.js";

/** A usage error: printed with the command's help, exit code 2. */
export class UsageError extends InvalidArgumentError {}

/** Parses an integer option within [min, max]. */
export function intOption(
  name: string,
  value: string | undefined,
  fallback: number,
  min: number,
  max: number,
): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!/^-?\d+$/.test(value.trim()) || !Number.isSafeInteger(n) || n < min || n > max) {
    throw new UsageError(`--${name} must be an integer in ${min}..${max}, got ${JSON.stringify(value)}`);
  }
  return n;
}

const DURATION_UNITS_MS: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/**
 * Parses a duration option: whole seconds (`90`), or a whole number with a unit `s`, `m`, `h` or `d`
 * (`30m`, `24h`, `7d`); in ms. `0` (any unit) is allowed when `zero` names what it means, e.g. "disables".
 */
export function durationOption(
  name: string,
  value: string | undefined,
  fallbackMs: number,
  zero?: string,
): number {
  if (value === undefined) return fallbackMs;
  const m = /^(\d+)([smhd]?)$/.exec(value.trim());
  const ms = m === null ? Number.NaN : Number(m[1]) * DURATION_UNITS_MS[m[2] || "s"]!;
  if (!Number.isSafeInteger(ms) || (ms === 0 && zero === undefined)) {
    const zeroNote = zero === undefined ? "" : `; 0 ${zero}`;
    throw new UsageError(
      `--${name} must be a duration: whole seconds, or a whole number with s, m, h or d (90, 30m, 24h, 7d)${zeroNote}, got ${JSON.stringify(value)}`,
    );
  }
  return ms;
}

const SIZE_UNITS: Record<string, number> = { "": 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 };

/**
 * Parses a size option: bytes (`1048576`), or a whole number with a binary unit `K`, `M`, `G` or `T`,
 * optionally followed by `iB` or `B` (`512M`, `2GiB`, `64KB`: all powers of 1024); 0 is allowed (the caller
 * says what it means).
 */
export function sizeOption(name: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  const m = /^(\d+)\s*(?:([kmgt])(?:i?b)?)?$/i.exec(value.trim());
  const bytes = m === null ? Number.NaN : Number(m[1]) * SIZE_UNITS[(m[2] ?? "").toLowerCase()]!;
  if (!Number.isSafeInteger(bytes)) {
    throw new UsageError(
      `--${name} must be a size in bytes, or with a unit K, M, G or T (powers of 1024: 512M, 2GiB), got ${JSON.stringify(value)}`,
    );
  }
  return bytes;
}
