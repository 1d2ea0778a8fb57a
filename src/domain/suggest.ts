/** "Did you mean ...?" for a misspelt name (a config key): the closest known name by edit distance. */

/** Levenshtein distance (insertions, deletions, substitutions), case-insensitive. */
export const editDistance = (a: string, b: string): number => {
  const s = a.toLowerCase()
  const t = b.toLowerCase()
  let previous = Array.from({ length: t.length + 1 }, (_, j) => j)
  for (let i = 1; i <= s.length; i++) {
    const current = [i]
    for (let j = 1; j <= t.length; j++) {
      current[j] = Math.min(previous[j]! + 1, current[j - 1]! + 1, previous[j - 1]! + (s[i - 1] === t[j - 1] ? 0 : 1))
    }
    previous = current
  }
  return previous[t.length]!
}

/**
 * The known name `word` most likely stands for, if one is obviously it: another case of
 * it, or within a third of its length in edits (at least 1, at most 3; two letters swapped
 * count as one), and closer than any other. Undefined when nothing is close or two are equally close.
 */
export const closestName = (word: string, known: Iterable<string>): string | undefined => {
  const limit = Math.min(3, Math.max(1, Math.floor(word.length / 3)))
  let best: string | undefined
  let bestDistance = Infinity
  let tie = false
  for (const candidate of known) {
    if (candidate === word) continue
    // Letters swapped ("mdoe" for "mode") count as one edit, as a person sees them.
    const distance = isTransposition(word, candidate) ? 1 : editDistance(word, candidate)
    if (distance < bestDistance) {
      best = candidate
      bestDistance = distance
      tie = false
    } else if (distance === bestDistance) {
      tie = true
    }
  }
  return best !== undefined && !tie && bestDistance <= limit ? best : undefined
}

/** Whether `a` is `b` with two adjacent letters swapped. */
const isTransposition = (a: string, b: string): boolean => {
  if (a.length !== b.length) return false
  const s = a.toLowerCase()
  const t = b.toLowerCase()
  const diff: Array<number> = []
  for (let i = 0; i < s.length; i++) if (s[i] !== t[i]) diff.push(i)
  return diff.length === 2 && diff[1] === diff[0]! + 1 && s[diff[0]!] === t[diff[1]!] && s[diff[1]!] === t[diff[0]!]
}
