import { describe, expect, it } from "@effect/vitest"
import { ClientCommandWatch, handshakeThreadId, holdsKill } from "../src/domain/mysql/killWatch.js"
import { buildHandshakeResponse41, buildHandshakeV10, CLIENT_CAPABILITIES } from "../src/domain/mysql/protocol.js"
import { encodePackets, utf8 } from "../src/domain/mysql/packet.js"
import { Rng } from "./support/sim.js"

const text = (s: string) => utf8(s)
const packet = (seq: number, payload: Uint8Array) => encodePackets(seq, payload).bytes
const query = (sql: string, command = 0x03) => packet(0, new Uint8Array([command, ...text(sql)]))
const login = (user: string) =>
  packet(1, buildHandshakeResponse41({ username: user, authResponse: new Uint8Array(20), authPluginName: "mysql_native_password" }))

describe("KILL in SQL text", () => {
  it("finds the keyword KILL outside literals, quoted identifiers and comments, in every sql_mode", () => {
    const kills = [
      "KILL 5", "kill query 5", "SELECT 1; KILL 5", "/*!KILL 5*/", "/*!50000KILL 5*/", "/*M!100100 KILL 5*/", "SELECT 1--1; KILL 5",
      "SELECT '\\' KILL 5 -- '", "SELECT \"a\\\" KILL 5 #\"", "CREATE PROCEDURE p() KILL 5", "KILL\n5", "x/**/KILL/**/5", "SELECT 'a''b' ; KILL 5"
    ]
    for (const s of kills) expect(holdsKill(text(s)), s).toBe(true)
    const clean = [
      "SELECT 'KILL 5'", "SELECT \"kill\"", "SELECT `kill` FROM t", "SELECT 1 -- KILL 5", "SELECT 1 # KILL 5", "SELECT /* KILL 5 */ 1",
      "SELECT killer, skill, KILLS, kill_id FROM t", "INSERT INTO t VALUES ('it''s KILL')", "SELECT 1KILL"
    ]
    for (const s of clean) expect(holdsKill(text(s)), s).toBe(false)
  })

  it("a large statement without the letters of KILL is ruled out at once; with them anywhere, the lexers decide", () => {
    const blob = "ab".repeat(1 << 20)
    expect(holdsKill(text(`INSERT INTO big (b) VALUES (X'${blob}')`))).toBe(false)
    // At the very start, across cases, after a long prefix, and as the last bytes.
    for (const s of [`kIlL 5`, `SELECT '${blob}'; KiLl 5`, `SELECT 1; /*!50000kILL 5*/`, `SELECT '${blob}';KILL`]) expect(holdsKill(text(s)), s.slice(-20)).toBe(true)
    for (const s of [`SELECT '${blob} kill'`, `SELECT skill FROM t WHERE x = '${blob}'`]) expect(holdsKill(text(s)), s.slice(-20)).toBe(false)
  })

  it("gives the same answer for a text in parts, however it is cut (a KILL may straddle reads)", () => {
    const rng = new Rng(11)
    const blob = "ab".repeat(1 << 13)
    const cases: ReadonlyArray<readonly [string, boolean]> = [
      ["KILL 5", true], ["SELECT 1; kIlL 5", true], [`SELECT '${blob}'; KILL 5`, true], [`SELECT '${blob}';KILL`, true],
      [`INSERT INTO big (b) VALUES (X'${blob}')`, false], [`SELECT skill FROM t WHERE x = '${blob}'`, false], ["SELECT 'KILL 5'", false]
    ]
    for (const [sql, expected] of cases) {
      const bytes = text(sql)
      for (let run = 0; run < 50; run++) {
        const parts: Array<Uint8Array> = []
        for (let at = 0; at < bytes.length;) {
          const n = rng.int(1, run % 2 === 0 ? 5 : 9_000)
          parts.push(bytes.subarray(at, at + n))
          at += n
        }
        expect(holdsKill(parts), `${sql.slice(-20)} in ${parts.length} parts`).toBe(expected)
      }
    }
  })
})

