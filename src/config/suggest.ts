/** "Did you mean ...?" hints for misspelt keys, variables and flags. */

/** Edit distance (insertions, deletions, substitutions) between two strings. */
export function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) {
      const substitute = prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1);
      row.push(Math.min(prev[j] + 1, row[j - 1] + 1, substitute));
    }
    prev = row;
  }
  return prev[b.length];
}

function lastSegment(path: string): string {
  return path.slice(path.lastIndexOf(".") + 1);
}

/**
 * The candidate closest to `wanted`, or undefined when nothing is close enough to be a plausible
 * typo. Dotted paths also match on their last segment, so a key put in the wrong table
 * (`limits.timeout`) still finds its home (`general.timeout`).
 */
export function nearest(wanted: string, candidates: readonly string[]): string | undefined {
  const w = wanted.toLowerCase();
  const allowed = Math.max(2, Math.floor(lastSegment(w).length / 3));
  let best: string | undefined;
  let bestScore = Infinity;
  for (const candidate of candidates) {
    const c = candidate.toLowerCase();
    // The distance is at least the difference in length: a pair that cannot come within
    // `allowed` is not measured. Measuring a megabyte-long variable name against every key
    // took half a minute at start.
    const near = (a: string, b: string) =>
      Math.abs(a.length - b.length) <= allowed ? editDistance(a, b) : Infinity;
    const score = Math.min(near(w, c), near(lastSegment(w), lastSegment(c)) + 1);
    if (score < bestScore) {
      best = candidate;
      bestScore = score;
    }
  }
  return bestScore <= allowed ? best : undefined;
}
