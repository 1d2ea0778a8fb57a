import { describe, expect, it } from "@effect/vitest"
import { Result } from "effect"
import { randomBytes, randomInt } from "node:crypto"
import * as PP from "../src/domain/mysql/proxyProtocol.js"

const ok = <A, E>(r: Result.Result<A, E>): A => {
  if (Result.isFailure(r)) throw new Error(`unexpected failure: ${String((r.failure as { message?: string }).message ?? r.failure)}`)
  return r.success
}
const text = (s: string) => new TextEncoder().encode(s)
const concat = (a: Uint8Array, b: Uint8Array) => {
  const out = new Uint8Array(a.length + b.length)
  out.set(a)
  out.set(b, a.length)
  return out
}

const randomV4 = () => Array.from({ length: 4 }, () => randomInt(256)).join(".")
const randomV6 = () => PP.formatIPv6(randomBytes(16))

describe("PROXY protocol v1", () => {
  it("builds TCP4 and TCP6 headers", () => {
    expect(new TextDecoder().decode(ok(PP.buildV1({ address: "10.1.2.3", port: 5555 }, { address: "127.0.0.1", port: 3306 }))))
      .toBe("PROXY TCP4 10.1.2.3 127.0.0.1 5555 3306\r\n")
    expect(new TextDecoder().decode(ok(PP.buildV1({ address: "::1", port: 1 }, { address: "fe80:0:0:0:0:0:0:1", port: 2 }))))
      .toBe("PROXY TCP6 ::1 fe80::1 1 2\r\n")
    // IPv4-mapped addresses become TCP4; a mixed pair becomes TCP6
    expect(new TextDecoder().decode(ok(PP.buildV1({ address: "::ffff:127.0.0.2", port: 9 }, { address: "127.0.0.1", port: 3306 }))))
      .toBe("PROXY TCP4 127.0.0.2 127.0.0.1 9 3306\r\n")
    expect(new TextDecoder().decode(ok(PP.buildV1({ address: "127.0.0.2", port: 9 }, { address: "::1", port: 3306 }))))
      .toBe("PROXY TCP6 ::ffff:127.0.0.2 ::1 9 3306\r\n")
    expect(Result.isFailure(PP.buildV1({ address: "nope", port: 1 }, { address: "::1", port: 2 }))).toBe(true)
    expect(Result.isFailure(PP.buildV1({ address: "1.2.3.4", port: 70000 }, { address: "1.2.3.4", port: 2 }))).toBe(true)
  })

  it("parses incrementally and reports the bytes consumed", () => {
    const header = text("PROXY TCP4 10.1.2.3 127.0.0.1 5555 3306\r\n")
    const all = concat(header, text("rest"))
    for (let n = 0; n < header.length; n++) {
      expect(ok(PP.parse(all.subarray(0, n)))._tag).toBe("NeedMore")
    }
    expect(ok(PP.parse(all))).toEqual({
      _tag: "Done",
      consumed: header.length,
      header: {
        _tag: "Proxied",
        version: 1,
        family: "TCP4",
        source: { address: "10.1.2.3", port: 5555 },
        destination: { address: "127.0.0.1", port: 3306 }
      }
    })
    expect(ok(PP.parse(text("PROXY UNKNOWN\r\n")))).toEqual({ _tag: "Done", consumed: 15, header: { _tag: "Unknown", version: 1 } })
  })

  it("rejects malformed headers", () => {
    for (
      const bad of [
        "GET / HTTP/1.1\r\n",
        "PROXY TCP4 10.1.2.3 127.0.0.1 5555\r\n",
        "PROXY TCP4 10.1.2.300 127.0.0.1 5555 3306\r\n",
        "PROXY TCP4 ::1 127.0.0.1 5555 3306\r\n",
        "PROXY TCP6 1.2.3.4 ::1 5555 3306\r\n",
        "PROXY TCP4 10.1.2.3 127.0.0.1 5555 99999\r\n",
        "PROXY TCP4 10.1.2.3 127.0.0.1 05 3306\r\n",
        "PROXY UDP4 10.1.2.3 127.0.0.1 5 3306\r\n",
        "PROXY TCP4 10.1.2.3 127.0.0.1 5 3306\rX",
        "PROXY TCP4 10.1.2.3  127.0.0.1 5 3306\r\n",
        "PROXY " + "x".repeat(120)
      ]
    ) {
      expect(Result.isFailure(PP.parse(text(bad))), bad).toBe(true)
    }
  })

  it("round-trips random addresses (fuzz)", () => {
    for (let i = 0; i < 500; i++) {
      const v6 = i % 2 === 1
      const src = { address: v6 ? randomV6() : randomV4(), port: randomInt(65536) }
      const dst = { address: v6 ? randomV6() : randomV4(), port: randomInt(65536) }
      for (const version of [1, 2] as const) {
        const bytes = ok(PP.build(version, src, dst))
        if (version === 1) expect(bytes.length).toBeLessThanOrEqual(PP.V1_MAX_LENGTH)
        const out = ok(PP.parse(concat(bytes, randomBytes(randomInt(20)))))
        if (out._tag !== "Done" || out.header._tag !== "Proxied") throw new Error("not done")
        expect(out.consumed).toBe(bytes.length)
        const n = ok(PP.normalizeEndpoints(src, dst))
        expect(out.header.family).toBe(n.family)
        expect(out.header.source).toEqual(n.source)
        expect(out.header.destination).toEqual(n.destination)
        // any split gives NeedMore on the prefix
        expect(ok(PP.parse(bytes.subarray(0, randomInt(bytes.length))))._tag).toBe("NeedMore")
      }
    }
  })

  it("never throws on random input (fuzz)", () => {
    const seeds = [text("PROXY TCP4 "), text("PROXY TCP6 "), PP.V2_SIGNATURE, new Uint8Array(0)]
    for (let i = 0; i < 5000; i++) {
      const seed = seeds[i % seeds.length]!
      const bytes = concat(seed, randomBytes(randomInt(200)))
      const r = PP.parse(bytes)
      if (Result.isSuccess(r) && r.success._tag === "Done") {
        expect(r.success.consumed).toBeLessThanOrEqual(bytes.length)
      }
      if (Result.isSuccess(r) && r.success._tag === "NeedMore" && seed !== PP.V2_SIGNATURE) {
        expect(bytes.length).toBeLessThan(PP.V1_MAX_LENGTH)
      }
    }
  })
})

