// The packed revoked set: exact serial matches, records decoded to what they were, odd and malformed records.
import { randomBytes } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { RevokedSet } from '../broker/revoked-set.js'
import { REVOCATION_REASONS, type RevocationReason } from '../common/ids.js'
import { parsePackedRecord } from '../store/packed-record.js'
import type { Revocation } from '../store/types.js'

function serial128 (): string {
  const b = randomBytes(16)
  b[0] = 0x10 + ((b[0] as number) % 0x70)
  return b.toString('hex')
}

function rec (serial: string, overrides: Partial<Revocation> = {}): Revocation {
  return { serial, id: 'dev-1', reason: 'keyCompromise', revokedAt: '2025-03-04T05:06:07.089Z', notAfter: '2026-01-01T00:00:00.000Z', ...overrides }
}

function packed (r: Revocation): Buffer {
  return Buffer.from(`${r.serial} ${r.id} ${r.reason} ${r.revokedAt} ${r.notAfter}`, 'utf8')
}

// Records the packed form holds, and records it cannot hold exactly (kept aside as they came).
const shapes: Revocation[] = [
  rec(serial128()),
  rec('abc'), // odd number of digits
  rec('0'),
  rec('f'.repeat(255)),
  rec(serial128(), { id: '' }),
  rec(serial128(), { id: 'x'.repeat(64) }),
  rec(serial128(), { revokedAt: '1970-01-01T00:00:00.000Z', notAfter: '9999-12-31T23:59:59.999Z' }),
  rec(serial128(), { revokedAt: '2024-02-29T23:59:59.999Z' }),
  ...Object.keys(REVOCATION_REASONS).map((reason) => rec(serial128(), { reason: reason as RevocationReason })),
  // Not packable: each must still come back exactly.
  rec('ABCDEF'),
  rec('1'.repeat(256)),
  rec(serial128(), { revokedAt: '2025-01-01T00:00:00Z' }),
  rec(serial128(), { revokedAt: '2023-02-29T00:00:00.000Z' }),
  rec(serial128(), { notAfter: '1969-12-31T23:59:59.999Z' }),
  rec(serial128(), { notAfter: '+010000-01-01T00:00:00.000Z' }),
  rec(serial128(), { reason: 'madeUp' as RevocationReason }),
  rec(serial128(), { id: 'dév' }),
]

describe('revoked set', () => {
  it('gives back every record exactly, added as an object or as packed bytes', () => {
    const objects = new RevokedSet()
    const bytes = new RevokedSet()
    for (const r of shapes) {
      expect(objects.add(r)).toBe(true)
      bytes.addPacked(packed(r))
    }
    expect(objects.size).toBe(shapes.length)
    expect(bytes.size).toBe(shapes.length)
    for (const r of shapes) {
      expect(objects.has(r.serial)).toBe(true)
      expect(objects.get(r.serial)).toEqual(r)
      // What the store's parser made of the same record before the set existed.
      expect(bytes.get(r.serial)).toEqual(parsePackedRecord(packed(r).toString('utf8')))
    }
  })

  it('matches serials exactly: no case folding, padding, prefix or leading-zero matches', () => {
    const set = new RevokedSet()
    const s = serial128()
    for (const r of [rec(s), rec('abc'), rec('ABCDEF')]) set.add(r)
    for (const other of [s.toUpperCase(), `0${s}`, s.slice(0, -1), `${s}0`, '', 'abc0', 'ab', 'ABC', 'abcdef', 'abcdeF', 'abg', 'ab:c', ' abc']) {
      expect(set.has(other)).toBe(false)
      expect(set.get(other)).toBeUndefined()
    }
    expect(set.has(s) && set.has('abc') && set.has('ABCDEF')).toBe(true)
  })

  it('keeps the first record of a serial, packed or not', () => {
    const set = new RevokedSet()
    const s = serial128()
    expect(set.add(rec(s, { reason: 'superseded' }))).toBe(true)
    expect(set.add(rec(s, { reason: 'keyCompromise' }))).toBe(false)
    set.addPacked(packed(rec(s, { reason: 'unspecified' })))
    expect(set.add(rec(s, { reason: 'madeUp' as RevocationReason }))).toBe(false)
    const odd = serial128()
    expect(set.add(rec(odd, { revokedAt: 'yesterday' }))).toBe(true)
    expect(set.add(rec(odd))).toBe(false)
    set.addPacked(packed(rec(odd)))
    expect(set.size).toBe(2)
    expect(set.get(s)?.reason).toBe('superseded')
    expect(set.get(odd)?.revokedAt).toBe('yesterday')
  })

  it('answers again after a record arrives for a serial it was asked about', () => {
    const set = new RevokedSet()
    const [packedOne, oddOne] = [serial128(), serial128()]
    for (let i = 0; i < 3; i++) expect(set.has(packedOne) || set.has(oddOne)).toBe(false)
    set.addPacked(packed(rec(packedOne)))
    expect(set.has(packedOne)).toBe(true)
    expect(set.has(oddOne)).toBe(false)
    set.add(rec(oddOne, { revokedAt: 'yesterday' }))
    expect(set.has(oddOne)).toBe(true)
  })

  it('refuses a malformed packed record and keeps nothing of it', () => {
    const set = new RevokedSet()
    const s = serial128()
    for (const bad of [`${s} dev-1 keyCompromise 2025-01-01T00:00:00.000Z`, `${s} dev-1 keyCompromise 2025-01-01T00:00:00.000Z 2026-01-01T00:00:00.000Z extra`, '', s]) {
      expect(() => { set.addPacked(Buffer.from(bad)) }).toThrow(/malformed revocation record/)
    }
    expect(set.size).toBe(0)
    expect(set.has(s)).toBe(false)
  })

  it('holds many records across arena chunks and table growth', () => {
    const set = new RevokedSet()
    const all: Revocation[] = []
    for (let i = 0; i < 60_000; i++) {
      const r = rec(serial128(), { id: `dev-${i}`, revokedAt: new Date(1_700_000_000_000 + i * 1_001).toISOString() })
      all.push(r)
      set.addPacked(packed(r))
    }
    expect(set.size).toBe(all.length)
    for (let i = 0; i < all.length; i += 7) expect(set.get((all[i] as Revocation).serial)).toEqual(all[i])
    expect(all.every((r) => set.has(r.serial))).toBe(true)
    let strangers = 0
    for (let i = 0; i < 10_000; i++) if (set.has(serial128())) strangers++
    expect(strangers).toBe(0)
  })
})
