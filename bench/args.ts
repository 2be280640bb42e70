/**
 * Command-line flags of the benchmarks that take `--name value` pairs by hand (the others use
 * `node:util`'s `parseArgs`). A flag given without a value, or with one that is not what it should be,
 * throws naming the flag, instead of measuring with NaN.
 */

/** The value after `name` on the command line, or `fallback` when `name` is absent. */
export function stringFlag(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  if (i < 0) return fallback;
  const value = process.argv[i + 1];
  if (value === undefined || value.startsWith("--")) throw new Error(`${name} needs a value`);
  return value;
}

/**
 * The integer after `name` (at least `min`, default 1), or `fallback` when `name` is absent. Underscores
 * may group digits (`--ops 100_000`).
 */
export function intFlag(name: string, fallback: number, min = 1): number {
  const raw = stringFlag(name, String(fallback));
  const value = Number(raw.replaceAll("_", ""));
  if (!Number.isSafeInteger(value) || value < min) {
    throw new Error(`${name} must be an integer of at least ${min}, got ${JSON.stringify(raw)}`);
  }
  return value;
}

/** The comma-separated integers after `name` (each at least `min`, default 1), or `fallback`. */
export function intListFlag(name: string, fallback: readonly number[], min = 1): number[] {
  const raw = stringFlag(name, fallback.join(","));
  return raw.split(",").map((part) => {
    const value = Number(part.replaceAll("_", ""));
    if (part === "" || !Number.isSafeInteger(value) || value < min) {
      throw new Error(`${name} must list integers of at least ${min}, got ${JSON.stringify(raw)}`);
    }
    return value;
  });
}
