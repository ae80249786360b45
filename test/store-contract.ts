// The CertStore contract: every store implementation (files, Redis) runs this same suite.
import { randomBytes } from 'node:crypto'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { ZtError } from '../common/errors.js'
import type { CertStore, IssuedCert } from '../store/types.js'

export interface StoreUnderTest {
  store: CertStore
  cleanup (): Promise<void>
  /** Another instance over the same backing data (another process or broker node would hold one). */
  openSecond?: () => Promise<CertStore>
}

const DAY = 86_400_000

/** A canonical serial as the CA makes them: 32 hex digits, first byte 0x10..0x7f. */
export function testSerial (): string {
  const b = randomBytes(16)
  b[0] = 0x10 + ((b[0] ?? 0) % 0x70)
  return b.toString('hex')
}

export function testCert (over: Partial<IssuedCert> = {}): IssuedCert {
  const now = Date.now()
  return {
    serial: testSerial(),
    id: `dev-${randomBytes(3).toString('hex')}`,
    kind: 'device',
    groups: ['sensors'],
    notBefore: new Date(now - 60_000).toISOString(),
    notAfter: new Date(now + 90 * DAY).toISOString(),
    ...over,
  }
}

async function rejection (p: Promise<unknown>): Promise<ZtError> {
  try {
    await p
  } catch (err) {
    expect(err).toBeInstanceOf(ZtError)
    return err as ZtError
  }
  throw new Error('expected a rejection')
}

