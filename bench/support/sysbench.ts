/** Running sysbench (an OS package, see scripts/setup.sh) from the benchmarks. */
import { Data, Effect } from "effect"
import { execFile } from "node:child_process"

export class BenchError extends Data.TaggedError("BenchError")<{ readonly message: string }> {}

/** Runs a program to completion: its stdout, or a BenchError with its stderr. */
export const run = (cmd: string, args: ReadonlyArray<string>) =>
  Effect.callback<string, BenchError>((resume) => {
    execFile(cmd, [...args], { maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) =>
      resume(error === null ? Effect.succeed(stdout) : Effect.fail(new BenchError({
        // sysbench reports its errors on stdout
        message: `${cmd} failed: ${error.message}\n${stderr}${stdout.split("\n").slice(-15).join("\n")}`
      }))))
  })

/** One sysbench command (`extra` ends with prepare or run) against 127.0.0.1:port, 4 tables x 10,000 rows. */
export const sysbench = (options: {
  readonly test: string
  readonly port: number
  readonly user: string
  readonly password: string
  readonly threads: number
  readonly extra: ReadonlyArray<string>
}) =>
  run("sysbench", [
    options.test,
    "--db-driver=mysql",
    "--mysql-host=127.0.0.1",
    `--mysql-port=${options.port}`,
    `--mysql-user=${options.user}`,
    `--mysql-password=${options.password}`,
    "--mysql-db=sbtest",
    "--mysql-ssl=off",
    "--tables=4",
    "--table-size=10000",
    `--threads=${options.threads}`,
    ...options.extra
  ])
