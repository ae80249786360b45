// What the Redis store promises beyond the shared contract: key layout, atomic feed writes, fail-fast, CRL compare-and-set.
import { randomBytes } from 'node:crypto'
import { Redis } from 'ioredis'
import { afterEach, describe, expect, it } from 'vitest'
import { isZtError } from '../common/errors.js'
import { canonicalSerial } from '../common/ids.js'
import { escapePart, redisKeys } from '../store/redis-keys.js'
import { openRedisStore, type RedisCertStore } from '../store/redis.js'
import { parsePackedRecord } from '../store/packed-record.js'
import type { IssuedCert, Revocation } from '../store/types.js'
import { deletePrefix, REDIS_URL, startRedisServer, TcpProxy, testPrefix } from './helpers/redis.js'

function cert (id: string, overrides: Partial<IssuedCert> = {}): IssuedCert {
  return {
    serial: canonicalSerial(randomBytes(9).toString('hex')) as string,
    id,
    kind: 'device',
    groups: ['sensors'],
    notBefore: '2025-01-01T00:00:00.000Z',
    notAfter: '2099-01-01T00:00:00.000Z',
    ...overrides,
  }
}

const cleanups: (() => Promise<unknown>)[] = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

async function store (prefix = testPrefix(), url = REDIS_URL): Promise<RedisCertStore> {
  const s = await openRedisStore({ url, prefix, commandTimeoutMs: 1_000 })
  cleanups.push(async () => { await s.close(); await deletePrefix(prefix) })
  return s
}

async function raw (): Promise<Redis> {
  const r = new Redis(REDIS_URL)
  cleanups.push(async () => { r.disconnect() })
  return r
}

describe('redis keys', () => {
  it('escapes parts so no id or serial can forge another key', () => {
    expect(escapePart('dev-1_a.b')).toBe('dev-1_a.b')
    expect(escapePart('a:b')).toBe('a%3Ab')
    expect(escapePart('a%3Ab')).toBe('a%253Ab')
    expect(escapePart('{tag}*')).toBe('%7Btag%7D%2A')
    const k = redisKeys('p:')
    expect(k.cert('ab')).toBe('p:cert:ab')
    expect(k.id('x:y')).not.toBe(k.id('x%3Ay'))
    expect(redisKeys().revocations).toBe('azt:revocations')
  })

  it('refuses prefixes with hash tags or glob characters', () => {
    for (const bad of ['a{b}:', 'a*', 'a b', 'x?', '[x]']) {
      expect(() => redisKeys(bad)).toThrow(/key prefix/)
    }
  })
})

