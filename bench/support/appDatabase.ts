/** The benchmarks' application user on a plain mariadbd (over its socket, as root). */
import { Effect } from "effect"
import { APP_PASSWORD, APP_USER } from "../../test/support/dbCluster.js"
import type { MariaDbInstanceInfo } from "../../test/support/MariaDbInstance.js"

/** Creates `database` and the application user, with every privilege on that database. */
export const createAppDatabase = (db: MariaDbInstanceInfo, database: string) =>
  Effect.gen(function*() {
    yield* db.query(`CREATE DATABASE ${database}`)
    yield* db.query(`CREATE USER '${APP_USER}'@'%' IDENTIFIED BY '${APP_PASSWORD}'`)
    yield* db.query(`GRANT ALL ON ${database}.* TO '${APP_USER}'@'%'`)
  })
