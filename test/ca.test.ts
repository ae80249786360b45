// The CA as a library: home layout and modes, passphrases, the certificate profiles, CSR checks, CRLs, bulk issuance.
import { execFileSync } from 'node:child_process'
import { createPublicKey, generateKeyPairSync, sign, webcrypto, X509Certificate } from 'node:crypto'
import { promises as fs } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import * as x509 from '@peculiar/x509'
import fc from 'fast-check'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { parseCsv } from '../ca/bulk.js'
import { bitString, integerFromBytes, oid, seq, tlv } from '../ca/der.js'
import { initHome, issueBulk, loadHome, openAuthority, parseManifest, verifyCsr, type Authority } from '../ca/index.js'
import { issuingFacts } from '../ca/leaf.js'
import { ZtError } from '../common/errors.js'
import { canonicalSerial } from '../common/ids.js'
import type { CertStore, IssuedCert } from '../store/types.js'
import { makeTestCa, TEST_PASSPHRASE, type TestCa } from './helpers/pki.js'

function openssl (args: string[], input?: string | Uint8Array): string {
  return execFileSync('openssl', args, { input, stdio: ['pipe', 'pipe', 'pipe'] }).toString()
}

/** A CSR made by `openssl req`, as an operator's device would make one. */
function opensslCsr (keyArgs: string[], outform: 'PEM' | 'DER' = 'PEM'): Buffer {
  return execFileSync('openssl', ['req', '-new', ...keyArgs, '-nodes', '-keyout', '/dev/null', '-subj', '/CN=x', '-outform', outform], { stdio: ['ignore', 'pipe', 'pipe'] })
}

async function caught (p: Promise<unknown> | (() => unknown)): Promise<ZtError> {
  try {
    await (typeof p === 'function' ? p() : p)
  } catch (err) {
    expect(err).toBeInstanceOf(ZtError)
    return err as ZtError
  }
  throw new Error('expected a ZtError')
}

const P256 = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256']

let tmp: string
beforeAll(async () => { tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'aedes-zt-catest-')) })
afterAll(async () => { await fs.rm(tmp, { recursive: true, force: true }) })

