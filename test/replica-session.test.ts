import { describe, expect, it } from "@effect/vitest"
import { answerQuery, newReplicaSession, positionFromConnectState, type ReplicaSession } from "../src/domain/mysql/replicaSession.js"

describe("replica session (binlog server answers)", () => {
  it("answers a 10.11 replica's query sequence and records its settings", () => {
    const server = { serverId: 9001, nowSeconds: 1_700_000_000 }
    const sequence = [
      "SELECT UNIX_TIMESTAMP()",
      "SHOW VARIABLES LIKE 'SERVER_ID'",
      "SET @master_heartbeat_period= 1000000000",
      "SET @master_binlog_checksum= @@global.binlog_checksum",
      "SELECT @master_binlog_checksum",
      "SET @mariadb_slave_capability=4",
      "SELECT @@GLOBAL.gtid_domain_id",
      "SET @slave_connect_state='0-1-42'",
      "SET @slave_gtid_strict_mode=1",
      "SET @slave_gtid_ignore_duplicates=0",
      "SHOW VARIABLES LIKE 'rpl_semi_sync_master_enabled'",
      "SET @rpl_semi_sync_slave= 1"
    ]
    let session: ReplicaSession = newReplicaSession
    const answers = sequence.map((q) => {
      const [a, next] = answerQuery(q, session, server)
      session = next
      return a
    })
    expect(answers.map((a) => a._tag)).toEqual([
      "ResultSet", "ResultSet", "Ok", "Ok", "ResultSet", "Ok", "ResultSet", "Ok", "Ok", "Ok", "ResultSet", "Ok"
    ])
    expect(answers[0]).toMatchObject({ rows: [["1700000000"]] })
    expect(answers[1]).toMatchObject({ rows: [["server_id", "9001"]] })
    expect(answers[4]).toMatchObject({ rows: [["CRC32"]] })
    expect(answers[6]).toMatchObject({ rows: [["0"]] })
    expect(answers[10]).toMatchObject({ rows: [] })
    expect(session).toEqual({ connectState: "0-1-42", heartbeatPeriodNs: 1e9, checksum: "CRC32", capability: 4, semiSync: true })
    expect(answerQuery("DROP TABLE x", session, server)[0]).toMatchObject({ _tag: "Error", code: 1064 })
  })

  it("reads the replica's position from its connect state", () => {
    expect(positionFromConnectState(undefined)).toBeNull()
    expect(positionFromConnectState("")).toBeNull()
    expect(positionFromConnectState("0-3-17")).toEqual({ domain: 0, server: 3, seq: 17 })
    expect(positionFromConnectState("0-3-x")).toHaveProperty("error")
    expect(positionFromConnectState("0-3-17,1-2-5")).toHaveProperty("error")
  })
})