describe("ClientCommandWatch", () => {
  it("passes packets on whole, at any cut of the stream, and answers KILL instead of forwarding it", () => {
    const stream = [login("app"), query("SELECT 1"), query("KILL QUERY 42"), query("SELECT 'KILL'"), packet(0, new Uint8Array([0x0c, 7, 0, 0, 0])), query("SELECT 1; kill 9"), query("PREPARE s FROM 'KILL 1'")]
    const joined = new Uint8Array(stream.reduce((n, p) => n + p.length, 0))
    stream.reduce((at, p) => (joined.set(p, at), at + p.length), 0)
    const rng = new Rng(7)
    for (let run = 0; run < 200; run++) {
      const w = new ClientCommandWatch()
      const verdicts = []
      for (let at = 0; at < joined.length;) {
        const n = rng.int(1, 40)
        verdicts.push(...w.push(joined.subarray(at, at + n)))
        at += n
      }
      const tags = verdicts.map((v) => v._tag === "Kill" ? `Kill ${v.threadId}` : v._tag)
      expect(tags, `run ${run}`).toEqual(["Forward", "Forward", "Kill 42", "Forward", "Kill 7", "Refuse", "Forward"])
      expect(w.user).toBe("app")
      const forwarded = verdicts.flatMap((v) => (v._tag === "Forward" ? v.bytes.flatMap((b) => [...b]) : []))
      expect(forwarded).toEqual([...login("app"), ...query("SELECT 1"), ...query("SELECT 'KILL'"), ...query("PREPARE s FROM 'KILL 1'")])
    }
  })

  it("stops at a client's SSL request (the relay terminates that TLS) and reads the decrypted login and commands after it; reads the thread id from the server's greeting", () => {
    const w = new ClientCommandWatch()
    const sslRequest = new Uint8Array(32)
    new DataView(sslRequest.buffer).setUint32(0, CLIENT_CAPABILITIES | 0x800, true)
    const hello = new Uint8Array([0x16, 0x03, 0x01, 0x02, 0x00, ...text("KILL 5")])
    const [start, ...more] = w.push(new Uint8Array([...packet(1, sslRequest), ...hello]))
    expect(more).toEqual([])
    expect(start).toEqual({ _tag: "StartTls", bytes: packet(1, sslRequest), rest: hello })
    // The plaintext from inside the TLS session: the login (sequence 2), then commands, watched as ever.
    expect(w.push(packet(2, buildHandshakeResponse41({ username: "app", authResponse: new Uint8Array(20), authPluginName: "mysql_native_password" }))).map((v) => v._tag)).toEqual(["Forward"])
    expect(w.user).toBe("app")
    expect(w.push(query("KILL 5"))).toEqual([{ _tag: "Kill", threadId: 5, seq: 0 }])
    // A login-only watch (a relay to another member, which watches the commands) lets them through.
    const loginOnly = new ClientCommandWatch({ commands: false })
    expect(loginOnly.push(login("app")).map((v) => v._tag)).toEqual(["Forward"])
    expect(loginOnly.push(query("KILL 5")).map((v) => v._tag)).toEqual(["Forward"])
    // Where TLS is required: a plain login is answered with an error (after the login, sequence 2) and closed; after an SSL request it passes.
    const strict = new ClientCommandWatch({ commands: true, requireTls: true })
    const [refused] = strict.push(login("app"))
    expect(refused?._tag === "Close" ? refused.answer?.seq : refused).toBe(1)
    const secured = new ClientCommandWatch({ commands: true, requireTls: true })
    expect(secured.push(packet(1, sslRequest)).map((v) => v._tag)).toEqual(["StartTls"])
    expect(secured.push(packet(2, buildHandshakeResponse41({ username: "app", authResponse: new Uint8Array(20) }))).map((v) => v._tag)).toEqual(["Forward"])
    const greeting = packet(0, buildHandshakeV10({ serverVersion: "10.11.19-MariaDB", connectionId: 123456, authPluginData: new Uint8Array(20).fill(7) }))
    expect(handshakeThreadId(greeting)).toBe(123456)
  })
})
