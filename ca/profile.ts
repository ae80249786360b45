// Certificate profiles: root CA, issuing CA, broker server certificate and device leaf (PRODUCT.md "Identities").
import { randomBytes } from 'node:crypto'
import { isIP } from 'node:net'
import type * as x509 from '@peculiar/x509'
import { ZtError } from '../common/errors.js'
import { signingAlgorithm, type CryptoKey, type CryptoKeyPair, type KeyType } from './keys.js'
import { loadX509, type X509Lib } from './x509.js'

const DAY_MS = 86_400_000

/** Validity periods. Root ~10 years, issuing ~5 years, broker server 1 year, device leaf 90 days by default. */
export const VALIDITY_DAYS = {
  root: 3653,
  issuing: 1826,
  server: 365,
  leaf: 90,
  /** Upper bound accepted for --days; the issuing CA's notAfter caps it further. */
  leafMax: 3650,
} as const

/** notBefore is set a minute back so a device whose clock runs slightly behind accepts a fresh certificate. */
export const BACKDATE_MS = 60_000

export const DEFAULT_SERVER_NAMES: readonly string[] = ['localhost', '127.0.0.1', '::1']

/** CSPRNG output drawn 4 KiB at a time, each byte used once: one call per 256 serials, not one per leaf of a bulk run. */
let serialPool = Buffer.alloc(0)
let serialPoolAt = 0

/**
 * A random positive serial of 128 bits whose first byte is 0x10..0x7f: positive without a sign byte,
 * and always exactly 32 hex digits in canonical form (no leading zero to strip).
 */
export function newSerial (): string {
  if (serialPoolAt + 16 > serialPool.length) {
    serialPool = randomBytes(4096)
    serialPoolAt = 0
  }
  const bytes = serialPool.subarray(serialPoolAt, serialPoolAt += 16)
  bytes[0] = 0x10 + ((bytes[0] ?? 0) % 0x70)
  return bytes.toString('hex')
}

export function addDays (from: Date, days: number): Date {
  return new Date(from.getTime() + days * DAY_MS)
}

function caExtensions (x509: X509Lib, pathLength: number | undefined): x509.Extension[] {
  return [
    new x509.BasicConstraintsExtension(true, pathLength, true),
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
  ]
}

/** Self-signed root: CA:TRUE without a path length (the issuing CA below carries pathlen 0). */
export async function createRootCert (name: string, keys: CryptoKeyPair, keyType: KeyType, now: Date): Promise<x509.X509Certificate> {
  const x509 = await loadX509()
  const ski = await x509.SubjectKeyIdentifierExtension.create(keys.publicKey)
  return await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: newSerial(),
    name: [{ CN: [`${name} Root CA`] }],
    notBefore: new Date(now.getTime() - BACKDATE_MS),
    notAfter: addDays(now, VALIDITY_DAYS.root),
    keys,
    signingAlgorithm: signingAlgorithm(keyType),
    extensions: [...caExtensions(x509, undefined), ski, new x509.AuthorityKeyIdentifierExtension(ski.keyId)],
  })
}

/** Issuing (intermediate) CA, pathlen 0: it signs leaves and CRLs, never another CA. */
export async function createIssuingCert (name: string, publicKey: CryptoKey, root: x509.X509Certificate, rootKey: CryptoKey, keyType: KeyType, now: Date): Promise<x509.X509Certificate> {
  const x509 = await loadX509()
  return await x509.X509CertificateGenerator.create({
    serialNumber: newSerial(),
    subject: [{ CN: [`${name} Issuing CA`] }],
    issuer: root.subjectName,
    notBefore: new Date(now.getTime() - BACKDATE_MS),
    notAfter: minDate(addDays(now, VALIDITY_DAYS.issuing), root.notAfter),
    publicKey,
    signingKey: rootKey,
    signingAlgorithm: signingAlgorithm(keyType),
    extensions: [
      ...caExtensions(x509, 0),
      await x509.SubjectKeyIdentifierExtension.create(publicKey),
      new x509.AuthorityKeyIdentifierExtension(skiOf(x509, root)),
    ],
  })
}

/** Subject key identifier of a CA certificate, hex: what its children carry as AKI (x509: the loaded library, loadX509). */
function skiOf (x509: X509Lib, cert: x509.X509Certificate): string {
  const ext = cert.getExtension(x509.SubjectKeyIdentifierExtension)
  if (ext === null) throw new ZtError('ZT_BAD_CERT', `load CA: certificate ${cert.subject} has no subject key identifier`)
  return ext.keyId
}

export function minDate (a: Date, b: Date): Date {
  return a.getTime() <= b.getTime() ? a : b
}

/** Hostnames per RFC 1123 labels (wildcards not accepted: the broker certificate names itself exactly). */
const DNS_RE = /^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/

export function serverSanEntries (names: readonly string[], operation: string): x509.JsonGeneralName[] {
  if (names.length === 0) throw new ZtError('ZT_BAD_ARGUMENT', `${operation}: at least one server name is needed`)
  return names.map((n) => {
    if (isIP(n) !== 0) return { type: 'ip', value: n }
    if (!DNS_RE.test(n)) throw new ZtError('ZT_BAD_ARGUMENT', `${operation}: server name ${JSON.stringify(n)} is neither a DNS name nor an IP address`, { serverName: n })
    return { type: 'dns', value: n.toLowerCase() }
  })
}

/** The broker's TLS server certificate: serverAuth only, SAN from --server-name. */
export async function createServerCert (names: readonly string[], publicKey: CryptoKey, issuing: x509.X509Certificate, issuingKey: CryptoKey, caKeyType: KeyType, serverKeyType: KeyType, now: Date): Promise<x509.X509Certificate> {
  const san = serverSanEntries(names, 'ca init')
  const x509 = await loadX509()
  // RSA servers may use RSA key transport in TLS 1.2, which needs keyEncipherment; ECDSA keys never do.
  const usage = serverKeyType.startsWith('rsa')
    ? x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment
    : x509.KeyUsageFlags.digitalSignature
  return await x509.X509CertificateGenerator.create({
    serialNumber: newSerial(),
    subject: [{ CN: [names[0] ?? 'localhost'] }],
    issuer: issuing.subjectName,
    notBefore: new Date(now.getTime() - BACKDATE_MS),
    notAfter: minDate(addDays(now, VALIDITY_DAYS.server), issuing.notAfter),
    publicKey,
    signingKey: issuingKey,
    signingAlgorithm: signingAlgorithm(caKeyType),
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(usage, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
      new x509.SubjectAlternativeNameExtension(san),
      await x509.SubjectKeyIdentifierExtension.create(publicKey),
      new x509.AuthorityKeyIdentifierExtension(skiOf(x509, issuing)),
    ],
  })
}