describe('home', () => {
  it('lays out the contract files with safe modes and loads back without a passphrase', async () => {
    const home = path.join(tmp, 'layout')
    const loaded = await initHome(home, { passphrase: TEST_PASSPHRASE, serverNames: ['broker.example', '192.0.2.7'] })
    const mode = async (f: string): Promise<number> => (await fs.stat(path.join(home, f))).mode & 0o777
    expect(await mode('private')).toBe(0o700)
    expect(await mode('private/root.key')).toBe(0o600)
    expect(await mode('private/issuing.key')).toBe(0o600)
    expect(await mode('server.key')).toBe(0o600)
    for (const f of ['ca.pem', 'ca-chain.pem', 'server.pem', 'issuing.pem', 'config.json']) expect(await mode(f)).toBe(0o644)
    await expect(fs.stat(path.join(home, 'private/passphrase'))).rejects.toThrow()
    expect(await fs.readFile(path.join(home, 'private/issuing.key'), 'utf8')).toMatch(/^-{5}BEGIN ENCRYPTED PRIVATE KEY-{5}\n/)
    expect((await fs.readdir(home)).filter((f) => f.endsWith('.tmp'))).toEqual([])

    const again = await loadHome(home)
    expect(again.config).toEqual({ name: 'aedes-zt', trustDomain: 'aedes-zt.local', keyType: 'ec-p256', dev: false, crlDays: 7 })
    expect(again.issuingDer).toEqual(loaded.issuingDer)
    // The chain file is issuing CA then root; server.pem is the server certificate then the issuing CA.
    expect(await fs.readFile(path.join(home, 'ca-chain.pem'), 'utf8')).toBe(loaded.issuingPem + loaded.rootPem)
    expect(loaded.serverCertPem.endsWith(loaded.issuingPem)).toBe(true)
    openssl(['verify', '-CAfile', path.join(home, 'ca.pem'), '-untrusted', path.join(home, 'issuing.pem'), '-purpose', 'sslserver', path.join(home, 'server.pem')])
    const server = openssl(['x509', '-noout', '-text', '-in', path.join(home, 'server.pem')])
    expect(server).toContain('TLS Web Server Authentication')
    expect(server).toContain('DNS:broker.example, IP Address:192.0.2.7')
  })

  it('makes CAs with the profile: root CA:TRUE, issuing pathlen 0, keyCertSign+cRLSign, SKI/AKI', async () => {
    const home = await loadHome(path.join(tmp, 'layout'))
    const root = new x509.X509Certificate(home.rootPem)
    const issuing = new x509.X509Certificate(home.issuingPem)
    expect(await root.isSelfSigned()).toBe(true)
    const bc = issuing.getExtension(x509.BasicConstraintsExtension)
    expect(bc?.ca).toBe(true)
    expect(bc?.pathLength).toBe(0)
    expect(bc?.critical).toBe(true)
    for (const c of [root, issuing]) {
      const ku = c.getExtension(x509.KeyUsagesExtension)
      expect(ku?.usages).toBe(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign)
      expect(c.getExtension(x509.SubjectKeyIdentifierExtension)).not.toBeNull()
    }
    expect(issuing.getExtension(x509.AuthorityKeyIdentifierExtension)?.keyId).toBe(root.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId)
    const years = (c: x509.X509Certificate): number => (c.notAfter.getTime() - c.notBefore.getTime()) / (365.25 * 86_400_000)
    expect(years(root)).toBeCloseTo(10, 0)
    expect(years(issuing)).toBeCloseTo(5, 0)
  })

  it('refuses an existing home, a missing passphrase, a short one, and loads nothing from a missing home', async () => {
    expect((await caught(initHome(path.join(tmp, 'layout'), { passphrase: TEST_PASSPHRASE }))).code).toBe('ZT_HOME_EXISTS')
    expect((await caught(initHome(path.join(tmp, 'nopass'), {}))).code).toBe('ZT_NO_PASSPHRASE')
    expect((await caught(initHome(path.join(tmp, 'short'), { passphrase: 'short' }))).code).toBe('ZT_BAD_PASSPHRASE')
    expect((await caught(initHome(path.join(tmp, 'badname'), { passphrase: TEST_PASSPHRASE, serverNames: ['bad name'] }))).code).toBe('ZT_BAD_ARGUMENT')
    await expect(fs.stat(path.join(tmp, 'nopass'))).rejects.toThrow()
    const missing = await caught(loadHome(path.join(tmp, 'missing')))
    expect(missing.code).toBe('ZT_NO_HOME')
    expect(missing.message).toContain('does not exist')
    // A directory without a CA (like a fresh checkout's certs-dev/ with its README) may become a home.
    const plain = path.join(tmp, 'plain')
    await fs.mkdir(plain)
    await fs.writeFile(path.join(plain, 'README.md'), 'hi')
    expect((await caught(loadHome(plain))).message).toContain('holds no CA')
  })

  it('opens with the right passphrase only; a dev home keeps its own', async () => {
    const home = path.join(tmp, 'layout')
    expect((await caught(openAuthority(home, { passphrase: 'wrong-passphrase' }))).code).toBe('ZT_BAD_PASSPHRASE')
    expect((await caught(openAuthority(home, { env: {} }))).code).toBe('ZT_NO_PASSPHRASE')
    const viaEnv = await openAuthority(home, { env: { AEDES_ZT_CA_PASSPHRASE: TEST_PASSPHRASE } })
    await viaEnv.close()

    const dev = path.join(tmp, 'dev')
    await initHome(dev, { dev: true })
    expect((await fs.stat(path.join(dev, 'private/passphrase'))).mode & 0o777).toBe(0o600)
    const a = await openAuthority(dev, { env: { AEDES_ZT_CA_PASSPHRASE: 'someone-elses-passphrase' } })
    const b = await a.issue({ id: 'dev-device', generateKey: true })
    expect(b.keyPem).toMatch(/BEGIN PRIVATE KEY/)
    await a.close()
  })
})

