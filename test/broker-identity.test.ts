// Unit tests for broker/identity.ts: every certificate defect maps to its refusal reason; the cache never hides time.
import { readFileSync } from 'node:fs'
import path from 'node:path'
import * as x509 from '@peculiar/x509'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { IdentityReader, readIdentity, trustAnchor, type TrustAnchor } from '../broker/identity.js'
import { forge, foreignIssuer, loadIssuer, type ForgeOptions, type Issuer } from './helpers/forge.js'
import { makeTestCa, TEST_PASSPHRASE, type TestCa } from './helpers/pki.js'

let ca: TestCa
let issuer: Issuer
let anchor: TrustAnchor

beforeAll(async () => {
  ca = await makeTestCa()
  issuer = await loadIssuer(ca.home, TEST_PASSPHRASE)
  anchor = trustAnchor(readFileSync(path.join(ca.home, 'issuing.pem'), 'utf8'), 'aedes-zt.local')
})
afterAll(async () => { await ca?.cleanup() })

function derOf (pem: string): Uint8Array {
  return new Uint8Array(new x509.X509Certificate(pem).rawData)
}

test('a certificate our CA issued yields its identity: id, kind, groups, canonical serial', async () => {
  const dev = await ca.issueDevice('sensor-7', { groups: ['sensors', 'floor-2'] })
  const r = readIdentity(derOf(dev.certPem), anchor)
  expect(r.ok).toBe(true)
  if (!r.ok) return
  expect(r.identity).toMatchObject({ id: 'sensor-7', kind: 'device', groups: ['sensors', 'floor-2'], serial: dev.serial, trustDomain: 'aedes-zt.local' })
})

test('a service certificate is accepted; an operator certificate is not (admin API only)', async () => {
  const svc = await ca.issueDevice('backend-1', { kind: 'service', groups: ['ingest'] })
  expect(readIdentity(derOf(svc.certPem), anchor)).toMatchObject({ ok: true, identity: { kind: 'service' } })
  const op = await ca.issueDevice('admin-1', { kind: 'operator' })
  expect(readIdentity(derOf(op.certPem), anchor)).toMatchObject({ ok: false, reason: 'kind-not-allowed' })
})

