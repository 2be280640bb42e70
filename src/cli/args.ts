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