describe('issuance', () => {
  let ca: TestCa
  let issuing: x509.X509Certificate
  beforeAll(async () => {
    ca = await makeTestCa({ trustDomain: 'example.org' })
    issuing = new x509.X509Certificate(ca.authority.home.issuingPem)
  })
  afterAll(async () => { await ca.cleanup() })

  it('issues the leaf profile from an openssl CSR', async () => {
    const csr = opensslCsr(P256)
    const b = await ca.authority.issue({ id: 'sensor-1', kind: 'device', groups: ['sensors', 'floor-2'], csr })
    const cert = new x509.X509Certificate(b.certPem)
    expect(cert.subjectName.getField('CN')).toEqual(['sensor-1'])
    expect(cert.subjectName.getField('OU')).toEqual(['sensors', 'floor-2'])
    const san = cert.getExtension(x509.SubjectAlternativeNameExtension)
    expect(san?.names.items.map((n) => [n.type, n.value])).toEqual([['url', 'spiffe://example.org/device/sensor-1']])
    const bc = cert.getExtension(x509.BasicConstraintsExtension)
    expect([bc?.ca, bc?.critical]).toEqual([false, true])
    const ku = cert.getExtension(x509.KeyUsagesExtension)
    expect([ku?.usages, ku?.critical]).toEqual([x509.KeyUsageFlags.digitalSignature, true])
    expect(cert.getExtension(x509.ExtendedKeyUsageExtension)?.usages).toEqual([x509.ExtendedKeyUsage.clientAuth])
    expect(cert.getExtension(x509.AuthorityKeyIdentifierExtension)?.keyId).toBe(issuing.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId)
    expect(cert.getExtension(x509.SubjectKeyIdentifierExtension)).not.toBeNull()
    expect(await cert.verify({ publicKey: issuing.publicKey, signatureOnly: true })).toBe(true)
    // The key in the certificate is the CSR's.
    expect(Buffer.from(cert.publicKey.rawData)).toEqual(Buffer.from(new x509.Pkcs10CertificateRequest(csr.toString()).publicKey.rawData))
    expect(b.record).toEqual({ serial: cert.serialNumber, id: 'sensor-1', kind: 'device', groups: ['sensors', 'floor-2'], notBefore: cert.notBefore.toISOString(), notAfter: cert.notAfter.toISOString() })
    expect(await ca.authority.store.getIssued(b.record.serial)).toEqual(b.record)
    expect(b.bundlePem).toBe(b.certPem + ca.authority.home.issuingPem)
    const days = (cert.notAfter.getTime() - Date.now()) / 86_400_000
    expect(days).toBeGreaterThan(89.9)
    expect(days).toBeLessThan(90.1)
  })

  it('accepts EC P-384, RSA 2048 and DER CSRs, and generates keys of each type', async () => {
    for (const [args, form] of [[['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-384'], 'PEM'], [['-newkey', 'rsa:2048'], 'PEM'], [P256, 'DER']] as const) {
      const b = await ca.authority.issue({ id: 'any', csr: new Uint8Array(opensslCsr([...args], form)) })
      expect(b.record.serial).toMatch(/^[0-9a-f]{32}$/)
    }
    for (const keyType of ['ec-p384', 'rsa-2048'] as const) {
      const b = await ca.authority.issue({ id: 'gen', generateKey: true, keyType })
      const key = openssl(['pkey', '-noout', '-text'], b.keyPem)
      expect(key).toMatch(keyType === 'ec-p384' ? /P-384/ : /2048 bit/)
    }
  })

  it('reads the issuing CA SKI and notAfter from DER as @peculiar/x509 does, GeneralizedTime included', async () => {
    const facts = issuingFacts(ca.authority.home.issuingDer)
    expect(Buffer.from(facts.keyId).toString('hex')).toBe(issuing.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId)
    expect(facts.notAfter.toISOString()).toBe(issuing.notAfter.toISOString())
    const keys = await webcrypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, false, ['sign', 'verify'])
    const make = async (extensions: x509.Extension[]): Promise<Uint8Array> => new Uint8Array((await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: '01', name: 'CN=t', notBefore: new Date('2049-06-01T00:00:00Z'), notAfter: new Date('2061-02-03T04:05:06Z'), keys, signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' }, extensions,
    })).rawData)
    const late = issuingFacts(await make([await x509.SubjectKeyIdentifierExtension.create(keys.publicKey)]))
    expect(late.notAfter.toISOString()).toBe('2061-02-03T04:05:06.000Z')
    expect((await caught(async () => issuingFacts(await make([])))).code).toBe('ZT_BAD_CERT')
    expect((await caught(() => issuingFacts(new Uint8Array([0x30, 0x03, 0x02, 0x01, 0x01])))).code).toBe('ZT_BAD_CERT')
  })

  it('puts the CSR key in the certificate exactly as node:crypto encodes it (P-256, P-384, RSA)', () => {
    for (const args of [P256, ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-384'], ['-newkey', 'rsa:2048']]) {
      for (let i = 0; i < 3; i++) {
        const csr = new x509.Pkcs10CertificateRequest(opensslCsr(args).toString())
        const spki = Buffer.from(csr.publicKey.rawData)
        const expected = createPublicKey({ key: spki, format: 'der', type: 'spki' }).export({ type: 'spki', format: 'der' })
        expect(Buffer.from(verifyCsr(Buffer.from(csr.rawData), 'x').spki)).toEqual(expected)
      }
    }
  })

  it('takes a CSR key in a non-minimal DER encoding apart and re-encodes it, never copying its bytes', async () => {
    // The SPKI of a P-256 key with a long-form length (0x81 0x59 for 0x59): valid BER, not the DER the fast path matches.
    const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
    const spki = publicKey.export({ type: 'spki', format: 'der' })
    const bent = Buffer.concat([Buffer.from([0x30, 0x81, spki[1] as number]), spki.subarray(2)])
    const info = seq(integerFromBytes(new Uint8Array([0])), seq(), bent, tlv(0xa0))
    const csr = seq(info, seq(oid('1.2.840.10045.4.3.2')), bitString(sign('sha256', info, privateKey)))
    expect(Buffer.from(verifyCsr(csr, 'x').spki)).toEqual(spki)
    const b = await ca.authority.sign({ id: 'bent', csr })
    expect(Buffer.from(new X509Certificate(b.certPem).publicKey.export({ type: 'spki', format: 'der' }))).toEqual(spki)
  })

  it('writes leaves that openssl verifies against the chain, with long names, many groups and large keys', async () => {
    const dir = path.join(tmp, 'leaf-der')
    await fs.mkdir(dir, { recursive: true })
    const chain = path.join(dir, 'chain.pem')
    await fs.writeFile(chain, ca.authority.home.issuingPem)
    const cases = [
      // Short names and lengths under 128 bytes, then past 128 and 256 (long-form lengths), past the signer's
      // first scratch buffer (many groups), a 4096-bit RSA key, and small ones again in a buffer grown large.
      { id: 'a', groups: [], keyArgs: P256 },
      { id: 'x'.repeat(64), groups: ['g'.repeat(64), 'h'.repeat(64)], keyArgs: ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-384'] },
      { id: 'many', groups: Array.from({ length: 60 }, (_, i) => `group-${i}-${'z'.repeat(50)}`), keyArgs: P256 },
      { id: 'rsa', groups: ['r'], keyArgs: ['-newkey', 'rsa:4096'] },
      { id: 'b', groups: ['s'], keyArgs: P256 },
    ]
    for (const c of cases) {
      const csr = opensslCsr(c.keyArgs)
      const b = await ca.authority.issue({ id: c.id, kind: 'service', groups: c.groups, csr })
      const file = path.join(dir, `${c.id.slice(0, 8)}.pem`)
      await fs.writeFile(file, b.certPem)
      expect(openssl(['verify', '-CAfile', path.join(ca.home, 'ca.pem'), '-untrusted', chain, '-purpose', 'sslclient', file]).trim()).toBe(`${file}: OK`)
      const cert = new x509.X509Certificate(b.certPem)
      expect(cert.subjectName.getField('OU')).toEqual(c.groups)
      expect(cert.subjectName.getField('CN')).toEqual([c.id])
      expect(cert.getExtension(x509.SubjectAlternativeNameExtension)?.names.items.map((n) => n.value)).toEqual([`spiffe://example.org/service/${c.id}`])
      expect(cert.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId).toBe((await x509.SubjectKeyIdentifierExtension.create(cert.publicKey)).keyId)
      expect(Buffer.from(cert.publicKey.rawData)).toEqual(Buffer.from(new x509.Pkcs10CertificateRequest(csr.toString()).publicKey.rawData))
      expect(cert.serialNumber).toBe(b.record.serial)
      expect([cert.notBefore.toISOString(), cert.notAfter.toISOString()]).toEqual([b.record.notBefore, b.record.notAfter])
    }
  })

  it('gives each leaf its own validity when leaves of different lengths are signed in the same second', async () => {
    const csr = opensslCsrCached
    const [one, two, oneAgain] = [await ca.authority.sign({ id: 'v', days: 1, csr }), await ca.authority.sign({ id: 'v', days: 2, csr }), await ca.authority.sign({ id: 'v', days: 1, csr })]
    const notAfter = (b: { certPem: string }): number => new x509.X509Certificate(b.certPem).notAfter.getTime()
    for (const b of [one, two, oneAgain]) expect(new Date(notAfter(b)).toISOString()).toBe(b.record.notAfter)
    expect(notAfter(two) - notAfter(one)).toBeGreaterThanOrEqual(86_400_000)
    expect(notAfter(oneAgain) - notAfter(one)).toBeLessThan(86_400_000)
  })

  it('refuses weak keys, forged and unreadable CSRs, and bad ids, kinds, groups and days', async () => {
    const rsa1024 = await caught(() => verifyCsr(opensslCsr(['-newkey', 'rsa:1024']), 'cert issue'))
    expect([rsa1024.code, rsa1024.message]).toEqual(['ZT_WEAK_KEY', 'cert issue: RSA key of 1024 bits is too weak (at least 2048)'])
    expect((await caught(() => verifyCsr(opensslCsr(['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-521']), 'x'))).code).toBe('ZT_WEAK_KEY')
    expect((await caught(() => verifyCsr(opensslCsr(['-newkey', 'ed25519']), 'x'))).code).toBe('ZT_WEAK_KEY')

    const der = opensslCsr(P256, 'DER')
    const forged = Buffer.from(der)
    forged[forged.length - 5] = (forged[forged.length - 5] ?? 0) ^ 0x01
    const f = await caught(() => verifyCsr(forged, 'cert issue'))
    expect([f.code, f.message]).toEqual(['ZT_BAD_CSR', "cert issue: the CSR's signature does not verify with its own key (forged or corrupted)"])
    // A changed subject under the original signature is just as forged.
    const pem = opensslCsr(P256).toString()
    const body = Buffer.from(pem.replace(/-----[^-]+-----|\s/g, ''), 'base64')
    const at = body.indexOf(Buffer.from('x'))
    body[at] = 'y'.charCodeAt(0)
    expect((await caught(() => verifyCsr(body, 'x'))).code).toBe('ZT_BAD_CSR')
    for (const junk of ['', 'hello', '-----BEGIN CERTIFICATE REQUEST-----\n!!!\n-----END CERTIFICATE REQUEST-----', new Uint8Array([0x30, 0x82, 0xff])]) {
      expect((await caught(() => verifyCsr(junk, 'x'))).code).toBe('ZT_BAD_CSR')
    }

    const csr = opensslCsr(P256)
    for (const id of ['a/b', 'a+b', 'a#', 'a b', 'a\0b', '', '.x', 'x'.repeat(65)]) {
      const e = await caught(ca.authority.issue({ id, csr }))
      expect(e.code, id).toBe('ZT_BAD_ID')
      expect(e.message).toMatch(/^cert issue: id /)
    }
    expect((await caught(ca.authority.issue({ id: 'ok', kind: 'robot' as 'device', csr }))).code).toBe('ZT_BAD_KIND')
    expect((await caught(ca.authority.issue({ id: 'ok', groups: ['a/b'], csr }))).code).toBe('ZT_BAD_ID')
    expect((await caught(ca.authority.issue({ id: 'ok', days: 0, csr }))).code).toBe('ZT_BAD_ARGUMENT')
    expect((await caught(ca.authority.issue({ id: 'ok' }))).code).toBe('ZT_BAD_ARGUMENT')
    expect((await caught(ca.authority.issue({ id: 'ok', csr, generateKey: true }))).code).toBe('ZT_BAD_ARGUMENT')
  })

  it('caps validity at the issuing CA and makes 128-bit positive serials of 32 hex digits', async () => {
    const long = await ca.authority.issue({ id: 'long', days: 3650, generateKey: true })
    expect(long.record.notAfter).toBe(issuing.notAfter.toISOString())
    const serials = new Set<string>()
    await fc.assert(fc.asyncProperty(fc.constant(null), async () => {
      const b = await ca.authority.sign({ id: 'p', csr: opensslCsrCached })
      const s = b.record.serial
      expect(s).toMatch(/^[1-7][0-9a-f]{31}$/)
      expect(canonicalSerial(s)).toBe(s)
      expect(new x509.X509Certificate(b.certPem).serialNumber).toBe(s)
      serials.add(s)
    }), { numRuns: 300 })
    // More than one draw of the serials' random pool (256 serials each).
    expect(serials.size).toBe(300)
  })

  it('revokes by serial in any notation and by id, idempotently, and refuses unknown serials and ids', async () => {
    const a = await ca.issueDevice('rev-a')
    const b1 = await ca.issueDevice('rev-b')
    const b2 = await ca.issueDevice('rev-b')
    const colons = a.serial.toUpperCase().replace(/(..)(?=.)/g, '$1:')
    const [r] = await ca.authority.revoke({ serial: colons }, 'keyCompromise')
    expect([r?.revocation.serial, r?.created]).toEqual([a.serial, true])
    expect((await ca.authority.revoke({ serial: a.serial }))[0]?.created).toBe(false)
    const byId = await ca.authority.revoke({ id: 'rev-b' }, 'superseded')
    expect(byId.map((x) => x.revocation.serial).sort()).toEqual([b1.serial, b2.serial].sort())
    expect((await caught(ca.authority.revoke({ id: 'rev-b' }))).code).toBe('ZT_UNKNOWN_ID')
    expect((await caught(ca.authority.revoke({ serial: '1234abcd' }))).code).toBe('ZT_UNKNOWN_SERIAL')
    expect((await caught(ca.authority.revoke({ serial: 'xyz' }))).code).toBe('ZT_BAD_ARGUMENT')
    expect((await caught(ca.authority.revoke({ serial: a.serial }, 'bogus' as 'unspecified'))).code).toBe('ZT_BAD_REASON')
  })

  it('signs v2 CRLs with growing numbers, AKI, reasons and nextUpdate 7 days out', async () => {
    const d = await ca.issueDevice('crl-dev')
    await ca.authority.revoke({ serial: d.serial }, 'keyCompromise')
    const first = new x509.X509Crl(await ca.authority.crl())
    const second = new x509.X509Crl(await ca.authority.crl())
    const number = (c: x509.X509Crl): bigint => {
      const ext = c.extensions.find((e) => e.type === '2.5.29.20')
      return BigInt('0x' + Buffer.from(ext?.value ?? new ArrayBuffer(0)).subarray(2).toString('hex'))
    }
    expect(number(second)).toBeGreaterThan(number(first))
    expect(await second.verify({ publicKey: issuing.publicKey })).toBe(true)
    expect(second.getExtension(x509.AuthorityKeyIdentifierExtension)?.keyId).toBe(issuing.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId)
    expect(second.findRevoked(d.serial)?.reason).toBe(x509.X509CrlReason.keyCompromise)
    expect(((second.nextUpdate?.getTime() ?? 0) - second.thisUpdate.getTime()) / 86_400_000).toBe(7)
    const stored = await ca.authority.store.loadCrl()
    expect(stored?.number).toBe(number(second))
    expect(Buffer.from(stored?.der ?? [])).toEqual(Buffer.from(second.rawData))
  })
})