describe("PROXY protocol v2", () => {
  it("builds the binary TCP4 header", () => {
    const b = ok(PP.buildV2({ address: "10.1.2.3", port: 5555 }, { address: "127.0.0.1", port: 3306 }))
    expect(Array.from(b.subarray(0, 12))).toEqual(Array.from(PP.V2_SIGNATURE))
    expect(Array.from(b.subarray(12))).toEqual([0x21, 0x11, 0, 12, 10, 1, 2, 3, 127, 0, 0, 1, 0x15, 0xb3, 0x0c, 0xea])
  })

  it("parses TCP6, LOCAL and skips TLVs", () => {
    const b = ok(PP.buildV2({ address: "2001:db8::1", port: 1 }, { address: "::1", port: 2 }))
    const withTlv = new Uint8Array(b.length + 5)
    withTlv.set(b)
    withTlv[15] = withTlv[15]! + 5
    withTlv.set([0x04, 0x00, 0x02, 0xaa, 0xbb], b.length)
    const out = ok(PP.parse(withTlv))
    expect(out).toEqual({
      _tag: "Done",
      consumed: withTlv.length,
      header: { _tag: "Proxied", version: 2, family: "TCP6", source: { address: "2001:db8::1", port: 1 }, destination: { address: "::1", port: 2 } }
    })
    const local = concat(PP.V2_SIGNATURE, Uint8Array.from([0x20, 0x00, 0, 0]))
    expect(ok(PP.parse(local))).toEqual({ _tag: "Done", consumed: 16, header: { _tag: "Unknown", version: 2 } })
  })

  it("rejects bad versions, commands and short blocks", () => {
    const bad = (tail: Array<number>) => Result.isFailure(PP.parse(concat(PP.V2_SIGNATURE, Uint8Array.from(tail))))
    expect(bad([0x11, 0x11, 0, 12, ...new Array(12).fill(0)])).toBe(true)
    expect(bad([0x22, 0x11, 0, 12, ...new Array(12).fill(0)])).toBe(true)
    expect(bad([0x21, 0x11, 0, 4, 1, 2, 3, 4])).toBe(true)
    expect(bad([0x21, 0x11, 0xff, 0xff])).toBe(true)
    expect(Result.isFailure(PP.parse(Uint8Array.from([0x0d, 0x0a, 0x0d, 0x0b])))).toBe(true)
  })
})
