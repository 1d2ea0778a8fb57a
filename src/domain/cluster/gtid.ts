/** MariaDB GTIDs: domain-server-sequence. */
import { Schema } from "effect"

const U32 = Schema.Int.pipe(Schema.check(Schema.isBetween({ minimum: 0, maximum: 4294967295 })))

export const Gtid = Schema.Struct({
  domain: U32,
  server: U32,
  seq: Schema.Int.pipe(Schema.check(Schema.isGreaterThanOrEqualTo(1)))
})
export type Gtid = typeof Gtid.Type

export const formatGtid = (g: Gtid): string => `${g.domain}-${g.server}-${g.seq}`

/** Parses "D-S-N"; undefined when it is not one. */
export const parseGtid = (text: string): Gtid | undefined => {
  const m = /^(\d+)-(\d+)-(\d+)$/.exec(text.trim())
  if (m === null) return undefined
  const [domain, server, seq] = [Number(m[1]), Number(m[2]), Number(m[3])]
  if (domain > 4294967295 || server > 4294967295 || seq < 1 || !Number.isSafeInteger(seq)) return undefined
  return { domain, server, seq }
}

export const gtidEquals = (a: Gtid | null, b: Gtid | null): boolean =>
  a === null || b === null ? a === b : a.domain === b.domain && a.server === b.server && a.seq === b.seq

/**
 * Whether `next` directly follows `prev` in one domain: the next sequence number, from any
 * server (a new master continues the sequence). With no previous GTID any first one does.
 */
export const followsOn = (prev: Gtid | null, next: Gtid): boolean =>
  prev === null || (next.domain === prev.domain && next.seq === prev.seq + 1)
