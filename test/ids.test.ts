import { describe, expect, it } from 'vitest'
import { canonicalSerial, checkId, checkReason, parseSpiffeUri, spiffeUri } from '../common/ids.js'
import { ZtError } from '../common/errors.js'

describe('ids', () => {
  it('accepts the id alphabet up to 64 characters', () => {
    for (const id of ['a', 'sensor-001', 'A.b_c-9', '_x', 'x'.repeat(64)]) expect(checkId(id, 'test')).toBe(id)
  })

  it.each([
    ['', 'is empty'],
    ['a/b', "contains '/'"],
    ['a+b', "contains '+'"],
    ['a#', "contains '#'"],
    ['a b', 'contains a space'],
    ['a\0b', 'contains NUL'],
    ['.hidden', "starts with '.'"],
    ['-x', "starts with '-'"],
    ['x'.repeat(65), '65 characters'],
    ['é', "contains 'é'"],
  ])('refuses %j with a reason naming the problem', (id, why) => {
    let caught: unknown
    try { checkId(id, 'cert issue') } catch (err) { caught = err }
    expect(caught).toBeInstanceOf(ZtError)
    expect((caught as ZtError).code).toBe('ZT_BAD_ID')
    expect((caught as ZtError).message).toContain(why)
    expect((caught as ZtError).message).toMatch(/^cert issue: /)
  })

  it('round-trips SPIFFE URIs and refuses anything looser', () => {
    expect(parseSpiffeUri(spiffeUri('example.org', 'device', 'd1'))).toEqual({ trustDomain: 'example.org', kind: 'device', id: 'd1' })
    for (const bad of ['spiffe://example.org/device/d1/x', 'spiffe://example.org/robot/d1', 'spiffe://Example.org/device/d1',
      'spiffe://example.org/device/a+b', 'https://example.org/device/d1', 'spiffe://example.org/device/d1?x=1']) {
      expect(parseSpiffeUri(bad)).toBeNull()
    }
  })

  it('canonicalizes serials in any case, with or without colons', () => {
    expect(canonicalSerial('0A:bC:01')).toBe('abc01')
    expect(canonicalSerial('00ff')).toBe('ff')
    expect(canonicalSerial('xyz')).toBeNull()
  })

  it('accepts RFC 5280 reason names only', () => {
    expect(checkReason('keyCompromise', 'cert revoke')).toBe('keyCompromise')
    for (const bad of ['stolen', 'constructor', 'toString', '__proto__', 'certificateHold', 'removeFromCRL']) {
      expect(() => checkReason(bad, 'cert revoke')).toThrow(/not one of/)
    }
  })
})
