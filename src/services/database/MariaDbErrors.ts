/**
 * The errors of MariaDbServer (re-exported there): a failed start, a failed query,
 * and an operation an attached server refuses.
 */
import { Data } from "effect"

export class MariaDbStartError extends Data.TaggedError("MariaDbStartError")<{
  readonly stage: "binaries" | "tempdir" | "config" | "permissions" | "install" | "port" | "spawn" | "exited" | "timeout"
  readonly message: string
  readonly dir?: string | undefined
  /** Last part of the error log (and install output for stage "install"). */
  readonly logTail?: string | undefined
  /** True when the server exited because its TCP port was taken: callers that picked the port may pick another. */
  readonly portInUse?: boolean | undefined
  readonly cause?: unknown
}> {}

export class MariaDbQueryError extends Data.TaggedError("MariaDbQueryError")<{
  readonly sql: string
  readonly message: string
  readonly code?: string | undefined
  readonly errno?: number | undefined
  readonly cause?: unknown
}> {}

/** kill/start/restart on a server the operator runs: not ours to touch. */
export class MariaDbNotManaged extends Data.TaggedError("MariaDbNotManaged")<{
  readonly operation: "kill" | "start" | "restart" | "reinstall" | "backup" | "restore"
}> {
  override get message() {
    return `cannot ${this.operation} an attached MariaDB server: it is managed by the operator`
  }
}
