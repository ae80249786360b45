// broker/leaf-der.ts behind readIdentity: malformed or tampered DER is always a refusal, never a throw or an identity.
import { createPrivateKey, sign, type KeyObject } from 'node:crypto'
import { readFileSync } from 'node:fs'
import path from 'node:path'
import * as x509 from '@peculiar/x509'
import { afterAll, beforeAll, expect, test } from 'vitest'
import { bitString, children, readTlv, seq } from '../ca/der.js'
import { readIdentity, trustAnchor, type IdentityResult, type TrustAnchor } from '../broker/identity.js'
import { describeName } from '../broker/leaf-der.js'
import { makeTestCa, TEST_PASSPHRASE, type TestCa } from './helpers/pki.js'

let ca: TestCa
let anchor: TrustAnchor
let issuingKey: KeyObject
let leaf: Uint8Array

beforeAll(async () => {
  ca = await makeTestCa()
  anchor = trustAnchor(readFileSync(path.join(ca.home, 'issuing.pem'), 'utf8'), 'aedes-zt.local')
  issuingKey = createPrivateKey({ key: readFileSync(path.join(ca.home, 'private', 'issuing.key'), 'utf8'), passphrase: TEST_PASSPHRASE })
  const dev = await ca.issueDevice('sensor-7', { groups: ['sensors'] })
  leaf = new Uint8Array(new x509.X509Certificate(dev.certPem).rawData)
})
afterAll(async () => { await ca?.cleanup() })

/** The leaf with its TBSCertificate replaced and signed again by our issuing CA, as a CA bug or stolen key would. */
function resigned (tbs: Uint8Array): Uint8Array {
  const [, alg] = children(readTlv(leaf).value)
  const hash = issuingKey.asymmetricKeyDetails?.namedCurve === 'secp384r1' ? 'sha384' : 'sha256'
  return seq(tbs, (alg as { raw: Uint8Array }).raw, bitString(sign(hash, tbs, issuingKey)))
}

function read (der: Uint8Array): IdentityResult {
  return readIdentity(der, anchor)
}

test('the untouched leaf reads, and its issuer is named for people', () => {
  expect(read(leaf)).toMatchObject({ ok: true, identity: { id: 'sensor-7', groups: ['sensors'] } })
  expect(describeName(anchor.issuerName)).toMatch(/^CN=/)
  expect(describeName(new Uint8Array([0x30, 0x05, 0x01]))).toMatch(/^\(unreadable name/)
})

test('every truncation and every flipped byte is refused without throwing', () => {
  for (let n = 0; n < leaf.length; n++) expect(read(leaf.subarray(0, n)).ok).toBe(false)
  for (let at = 0; at < leaf.length; at++) {
    const der = Uint8Array.from(leaf)
    der[at] = (der[at] as number) ^ 0x41
    expect(read(der).ok).toBe(false)
  }
})

test('re-signed TBS mutations never throw, and never yield another id', () => {
  const tbs = (children(readTlv(leaf).value)[0] as { raw: Uint8Array }).raw
  for (let at = 0; at < tbs.length; at++) {
    for (const delta of [1, 0x80]) {
      const t = Uint8Array.from(tbs)
      t[at] = ((t[at] as number) + delta) & 0xff
      const r = read(resigned(t))
      // Signed by our CA, some changes are legitimate (a group's letter, a validity second, the SKI); one byte can
      // never make CN and SAN URI agree on another id.
      if (r.ok) expect(r.identity).toMatchObject({ id: 'sensor-7', kind: 'device' })
    }
  }
})

test('trailing bytes after the certificate are refused', () => {
  const der = new Uint8Array(leaf.length + 1)
  der.set(leaf)
  expect(read(der)).toMatchObject({ ok: false, reason: 'unparsable-certificate' })
})