describe('redis store', () => {
  it('lays its data out under the prefix as documented', async () => {
    const prefix = testPrefix()
    const s = await store(prefix)
    const c = cert('dev1')
    await s.recordIssued([c])
    await s.revoke([c.serial], 'keyCompromise')
    await s.nextCrlNumber()
    await s.saveCrl({ der: new Uint8Array([1, 2, 3]), number: 1n })
    const r = await raw()
    const k = redisKeys(prefix)
    expect(await r.type(k.cert(c.serial))).toBe('hash')
    expect(await r.type(k.certs)).toBe('zset')
    expect(await r.type(k.id('dev1'))).toBe('set')
    expect(await r.type(k.revoked)).toBe('hash')
    expect(await r.type(k.revocations)).toBe('stream')
    expect(await r.type(k.crlNumber)).toBe('string')
    expect(await r.type(k.crl)).toBe('hash')
    const [, keys] = await r.scan('0', 'MATCH', `${prefix}*`, 'COUNT', 1000)
    expect(keys.every((key) => key.startsWith(prefix))).toBe(true)
  })

  it('writes the record and one feed entry per new revocation, none for a repeat', async () => {
    const prefix = testPrefix()
    const s = await store(prefix)
    const [a, b] = [cert('a'), cert('b')]
    await s.recordIssued([a, b])
    const first = await s.revoke([a.serial], 'superseded', new Date('2025-06-01T00:00:00.123Z'))
    expect(first).toEqual([{ created: true, revocation: { serial: a.serial, id: 'a', reason: 'superseded', revokedAt: '2025-06-01T00:00:00.123Z', notAfter: a.notAfter } }])
    const again = await s.revoke([a.serial, b.serial], 'keyCompromise')
    expect(again[0]).toEqual({ created: false, revocation: first[0]?.revocation })
    expect(again[1]?.created).toBe(true)
    const r = await raw()
    expect(await r.xlen(redisKeys(prefix).revocations)).toBe(2)
  })

  it('refuses a batch with one unknown serial and revokes nothing of it', async () => {
    const prefix = testPrefix()
    const s = await store(prefix)
    const a = cert('a')
    await s.recordIssued([a])
    await expect(s.revoke([a.serial, 'abcdef0123'], 'unspecified')).rejects.toMatchObject({ code: 'ZT_UNKNOWN_SERIAL' })
    expect(await s.getRevocation(a.serial)).toBeNull()
    const r = await raw()
    expect(await r.exists(redisKeys(prefix).revocations)).toBe(0)
  })

  it('reads the feed on its own connection, blocking until news arrives', async () => {
    const s = await store()
    const writer = await store((s.keys.prefix))
    const c = cert('blocker')
    await s.recordIssued([c])
    const { cursor } = await s.loadRevocations()
    expect(cursor).toBe('0-0')
    expect(await s.readFeed(cursor, { blockMs: 50 })).toEqual([])
    const pending = s.readFeed(cursor, { blockMs: 10_000 })
    // The command connection stays free while the feed read blocks.
    expect(await s.getIssued(c.serial)).toEqual(c)
    await writer.revoke([c.serial], 'keyCompromise')
    const entries = await pending
    expect(entries.map((e) => e.revocation.serial)).toEqual([c.serial])
    expect(await s.readFeed(entries[0]?.cursor ?? '', { blockMs: 0 })).toEqual([])
  })

  it('loads many revocations in feed order across pages', async () => {
    const s = await store()
    const certs = Array.from({ length: 25_000 }, (_, i) => cert(`d${i % 100}`))
    for (let i = 0; i < certs.length; i += 5_000) await s.recordIssued(certs.slice(i, i + 5_000))
    for (let i = 0; i < certs.length; i += 5_000) await s.revoke(certs.slice(i, i + 5_000).map((c) => c.serial), 'cessationOfOperation')
    const { revocations, cursor } = await s.loadRevocations()
    expect(revocations.map((r) => r.serial)).toEqual(certs.map((c) => c.serial))
    expect(await s.readFeed(cursor, { blockMs: 0 })).toEqual([])
    expect((await s.list({ id: 'd7' })).length).toBe(250)
    expect((await s.list({ status: 'revoked' })).length).toBe(25_000)
    // The packed path a mirror loads from hands over the same records, in the same order, up to the same cursor.
    const packed: Revocation[] = []
    const into = await s.loadRevocationsInto({ addPacked: (record) => { packed.push(parsePackedRecord(Buffer.from(record).toString('latin1'))) } })
    expect(into).toEqual({ count: 25_000, cursor })
    expect(packed).toEqual(revocations)
  })

  it('fails a load on a malformed feed entry instead of skipping it', async () => {
    const s = await store()
    const r = await raw()
    const a = cert('a')
    await s.recordIssued([a])
    await s.revoke([a.serial], 'keyCompromise')
    await r.xadd(s.keys.revocations, '*', 'x', `${a.serial} a keyCompromise 2025-01-01T00:00:00.000Z 2099-01-01T00:00:00.000Z`)
    const sink = { addPacked: () => {} }
    await expect(s.loadRevocations()).rejects.toMatchObject({ code: 'ZT_STORE_UNAVAILABLE', message: expect.stringMatching(/malformed feed entry .* expected one field 'r'/) })
    await expect(s.loadRevocationsInto(sink)).rejects.toMatchObject({ code: 'ZT_STORE_UNAVAILABLE' })
    await r.del(s.keys.revocations)
    await r.xadd(s.keys.revocations, '*', 'r', `${a.serial} a keyCompromise`)
    await expect(s.loadRevocations()).rejects.toMatchObject({ code: 'ZT_STORE_UNAVAILABLE', message: expect.stringMatching(/malformed revocation record/) })
  })

  it('keeps only a higher CRL number, beyond 2^53 too', async () => {
    const s = await store()
    const big = 2n ** 70n
    await s.saveCrl({ der: new Uint8Array([1]), number: big })
    await s.saveCrl({ der: new Uint8Array([2]), number: 9n })
    await s.saveCrl({ der: new Uint8Array([3]), number: big })
    expect(await s.loadCrl()).toEqual({ der: new Uint8Array([1]), number: big })
    await s.saveCrl({ der: new Uint8Array([0, 255, 4]), number: big + 1n })
    expect(await s.loadCrl()).toEqual({ der: new Uint8Array([0, 255, 4]), number: big + 1n })
  })

  it('fails fast with ZT_STORE_UNAVAILABLE when Redis cannot be reached', async () => {
    const proxy = await TcpProxy.start()
    cleanups.push(async () => { await proxy.close() })
    proxy.cut()
    const started = Date.now()
    const err = await openRedisStore({ url: proxy.url, prefix: testPrefix(), connectTimeoutMs: 500 }).catch((e: unknown) => e)
    expect(isZtError(err) && err.code).toBe('ZT_STORE_UNAVAILABLE')
    expect(Date.now() - started).toBeLessThan(10_000)

    proxy.restore()
    const prefix = testPrefix()
    const s = await store(prefix, proxy.url)
    const c = cert('x')
    await s.recordIssued([c])
    proxy.cut()
    await expect(s.revoke([c.serial], 'keyCompromise')).rejects.toMatchObject({ code: 'ZT_STORE_UNAVAILABLE' })
    await expect(s.readFeed('0-0', { blockMs: 200 })).rejects.toMatchObject({ code: 'ZT_STORE_UNAVAILABLE' })
    proxy.restore()
    // It reconnects on its own.
    let revoked = false
    for (let i = 0; i < 100 && !revoked; i++) {
      revoked = await s.revoke([c.serial], 'keyCompromise').then(() => true, () => false)
      if (!revoked) await new Promise((resolve) => setTimeout(resolve, 50))
    }
    expect(revoked).toBe(true)
  })

  it('returns at once with waitForConnection false and works once Redis answers', async () => {
    const proxy = await TcpProxy.start()
    cleanups.push(async () => { await proxy.close() })
    proxy.cut()
    const prefix = testPrefix()
    const s = await openRedisStore({ url: proxy.url, prefix, waitForConnection: false })
    cleanups.push(async () => { await s.close(); await deletePrefix(prefix) })
    await expect(s.loadRevocations()).rejects.toMatchObject({ code: 'ZT_STORE_UNAVAILABLE' })
    proxy.restore()
    let loaded = false
    for (let i = 0; i < 100 && !loaded; i++) {
      loaded = await s.loadRevocations().then(() => true, () => false)
      if (!loaded) await new Promise((resolve) => setTimeout(resolve, 50))
    }
    expect(loaded).toBe(true)
  })

  it('rejects calls after close', async () => {
    const s = await store()
    await s.close()
    await expect(s.getIssued('ab')).rejects.toMatchObject({ code: 'ZT_STORE_UNAVAILABLE' })
  })
})

describe('redis store durability', () => {
  it('keeps an acknowledged revocation through a kill -9 and restart of Redis (AOF, appendfsync always)', async () => {
    const { mkdtemp, rm } = await import('node:fs/promises')
    const { tmpdir } = await import('node:os')
    const path = await import('node:path')
    const dir = await mkdtemp(path.join(tmpdir(), 'azt-redis-'))
    cleanups.push(async () => { await rm(dir, { recursive: true, force: true }) })
    let server = await startRedisServer(dir)
    cleanups.push(async () => { await server.stop() })
    const prefix = testPrefix()
    const s = await openRedisStore({ url: server.url, prefix })
    const c = cert('durable')
    await s.recordIssued([c])
    const [result] = await s.revoke([c.serial], 'keyCompromise')
    await server.stop('SIGKILL')
    await s.close()

    server = await startRedisServer(dir, { port: server.port })
    const again = await openRedisStore({ url: server.url, prefix })
    cleanups.push(async () => { await again.close() })
    expect(await again.getRevocation(c.serial)).toEqual(result?.revocation)
    expect((await again.loadRevocations()).revocations).toEqual([result?.revocation])
  })
})
