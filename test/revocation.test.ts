// The revocation mirror against both real stores: load, follow, catch-up after a Redis outage, staleness, restarts.
import { randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { Redis } from 'ioredis'
import { afterEach, describe, expect, it } from 'vitest'
import { RevocationMirror, type MirrorState } from '../broker/revocation.js'
import { canonicalSerial } from '../common/ids.js'
import { openFileStore } from '../store/file.js'
import { openRedisStore, type RedisCertStore } from '../store/redis.js'
import type { CertStore, IssuedCert, Revocation } from '../store/types.js'
import { deletePrefix, eventually, REDIS_URL, TcpProxy, testPrefix } from './helpers/redis.js'

function cert (id: string): IssuedCert {
  return {
    serial: canonicalSerial(randomBytes(9).toString('hex')) as string,
    id,
    kind: 'device',
    groups: [],
    notBefore: '2025-01-01T00:00:00.000Z',
    notAfter: '2099-01-01T00:00:00.000Z',
  }
}

const cleanups: (() => Promise<unknown>)[] = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

function track (mirror: RevocationMirror): RevocationMirror {
  cleanups.push(async () => { await mirror.close() })
  return mirror
}

/** Records every 'revoked' and 'state' event of a mirror. */
function record (mirror: RevocationMirror): { revoked: Revocation[], latencies: number[], states: MirrorState[] } {
  const seen = { revoked: [] as Revocation[], latencies: [] as number[], states: [] as MirrorState[] }
  mirror.on('revoked', (r: Revocation, latencyMs: number) => { seen.revoked.push(r); seen.latencies.push(latencyMs) })
  mirror.on('state', (s: MirrorState) => { seen.states.push(s) })
  return seen
}

/** A backend: opens store instances that share one underlying store, as separate processes would. */
interface Backend {
  open (): Promise<CertStore>
}

const backends: { name: string, make: () => Promise<Backend> }[] = [
  {
    name: 'redis',
    make: async () => {
      const prefix = testPrefix()
      cleanups.push(async () => { await deletePrefix(prefix) })
      return {
        open: async () => {
          const s = await openRedisStore({ url: REDIS_URL, prefix })
          cleanups.push(async () => { await s.close() })
          return s
        },
      }
    },
  },
  {
    name: 'file',
    make: async () => {
      const dir = await mkdtemp(path.join(tmpdir(), 'azt-mirror-'))
      cleanups.push(async () => { await rm(dir, { recursive: true, force: true }) })
      return {
        open: async () => {
          const s = await openFileStore(dir)
          cleanups.push(async () => { await s.close() })
          return s
        },
      }
    },
  },
]

describe.each(backends)('revocation mirror on the $name store', ({ make }) => {
  it('loads every revocation on start, without announcing them as news', async () => {
    const backend = await make()
    const ca = await backend.open()
    const [a, b, c] = [cert('a'), cert('b'), cert('c')]
    await ca.recordIssued([a, b, c])
    await ca.revoke([a.serial, b.serial], 'keyCompromise')

    const mirror = track(new RevocationMirror(await backend.open(), { blockMs: 200 }))
    expect(mirror.state()).toMatchObject({ size: 0, current: false, connected: false, stalenessMs: Number.POSITIVE_INFINITY })
    const seen = record(mirror)
    await mirror.start()
    expect(mirror.isRevoked(a.serial)).toBe(true)
    expect(mirror.isRevoked(b.serial)).toBe(true)
    expect(mirror.isRevoked(c.serial)).toBe(false)
    expect(mirror.get(a.serial)).toMatchObject({ serial: a.serial, id: 'a', reason: 'keyCompromise' })
    // Every detail as the store keeps it (the mirror packs records and decodes them on demand).
    expect(mirror.get(a.serial)).toEqual(await ca.getRevocation(a.serial))
    expect(mirror.get(c.serial)).toBeUndefined()
    expect(mirror.state()).toMatchObject({ size: 2, current: true, connected: true })
    expect(seen.revoked).toEqual([])
    expect(seen.states.at(-1)).toMatchObject({ current: true, connected: true })
  })

  it('follows revocations made through another store instance', async () => {
    const backend = await make()
    const ca = await backend.open()
    const [a, b1, b2] = [cert('a'), cert('b'), cert('b')]
    await ca.recordIssued([a, b1, b2])
    const mirror = track(new RevocationMirror(await backend.open(), { blockMs: 200 }))
    const seen = record(mirror)
    await mirror.start()

    await ca.revoke([a.serial], 'superseded')
    await eventually(() => mirror.isRevoked(a.serial), 10_000, 'the mirror to learn the revocation')
    // Revoking by id is a batch of that id's serials: every one is news.
    await ca.revoke([b1.serial, b2.serial], 'keyCompromise')
    await eventually(() => seen.revoked.length === 3, 10_000, 'both serials of id b')
    expect(seen.revoked.map((r) => r.serial)).toEqual([a.serial, b1.serial, b2.serial])
    expect(seen.latencies.every((ms) => Number.isFinite(ms))).toBe(true)
    // A repeat revoke is not news.
    await ca.revoke([a.serial], 'keyCompromise')
    await new Promise((resolve) => setTimeout(resolve, 300))
    expect(seen.revoked).toHaveLength(3)
    expect(mirror.get(a.serial)?.reason).toBe('superseded')
    expect(mirror.get(b2.serial)).toEqual(seen.revoked[2])
  })

  it('keeps revocations across a restart of the store and the mirror', async () => {
    const backend = await make()
    const ca = await backend.open()
    const a = cert('a')
    await ca.recordIssued([a])
    await ca.revoke([a.serial], 'keyCompromise')
    await ca.close()

    const mirror = track(new RevocationMirror(await backend.open()))
    await mirror.start()
    expect(mirror.isRevoked(a.serial)).toBe(true)
  })

  it('keeps following when a revoked listener throws', async () => {
    const backend = await make()
    const ca = await backend.open()
    const [a, b] = [cert('a'), cert('b')]
    await ca.recordIssued([a, b])
    const mirror = track(new RevocationMirror(await backend.open(), { blockMs: 200 }))
    mirror.on('revoked', () => { throw new Error('listener bug') })
    await mirror.start()
    await ca.revoke([a.serial], 'unspecified')
    await eventually(() => mirror.isRevoked(a.serial))
    await ca.revoke([b.serial], 'unspecified')
    await eventually(() => mirror.isRevoked(b.serial))
    expect(mirror.state().connected).toBe(true)
  })
})

describe('revocation mirror through a Redis outage', () => {
  async function setup (options: { maxStalenessMs?: number } = {}): Promise<{ ca: CertStore, proxy: TcpProxy, mirror: RevocationMirror }> {
    const prefix = testPrefix()
    cleanups.push(async () => { await deletePrefix(prefix) })
    const proxy = await TcpProxy.start()
    cleanups.push(async () => { await proxy.close() })
    const ca = await openRedisStore({ url: REDIS_URL, prefix })
    cleanups.push(async () => { await ca.close() })
    // The node's store reaches Redis only through the proxy, so the test can cut this node off alone.
    const nodeStore = await openRedisStore({ url: proxy.url, prefix, commandTimeoutMs: 1_000, connectTimeoutMs: 500 })
    cleanups.push(async () => { await nodeStore.close() })
    const mirror = track(new RevocationMirror(nodeStore, { blockMs: 100, ...options }))
    return { ca, proxy, mirror }
  }

  it('catches up on what it missed and announces it', async () => {
    const { ca, proxy, mirror } = await setup()
    const [a, b] = [cert('a'), cert('b')]
    await ca.recordIssued([a, b])
    const seen = record(mirror)
    await mirror.start()

    proxy.cut()
    await eventually(() => !mirror.state().connected, 10_000, 'the mirror to notice the cut')
    await ca.revoke([a.serial, b.serial], 'keyCompromise')
    // Its live state stays: the mirror is kept, only marked disconnected.
    await new Promise((resolve) => setTimeout(resolve, 300))
    expect(mirror.isRevoked(a.serial)).toBe(false)
    expect(mirror.state().connected).toBe(false)

    proxy.restore()
    await eventually(() => seen.revoked.length === 2, 15_000, 'the missed revocations')
    expect(seen.revoked.map((r) => r.serial)).toEqual([a.serial, b.serial])
    expect(mirror.isRevoked(a.serial) && mirror.isRevoked(b.serial)).toBe(true)
    expect(mirror.state().connected).toBe(true)
    expect(seen.states.some((s) => !s.connected)).toBe(true)
    expect(seen.states.at(-1)?.connected).toBe(true)
  })

  it('stops being current past maxStalenessMs and recovers when Redis is back', async () => {
    const { proxy, mirror } = await setup({ maxStalenessMs: 300 })
    const seen = record(mirror)
    await mirror.start()
    expect(mirror.state().current).toBe(true)

    proxy.cut()
    await eventually(() => !mirror.state().current, 10_000, 'current to turn false')
    await eventually(() => seen.states.some((s) => !s.current), 10_000, "a 'state' event with current false")
    expect(mirror.state().stalenessMs).toBeGreaterThan(300)

    proxy.restore()
    await eventually(() => mirror.state().current && mirror.state().connected, 15_000, 'current to turn true again')
    await eventually(() => seen.states.at(-1)?.current === true, 10_000, "a 'state' event with current true")
  })

  it('admits no one when the store holds a malformed record: the load fails rather than skip it', async () => {
    const { ca, mirror } = await setup()
    const a = cert('a')
    await ca.recordIssued([a])
    await ca.revoke([a.serial], 'keyCompromise')
    const raw = new Redis(REDIS_URL)
    cleanups.push(async () => { raw.disconnect() })
    await raw.xadd((ca as RedisCertStore).keys.revocations, '*', 'r', `${cert('b').serial} b keyCompromise`)
    await expect(mirror.start()).rejects.toMatchObject({ code: 'ZT_STORE_UNAVAILABLE', message: expect.stringMatching(/malformed revocation record/) })
    expect(mirror.state()).toMatchObject({ current: false, size: 0 })
  })

  it('stops confirming it is current when a malformed record arrives on the feed', async () => {
    const { ca, mirror } = await setup({ maxStalenessMs: 300 })
    const [a, b] = [cert('a'), cert('b')]
    await ca.recordIssued([a, b])
    await ca.revoke([a.serial], 'keyCompromise')
    await mirror.start()
    expect(mirror.state().current).toBe(true)
    const raw = new Redis(REDIS_URL)
    cleanups.push(async () => { raw.disconnect() })
    await raw.xadd((ca as RedisCertStore).keys.revocations, '*', 'x', 'not a record')
    await ca.revoke([b.serial], 'keyCompromise')
    await eventually(() => !mirror.state().current, 10_000, 'current to turn false')
    expect(mirror.isRevoked(a.serial)).toBe(true)
    expect(mirror.state().connected).toBe(false)
    await expect(ca.readFeed('0-0', { blockMs: 0 })).rejects.toThrow(/malformed feed entry .* expected one field 'r'/)
  })

  it('refuses to start while Redis is down, and can start once it is back', async () => {
    const prefix = testPrefix()
    cleanups.push(async () => { await deletePrefix(prefix) })
    const proxy = await TcpProxy.start()
    cleanups.push(async () => { await proxy.close() })
    proxy.cut()
    const nodeStore = await openRedisStore({ url: proxy.url, prefix, waitForConnection: false })
    cleanups.push(async () => { await nodeStore.close() })
    const mirror = track(new RevocationMirror(nodeStore))
    await expect(mirror.start()).rejects.toMatchObject({ code: 'ZT_STORE_UNAVAILABLE' })
    expect(mirror.state()).toMatchObject({ current: false, connected: false, size: 0 })

    proxy.restore()
    await eventually(async () => await mirror.start().then(() => true, () => false), 15_000, 'start to succeed')
    expect(mirror.state()).toMatchObject({ current: true, connected: true })
  })
})
