// Wills of a dead node on the real Redis: survivors sweeping at the same moment publish each will exactly once.
import { afterAll, afterEach, expect, test } from 'vitest'
import { redisBackends, type ClusterBackends } from '../broker/cluster.js'
import { deletePrefix, eventually, REDIS_URL, testPrefix } from './helpers/redis.js'

interface Will { clientId?: unknown, brokerId?: unknown, topic?: unknown }
interface WillPersistence {
  setup (broker: unknown): Promise<void>
  putWill (client: { id: string }, packet: Record<string, unknown>): Promise<void>
  streamWill (brokers: Record<string, number>): AsyncIterable<Will>
}

const prefixes: string[] = []
const opened: ClusterBackends[] = []

afterEach(async () => {
  for (const b of opened.splice(0)) await b.close()
})
afterAll(async () => {
  for (const p of prefixes) await deletePrefix(p)
})

/** A node's persistence set up under `brokerId`, with no Aedes around it (the will sweep is all that is exercised). */
async function node (keyPrefix: string, brokerId: string, willClaimTtlMs?: number): Promise<WillPersistence> {
  const b = redisBackends({ url: REDIS_URL, keyPrefix, ...(willClaimTtlMs === undefined ? {} : { willClaimTtlMs }) })
  opened.push(b)
  const p = b.persistence as WillPersistence
  const broker = { id: brokerId, subscribe: (_t: string, _f: unknown, cb: () => void) => { cb() }, unsubscribe: (_t: string, _f: unknown, cb: () => void) => { cb() } }
  await p.setup(broker)
  await eventually(() => b.ready(), 10_000, `${brokerId} ready`)
  return p
}

async function sweep (p: WillPersistence): Promise<Will[]> {
  const got: Will[] = []
  for await (const w of p.streamWill({})) got.push(w)
  return got
}

function prefix (): string {
  const p = testPrefix()
  prefixes.push(p)
  return p
}

test('two survivors sweeping at once: each of a dead node\'s wills goes to exactly one of them', async () => {
  const keyPrefix = prefix()
  const dead = await node(keyPrefix, 'dead-node')
  const ids = Array.from({ length: 30 }, (_, i) => `dev-${i}`)
  for (const id of ids) await dead.putWill({ id }, { cmd: 'publish', topic: `devices/${id}/will`, payload: Buffer.from('offline'), qos: 1, retain: false })
  const [a, b] = await Promise.all([node(keyPrefix, 'survivor-a'), node(keyPrefix, 'survivor-b')])
  const [fromA, fromB] = await Promise.all([sweep(a), sweep(b)])
  const all = [...fromA, ...fromB].map((w) => w.clientId)
  expect(all.sort()).toEqual([...ids].sort())
  expect(fromA.every((w) => w.brokerId === 'dead-node')).toBe(true)
  // The wills are still stored (nobody deleted them here), yet a later sweep of either node yields none again.
  expect(await sweep(a)).toEqual([])
  expect(await sweep(b)).toEqual([])
})

test('a new will of the same client under the same node id is claimed afresh, not silenced by the old claim', async () => {
  const keyPrefix = prefix()
  const dead = await node(keyPrefix, 'dead-node-2')
  const first = await node(keyPrefix, 'survivor-first')
  const second = await node(keyPrefix, 'survivor-second')
  await dead.putWill({ id: 'dev-x' }, { cmd: 'publish', topic: 'devices/dev-x/will', payload: Buffer.from('one'), qos: 0, retain: false })
  expect((await sweep(first)).map((w) => w.clientId)).toEqual(['dev-x'])
  expect(await sweep(second)).toEqual([])
  // The same client connects again to the same node id and stores another will while the first claim still holds.
  await dead.putWill({ id: 'dev-x' }, { cmd: 'publish', topic: 'devices/dev-x/will', payload: Buffer.from('two'), qos: 0, retain: false })
  expect((await sweep(second)).map((w) => w.clientId)).toEqual(['dev-x'])
  expect(await sweep(first)).toEqual([])
})

test('a claimer that dies before publishing: once its claim expires another survivor takes the will', async () => {
  const keyPrefix = prefix()
  const dead = await node(keyPrefix, 'dead-node-3')
  const claimer = await node(keyPrefix, 'survivor-dies', 200)
  const heir = await node(keyPrefix, 'survivor-heir')
  await dead.putWill({ id: 'dev-y' }, { cmd: 'publish', topic: 'devices/dev-y/will', payload: Buffer.from('bye'), qos: 0, retain: false })
  expect((await sweep(claimer)).map((w) => w.clientId)).toEqual(['dev-y'])
  expect(await sweep(heir)).toEqual([])
  await new Promise((resolve) => setTimeout(resolve, 400))
  expect((await sweep(heir)).map((w) => w.clientId)).toEqual(['dev-y'])
})

test('a willClaimTtlMs that is not a positive integer is refused', () => {
  expect(() => redisBackends({ url: REDIS_URL, willClaimTtlMs: 0 })).toThrow(/willClaimTtlMs 0 must be a positive integer/)
})