describe('refusals', () => {
  const cases: Array<[string, ForgeOptions, string]> = [
    ['CA:TRUE leaf', { ca: true }, 'ca-certificate'],
    ['no basicConstraints', { basicConstraints: false }, 'no-basic-constraints'],
    ['keyCertSign on a leaf', { keyUsage: x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyCertSign }, 'ca-certificate'],
    ['no digitalSignature', { keyUsage: x509.KeyUsageFlags.keyEncipherment }, 'no-digital-signature'],
    ['no EKU', { eku: null }, 'no-client-auth'],
    ['serverAuth only', { eku: [x509.ExtendedKeyUsage.serverAuth] }, 'no-client-auth'],
    ['RSA-1024', { key: 'rsa-1024' }, 'weak-key'],
    ['two CNs', { cns: ['a-1', 'a-1'] }, 'cn-count'],
    ['no CN', { cns: [] }, 'cn-count'],
    ['no SAN URI', { uris: [] }, 'san-uri-count'],
    ['two SAN URIs', { id: 'x-1', uris: ['spiffe://aedes-zt.local/device/x-1', 'spiffe://aedes-zt.local/device/x-2'] }, 'san-uri-count'],
    ['URI not SPIFFE', { uris: ['https://example.com/device/x'] }, 'bad-spiffe-uri'],
    ['URI id with a wildcard', { id: 'x-1', uris: ['spiffe://aedes-zt.local/device/x+1'] }, 'bad-spiffe-uri'],
    ['wrong trust domain', { trustDomain: 'evil.example' }, 'wrong-trust-domain'],
    ['CN and URI disagree', { id: 'victim-1', cns: ['attacker-1'] }, 'cn-uri-mismatch'],
    ['group outside the alphabet', { ous: ['sensors/#'] }, 'bad-group'],
  ]
  for (const [name, opts, reason] of cases) {
    test(`${name} → ${reason}`, async () => {
      const f = await forge(issuer, opts)
      const r = readIdentity(f.der, anchor)
      expect(r).toMatchObject({ ok: false, reason })
    })
  }

  test('EC P-384 and RSA-2048 keys are strong enough', async () => {
    expect(readIdentity((await forge(issuer, { key: 'ec-p384' })).der, anchor).ok).toBe(true)
    expect(readIdentity((await forge(issuer, { key: 'rsa-2048' })).der, anchor).ok).toBe(true)
  })

  test('a certificate from another CA, even one with our issuing CA\'s name, is foreign', async () => {
    const lookalike = await foreignIssuer(issuer.cert.subject)
    const r = readIdentity((await forge(lookalike)).der, anchor)
    expect(r).toMatchObject({ ok: false })
    expect(['foreign-issuer', 'bad-signature']).toContain((r as { reason: string }).reason)
    const other = await foreignIssuer('CN=Someone Else CA')
    expect(readIdentity((await forge(other)).der, anchor)).toMatchObject({ ok: false, reason: 'foreign-issuer' })
  })

  test('the root CA is not the issuer: a leaf must come from the issuing CA directly', () => {
    const root = readFileSync(path.join(ca.home, 'ca.pem'), 'utf8')
    const r = readIdentity(derOf(root), anchor)
    expect(r.ok).toBe(false)
  })

  test('garbage and empty input', () => {
    expect(readIdentity(new Uint8Array([0x30, 0x03, 0x02, 0x01, 0x01]), anchor)).toMatchObject({ ok: false, reason: 'unparsable-certificate' })
    expect(readIdentity(new Uint8Array(0), anchor)).toMatchObject({ ok: false, reason: 'no-certificate' })
  })
})

test('IdentityReader caches the parse but checks validity dates at every read', async () => {
  const f = await forge(issuer, { notAfter: new Date(Date.now() + 3_600_000) })
  const reader = new IdentityReader(anchor, 2)
  expect(reader.read(f.der).ok).toBe(true)
  expect(reader.size).toBe(1)
  expect(reader.read(f.der, new Date(Date.now() + 7_200_000))).toMatchObject({ ok: false, reason: 'expired' })
  expect(reader.read(f.der, new Date(Date.now() - 3_600_000))).toMatchObject({ ok: false, reason: 'not-yet-valid' })
  // Bounded: a third certificate evicts the least recently used one.
  await Promise.all([forge(issuer), forge(issuer)].map(async (p) => reader.read((await p).der)))
  expect(reader.size).toBe(2)
  expect(reader.read(undefined)).toMatchObject({ ok: false, reason: 'no-certificate' })
})

test('a signature our own TLS server verified is not checked again, and that answer never serves a read that needs the check', async () => {
  const f = await forge(issuer)
  const tampered = new Uint8Array(f.der)
  tampered[tampered.length - 1] = (tampered[tampered.length - 1] as number) ^ 0x01 // inside the signature value
  expect(readIdentity(tampered, anchor)).toMatchObject({ ok: false, reason: 'bad-signature' })
  const reader = new IdentityReader(anchor, 10)
  // Only OpenSSL, with a trust store of our two CAs, could have vouched for it: the name and key id checks still run.
  expect(reader.read(tampered, undefined, { chainVerifiedByOurTls: true }).ok).toBe(true)
  expect(reader.read(tampered)).toMatchObject({ ok: false, reason: 'bad-signature' })
  expect(reader.read(tampered, undefined, { chainVerifiedByOurTls: true })).toMatchObject({ ok: false, reason: 'bad-signature' })
  const other = await foreignIssuer('CN=Someone Else CA')
  expect(reader.read((await forge(other)).der, undefined, { chainVerifiedByOurTls: true })).toMatchObject({ ok: false, reason: 'foreign-issuer' })
})