export function storeContract (name: string, makeStore: () => Promise<StoreUnderTest>): void {
  describe(`CertStore contract: ${name}`, () => {
    let t: StoreUnderTest
    let store: CertStore
    const extra: CertStore[] = []

    beforeEach(async () => {
      t = await makeStore()
      store = t.store
    })
    afterEach(async () => {
      for (const s of extra.splice(0)) await s.close()
      await t.cleanup()
    })

    it('records issued certificates in batches and finds them by serial', async () => {
      const a = testCert()
      const b = testCert({ kind: 'service', groups: [] })
      await store.recordIssued([a, b])
      expect(await store.getIssued(a.serial)).toEqual(a)
      expect(await store.getIssued(b.serial)).toEqual(b)
      expect(await store.getIssued(testSerial())).toBeNull()
      await store.recordIssued([])
    })

    it('refuses a serial already in the inventory or repeated in the batch, and then records nothing of the batch', async () => {
      const c = testCert()
      await store.recordIssued([c])
      const fresh = testCert()
      const err = await rejection(store.recordIssued([fresh, { ...c, id: 'other', kind: 'service', groups: [] }]))
      expect(err.code).toBe('ZT_BAD_ARGUMENT')
      expect(err.message).toBe(`record issued: serial ${c.serial} is already in the inventory`)
      expect(await store.getIssued(c.serial)).toEqual(c)
      expect(await store.getIssued(fresh.serial)).toBeNull()

      const twice = testCert()
      const repeated = await rejection(store.recordIssued([fresh, twice, { ...twice, id: 'other' }]))
      expect(repeated.code).toBe('ZT_BAD_ARGUMENT')
      expect(repeated.message).toBe(`record issued: serial ${twice.serial} is already in the inventory`)
      expect(await store.getIssued(fresh.serial)).toBeNull()
      expect(await store.getIssued(twice.serial)).toBeNull()
      expect((await store.list()).map((l) => l.serial)).toEqual([c.serial])
      // The refused batch left nothing behind that would refuse it again.
      await store.recordIssued([fresh, twice])
      expect(await store.getIssued(twice.serial)).toEqual(twice)
    })

    it('lists with computed status, filters, and orders by notBefore then serial', async () => {
      const now = Date.now()
      const early = testCert({ id: 'x', notBefore: new Date(now - 10 * DAY).toISOString() })
      const sameTimeA = testCert({ id: 'x', serial: '1' + 'a'.repeat(31), notBefore: new Date(now - 5 * DAY).toISOString() })
      const sameTimeB = testCert({ id: 'y', serial: '1' + 'b'.repeat(31), notBefore: sameTimeA.notBefore })
      const expired = testCert({ id: 'y', notBefore: new Date(now - 100 * DAY).toISOString(), notAfter: new Date(now - DAY).toISOString() })
      await store.recordIssued([sameTimeB, early, expired, sameTimeA])
      await store.revoke([early.serial], 'keyCompromise')

      const all = await store.list()
      expect(all.map((c) => c.serial)).toEqual([expired.serial, early.serial, sameTimeA.serial, sameTimeB.serial])
      expect(all.map((c) => c.status)).toEqual(['expired', 'revoked', 'active', 'active'])
      const revoked = all[1]
      expect(revoked?.reason).toBe('keyCompromise')
      expect(typeof revoked?.revokedAt).toBe('string')
      expect(all[2]).not.toHaveProperty('revokedAt')

      expect((await store.list({ id: 'x' })).map((c) => c.serial)).toEqual([early.serial, sameTimeA.serial])
      expect((await store.list({ status: 'active' })).map((c) => c.serial)).toEqual([sameTimeA.serial, sameTimeB.serial])
      expect((await store.list({ id: 'y', status: 'expired' })).map((c) => c.serial)).toEqual([expired.serial])
      // `now` decides expiry: far in the future everything unrevoked has expired.
      const later = await store.list({ status: 'expired' }, new Date(now + 1000 * DAY))
      expect(later.map((c) => c.serial).sort()).toEqual([expired.serial, sameTimeA.serial, sameTimeB.serial].sort())
    })

    it('revokes idempotently, keeping the first record', async () => {
      const c = testCert()
      await store.recordIssued([c])
      const at = new Date('2030-01-02T03:04:05.678Z')
      const [first] = await store.revoke([c.serial], 'keyCompromise', at)
      expect(first?.created).toBe(true)
      expect(first?.revocation).toEqual({ serial: c.serial, id: c.id, reason: 'keyCompromise', revokedAt: at.toISOString(), notAfter: c.notAfter })
      const [again] = await store.revoke([c.serial], 'superseded')
      expect(again?.created).toBe(false)
      expect(again?.revocation.reason).toBe('keyCompromise')
      expect(await store.getRevocation(c.serial)).toEqual(first?.revocation)
      const { revocations } = await store.loadRevocations()
      expect(revocations.filter((r) => r.serial === c.serial)).toHaveLength(1)
    })

    it('refuses an unknown serial and then revokes nothing at all', async () => {
      const known = testCert()
      await store.recordIssued([known])
      const unknown = testSerial()
      const err = await rejection(store.revoke([known.serial, unknown], 'unspecified'))
      expect(err.code).toBe('ZT_UNKNOWN_SERIAL')
      expect(err.message).toContain(unknown)
      expect(await store.getRevocation(known.serial)).toBeNull()
      expect((await store.loadRevocations()).revocations).toEqual([])
      expect(await store.getRevocation(unknown)).toBeNull()
    })

    it('revokes a batch in one step, in order, and the feed resumes from any cursor', async () => {
      const certs = [testCert(), testCert(), testCert(), testCert()]
      await store.recordIssued(certs)
      const start = await store.loadRevocations()
      expect(start.revocations).toEqual([])

      const results = await store.revoke(certs.slice(0, 3).map((c) => c.serial), 'cessationOfOperation')
      expect(results.map((r) => r.revocation.serial)).toEqual(certs.slice(0, 3).map((c) => c.serial))

      const feed = await store.readFeed(start.cursor, { blockMs: 0 })
      expect(feed.map((e) => e.revocation.serial)).toEqual(certs.slice(0, 3).map((c) => c.serial))
      expect(new Set(feed.map((e) => e.cursor)).size).toBe(3)

      // Resume after the first entry: exactly the rest.
      const rest = await store.readFeed(feed[0]?.cursor ?? '', { blockMs: 0 })
      expect(rest.map((e) => e.revocation.serial)).toEqual(certs.slice(1, 3).map((c) => c.serial))
      const limited = await store.readFeed(start.cursor, { blockMs: 0, count: 2 })
      expect(limited.map((e) => e.revocation.serial)).toEqual(certs.slice(0, 2).map((c) => c.serial))

      await store.revoke([certs[3]?.serial ?? ''], 'superseded')
      const next = await store.readFeed(feed[2]?.cursor ?? '', { blockMs: 0 })
      expect(next.map((e) => e.revocation.serial)).toEqual([certs[3]?.serial])

      const loaded = await store.loadRevocations()
      expect(loaded.revocations.map((r) => r.serial)).toEqual(certs.map((c) => c.serial))
      expect(await store.readFeed(loaded.cursor, { blockMs: 0 })).toEqual([])
    })

    it('readFeed resolves with [] within blockMs when nothing new arrives', async () => {
      const { cursor } = await store.loadRevocations()
      const started = Date.now()
      const entries = await store.readFeed(cursor, { blockMs: 300 })
      const elapsed = Date.now() - started
      expect(entries).toEqual([])
      expect(elapsed).toBeGreaterThanOrEqual(250)
      expect(elapsed).toBeLessThan(1500)
    })

    it('readFeed wakes as soon as a revocation lands, well before blockMs', async () => {
      const c = testCert()
      await store.recordIssued([c])
      const { cursor } = await store.loadRevocations()
      const started = Date.now()
      const waiting = store.readFeed(cursor, { blockMs: 5000 })
      await new Promise((resolve) => setTimeout(resolve, 50))
      await store.revoke([c.serial], 'keyCompromise')
      const entries = await waiting
      expect(entries.map((e) => e.revocation.serial)).toEqual([c.serial])
      expect(Date.now() - started).toBeLessThan(1000)
    })

    it('hands out strictly increasing CRL numbers, also to concurrent callers', async () => {
      const first = await store.nextCrlNumber()
      const many = await Promise.all(Array.from({ length: 20 }, async () => await store.nextCrlNumber()))
      const sorted = [...many].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))
      expect(new Set(many.map(String)).size).toBe(20)
      expect((sorted[0] ?? 0n) > first).toBe(true)
      expect(await store.nextCrlNumber()).toBeGreaterThan(sorted[19] ?? 0n)
    })

    it('keeps the latest CRL and ignores one whose number is not higher', async () => {
      expect(await store.loadCrl()).toBeNull()
      await store.saveCrl({ der: new Uint8Array([1, 2, 3]), number: 5n })
      expect(await store.loadCrl()).toEqual({ der: new Uint8Array([1, 2, 3]), number: 5n })
      await store.saveCrl({ der: new Uint8Array([9]), number: 3n })
      await store.saveCrl({ der: new Uint8Array([8]), number: 5n })
      expect((await store.loadCrl())?.number).toBe(5n)
      expect(Array.from((await store.loadCrl())?.der ?? [])).toEqual([1, 2, 3])
      await store.saveCrl({ der: new Uint8Array([7, 7]), number: 6n })
      expect(await store.loadCrl()).toEqual({ der: new Uint8Array([7, 7]), number: 6n })
    })

    it('shares inventory, revocations, feed and CRL numbers between instances', async (ctx) => {
      if (t.openSecond === undefined) { ctx.skip(); return }
      const other = await t.openSecond()
      extra.push(other)
      const c = testCert()
      const { cursor } = await other.loadRevocations()
      const waiting = other.readFeed(cursor, { blockMs: 5000 })
      await store.recordIssued([c])
      expect(await other.getIssued(c.serial)).toEqual(c)
      await store.revoke([c.serial], 'keyCompromise')
      expect((await waiting).map((e) => e.revocation.serial)).toEqual([c.serial])
      expect((await other.getRevocation(c.serial))?.reason).toBe('keyCompromise')
      const n1 = await store.nextCrlNumber()
      const n2 = await other.nextCrlNumber()
      expect(n2 > n1).toBe(true)
      await other.saveCrl({ der: new Uint8Array([4]), number: 10n })
      expect((await store.loadCrl())?.number).toBe(10n)
    })

    it('a writer sees what another instance wrote before it', async (ctx) => {
      if (t.openSecond === undefined) { ctx.skip(); return }
      const other = await t.openSecond()
      extra.push(other)
      // Both instances have read everything once; then only `other` learns of c through its own write.
      await Promise.all([store.list(), other.list()])
      const c = testCert()
      await other.recordIssued([c])
      const [revoked] = await store.revoke([c.serial], 'superseded')
      expect(revoked?.created).toBe(true)
      const [again] = await other.revoke([c.serial], 'keyCompromise')
      expect(again?.created).toBe(false)
      expect(again?.revocation.reason).toBe('superseded')
      expect((await other.loadRevocations()).revocations.map((r) => r.serial)).toEqual([c.serial])
    })

    it('reports backend and closes', async () => {
      expect(['file', 'redis']).toContain(store.backend)
    })
  })
}
