/** Building blocks shared by the seeded simulators: a PRNG and a time-ordered event queue. */

/** mulberry32: small, fast, deterministic. */
export class Rng {
  private s: number
  constructor(seed: number) {
    this.s = seed | 0
  }
  next(): number {
    this.s = (this.s + 0x6d2b79f5) | 0
    let t = this.s
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
  int(min: number, max: number): number {
    return min + Math.floor(this.next() * (max - min + 1))
  }
}

interface Scheduled<E> {
  readonly time: number
  readonly seq: number
  readonly event: E
}

const less = <E>(a: Scheduled<E>, b: Scheduled<E>): boolean => a.time < b.time || (a.time === b.time && a.seq < b.seq)

/** Binary min-heap on (time, insertion order). */
export class EventQueue<E> {
  private readonly heap: Array<Scheduled<E>> = []
  private seq = 0
  get size(): number {
    return this.heap.length
  }
  peekTime(): number {
    return this.heap.length > 0 ? this.heap[0]!.time : Infinity
  }
  push(time: number, event: E): void {
    const h = this.heap
    h.push({ time, seq: this.seq++, event })
    let i = h.length - 1
    while (i > 0) {
      const p = (i - 1) >> 1
      if (less(h[p]!, h[i]!)) break
      ;[h[p], h[i]] = [h[i]!, h[p]!]
      i = p
    }
  }
  pop(): Scheduled<E> | undefined {
    const h = this.heap
    if (h.length === 0) return undefined
    const top = h[0]!
    const last = h.pop()!
    if (h.length > 0) {
      h[0] = last
      let i = 0
      for (;;) {
        const l = 2 * i + 1
        const r = l + 1
        let m = i
        if (l < h.length && less(h[l]!, h[m]!)) m = l
        if (r < h.length && less(h[r]!, h[m]!)) m = r
        if (m === i) break
        ;[h[m], h[i]] = [h[i]!, h[m]!]
        i = m
      }
    }
    return top
  }
}

/** A seeded random-number function (the same mulberry32 as Rng), for fuzz loops. */
export const prng = (seed: number): (() => number) => {
  const rng = new Rng(seed)
  return () => rng.next()
}

export const randomBytes = (next: () => number, n: number): Uint8Array => Uint8Array.from({ length: n }, () => Math.floor(next() * 256))
