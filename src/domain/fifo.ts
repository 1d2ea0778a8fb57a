/**
 * Keys in the order they came, with O(1) push and shift: to bound a Map or Set by evicting
 * the oldest. Walking a V8 Map or Set from its start to find its oldest key skips every
 * deleted slot before it, so that costs more the longer the structure churns (measured:
 * 300,000 evictions from a 10,000-key Map took 2.2 s that way, 61 ms with this).
 */
export class Fifo<K> {
  private items: Array<K> = []
  private head = 0

  get size(): number {
    return this.items.length - this.head
  }

  push(key: K): void {
    this.items.push(key)
  }

  /** The oldest key, removed (undefined when empty). */
  shift(): K | undefined {
    if (this.head >= this.items.length) return undefined
    const key = this.items[this.head]!
    this.head++
    // Drop the consumed front now and then: amortised O(1), memory bounded by the live keys.
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head)
      this.head = 0
    }
    return key
  }

  clear(): void {
    this.items = []
    this.head = 0
  }
}
