import { describe, expect, it } from "@effect/vitest"
import { routesFor, type RoutingView } from "../src/domain/cluster/routing.js"

const view = (self: number, master: number | null, readable: ReadonlyArray<number>, roFallbackToMaster = true): RoutingView => ({
  self,
  master,
  localMariaDb: { host: "127.0.0.1", port: 3306 },
  members: [1, 2, 3].map((nodeId) => ({
    nodeId,
    forwardRw: { host: `127.0.0.${10 + nodeId}`, port: 7200 },
    forwardRo: { host: `127.0.0.${10 + nodeId}`, port: 7300 }
  })),
  readable: new Set(readable),
  roFallbackToMaster
})

describe("routing policy", () => {
  it("sends RW to the master, locally or through its forward port", () => {
    expect(routesFor(view(1, 1, [1, 2, 3])).rw).toEqual({ kind: "local", host: "127.0.0.1", port: 3306 })
    expect(routesFor(view(2, 1, [1, 2, 3])).rw).toEqual({ kind: "forward", host: "127.0.0.11", port: 7200, nodeId: 1 })
    expect(routesFor(view(2, null, [1, 2, 3])).rw).toMatchObject({ kind: "none", reason: expect.stringContaining("no master") })
  })

  it("sends RO to this replica, else another replica, else the master if allowed", () => {
    expect(routesFor(view(2, 1, [1, 2, 3])).ro).toEqual({ kind: "local", host: "127.0.0.1", port: 3306 })
    expect(routesFor(view(1, 1, [1, 2, 3])).ro).toEqual({ kind: "forward", host: "127.0.0.12", port: 7300, nodeId: 2 })
    expect(routesFor(view(2, 1, [1, 3])).ro).toEqual({ kind: "forward", host: "127.0.0.13", port: 7300, nodeId: 3 })
    expect(routesFor(view(2, 1, [1])).ro).toEqual({ kind: "forward", host: "127.0.0.11", port: 7300, nodeId: 1 })
    expect(routesFor(view(1, 1, [1])).ro).toEqual({ kind: "local", host: "127.0.0.1", port: 3306 })
    expect(routesFor(view(2, 1, [1], false)).ro).toMatchObject({ kind: "none", reason: expect.stringContaining("no replica") })
  })
})