let opensslCsrCached: Buffer
beforeAll(() => { opensslCsrCached = opensslCsr(P256) })

describe('issue-bulk', () => {
  let ca: TestCa
  beforeAll(async () => { ca = await makeTestCa() })
  afterAll(async () => { await ca.cleanup() })

  it('parses the manifest: header, quotes, ; and | separators, comments, relative CSR paths', () => {
    const rows = parseManifest('id,kind,groups,csr\r\n# comment\n\na1,,"s;t",csr/a1.pem\n"b,2",service,x|y|,\nc3\n', '/m/manifest.csv')
    expect(rows).toEqual([
      { line: 4, id: 'a1', kind: 'device', groups: ['s', 't'], csr: '/m/csr/a1.pem' },
      { line: 5, id: 'b,2', kind: 'service', groups: ['x', 'y'], csr: undefined },
      { line: 6, id: 'c3', kind: 'device', groups: [], csr: undefined },
    ])
    expect(() => parseManifest('a,b,c,d,e\n', 'm.csv')).toThrow(/5 columns/)
    expect(() => parseManifest('"a,b\n', 'm.csv')).toThrow(/unterminated/)
  })

  it('reads back any CSV it is given: quoted fields with commas, quotes and line breaks, and plain lines between them', () => {
    const cell = fc.array(fc.constantFrom('a', 'b', ' ', ',', '"', '\n', '\r', ';', '#'), { maxLength: 6 }).map((cs) => cs.join(''))
    const eol = fc.constantFrom('\n', '\r\n', '\r')
    fc.assert(fc.property(fc.array(fc.tuple(fc.array(cell, { minLength: 1, maxLength: 4 }), eol), { minLength: 1, maxLength: 8 }), (records) => {
      const text = records.map(([fields, end]) => fields.map((f) => /[",\r\n]/.test(f) || f === '' ? `"${f.replace(/"/g, '""')}"` : f).join(',') + end).join('')
      expect(parseCsv(text, 'm.csv').map((r) => r.fields)).toEqual(records.map(([fields]) => fields))
    }), { numRuns: 2000 })
    expect(parseCsv('a,b\r\n"c\nd",e\rf\n', 'm.csv')).toEqual([{ line: 1, fields: ['a', 'b'] }, { line: 2, fields: ['c\nd', 'e'] }, { line: 4, fields: ['f'] }])
  })

  it('issues good rows, reports bad ones, and leaves no half-written outputs', async () => {
    const dir = path.join(tmp, 'bulk1')
    await fs.mkdir(path.join(dir, 'csr'), { recursive: true })
    await fs.writeFile(path.join(dir, 'csr/ok.pem'), opensslCsr(P256))
    await fs.writeFile(path.join(dir, 'csr/weak.pem'), opensslCsr(['-newkey', 'rsa:1024']))
    await fs.writeFile(path.join(dir, 'manifest.csv'), [
      'id,kind,groups,csr', 'ok,device,sensors;lab,csr/ok.pem', 'gen,service,,', 'bad/id,,,', 'weak,,,csr/weak.pem', 'missing,,,csr/none.pem', 'gen,,,', 'last,,,',
    ].join('\n'))
    const errors: string[] = []
    const progress: number[] = []
    const out = path.join(dir, 'out')
    const s = await issueBulk(ca.authority, path.join(dir, 'manifest.csv'), { outDir: out, onRowError: (f) => errors.push(`${f.line} ${f.message}`), onProgress: (d) => progress.push(d), batchSize: 3 })
    expect([s.total, s.issued, s.failed.length, s.skipped]).toEqual([7, 3, 4, 0])
    expect(errors.map((e) => e.split(' ')[0])).toEqual(['4', '5', '6', '7'])
    expect(errors[0]).toContain("contains '/'")
    expect(errors[1]).toContain('too weak')
    expect(errors[2]).toContain('cannot read CSR')
    expect(errors[3]).toContain('already appears on line 3')
    expect(progress).toEqual([3, 6, 7])
    expect((await fs.readdir(out)).sort()).toEqual(['gen.key', 'gen.pem', 'last.key', 'last.pem', 'ok.pem'])
    expect((await fs.stat(path.join(out, 'gen.key'))).mode & 0o777).toBe(0o600)
    const listed = await ca.authority.store.list()
    expect(listed.map((c) => c.id).sort()).toEqual(['gen', 'last', 'ok'])
    const okCert = new x509.X509Certificate(await fs.readFile(path.join(out, 'ok.pem'), 'utf8'))
    expect(okCert.subject).toBe('OU=sensors, OU=lab, CN=ok')

    // Run again into the same directory: every row's output exists, nothing is overwritten or recorded.
    const again = await issueBulk(ca.authority, path.join(dir, 'manifest.csv'), { outDir: out })
    expect(again.issued).toBe(0)
    expect(again.failed.find((f) => f.id === 'ok')?.message).toContain('already exists')
    expect((await ca.authority.store.list()).length).toBe(3)
  })

  /** The test CA's authority with its store's recordIssued replaced. */
  function withRecord (record: (certs: readonly IssuedCert[], real: CertStore) => Promise<void>): Authority {
    const real = ca.authority.store
    const store = new Proxy(real, {
      get (t, k) {
        if (k === 'recordIssued') return async (certs: readonly IssuedCert[]) => { await record(certs, t) }
        const v: unknown = Reflect.get(t, k)
        return typeof v === 'function' ? v.bind(t) : v
      },
    })
    return new Proxy(ca.authority, {
      get (t, k) {
        if (k === 'store') return store
        const v: unknown = Reflect.get(t, k)
        return typeof v === 'function' ? v.bind(t) : v
      },
    })
  }

  async function manifestOf (dir: string, ids: string[]): Promise<string> {
    await fs.mkdir(path.join(dir, 'csr'), { recursive: true })
    await fs.writeFile(path.join(dir, 'csr/x.pem'), opensslCsrCached)
    await fs.writeFile(path.join(dir, 'm.csv'), ids.map((id) => `${id},,,${id.startsWith('gen') ? '' : 'csr/x.pem'}`).join('\n'))
    return path.join(dir, 'm.csv')
  }

  it('records a batch once its files are written and flushed, and names no file before it is recorded', async () => {
    const dir = path.join(tmp, 'bulk-order')
    const ids = ['o1', 'o2', 'gen3', 'o4', 'o5']
    const out = path.join(dir, 'out')
    const batches: string[][] = []
    const authority = withRecord(async (certs, real) => {
      const names = await fs.readdir(out)
      for (const c of certs) {
        // Not visible under its name yet...
        expect(names).not.toContain(`${c.id}.pem`)
        expect(names).not.toContain(`${c.id}.key`)
        // ...but written in full under a temporary one: the certificate the record describes.
        const tmpPem = names.filter((n) => n.startsWith(`.${c.id}.pem.`) && n.endsWith('.tmp'))
        expect(tmpPem).toHaveLength(1)
        const cert = new X509Certificate(await fs.readFile(path.join(out, tmpPem[0] as string)))
        expect(cert.serialNumber.toLowerCase()).toBe(c.serial)
        if (c.id.startsWith('gen')) expect(names.filter((n) => n.startsWith(`.${c.id}.key.`))).toHaveLength(1)
      }
      batches.push(certs.map((c) => c.id))
      await real.recordIssued(certs)
    })
    const s = await issueBulk(authority, await manifestOf(dir, ids), { outDir: out, batchSize: 2 })
    expect([s.issued, s.failed.length]).toEqual([5, 0])
    expect(batches).toEqual([['o1', 'o2'], ['gen3', 'o4'], ['o5']])
    expect((await fs.readdir(out)).sort()).toEqual(['gen3.key', 'gen3.pem', 'o1.pem', 'o2.pem', 'o4.pem', 'o5.pem'])
    for (const id of ['o1', 'gen3', 'o5']) {
      const cert = new X509Certificate(await fs.readFile(path.join(out, `${id}.pem`)))
      expect(await ca.authority.store.getIssued(cert.serialNumber.toLowerCase())).not.toBeNull()
    }
  })

  it("stops when the inventory cannot be written, leaving neither that batch's files nor temporary ones", async () => {
    const dir = path.join(tmp, 'bulk-store-down')
    const out = path.join(dir, 'out')
    let calls = 0
    const authority = withRecord(async (certs, real) => {
      if (++calls === 2) throw new ZtError('ZT_STORE_UNAVAILABLE', 'record issued: file store unavailable (EIO)')
      await real.recordIssued(certs)
    })
    const err = await caught(issueBulk(authority, await manifestOf(dir, ['d1', 'd2', 'd3', 'gen4', 'd5', 'd6']), { outDir: out, batchSize: 2 }))
    expect(err.code).toBe('ZT_STORE_UNAVAILABLE')
    // The first batch was recorded and named; nothing after it, and no temporary file is left behind.
    expect((await fs.readdir(out)).sort()).toEqual(['d1.pem', 'd2.pem'])
  })

  it('stops at the first bad row with stopOnError', async () => {
    const dir = path.join(tmp, 'bulk2')
    await fs.mkdir(dir, { recursive: true })
    await fs.writeFile(path.join(dir, 'm.csv'), 'one\ntwo#\nthree\n')
    const s = await issueBulk(ca.authority, path.join(dir, 'm.csv'), { outDir: path.join(dir, 'out'), stopOnError: true })
    expect([s.issued, s.failed.length, s.skipped]).toEqual([1, 1, 1])
    expect(await fs.readdir(path.join(dir, 'out'))).toEqual(['one.key', 'one.pem'])
  })

  it('refuses an unreadable or empty manifest', async () => {
    expect((await caught(issueBulk(ca.authority, path.join(tmp, 'nope.csv'), { outDir: tmp }))).code).toBe('ZT_BAD_MANIFEST')
    await fs.writeFile(path.join(tmp, 'empty.csv'), 'id,kind,groups,csr\n')
    expect((await caught(issueBulk(ca.authority, path.join(tmp, 'empty.csv'), { outDir: tmp }))).code).toBe('ZT_BAD_MANIFEST')
  })
})
