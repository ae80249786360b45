// PKCS#10 requests: parse PEM or DER, refuse weak keys, verify the signature (proof the requester holds the key).
import { createPublicKey, verify as nodeVerify, type KeyObject } from 'node:crypto'
import { ZtError } from '../common/errors.js'
import { bitString, bytesEqual, children, oid, readOid, readTlv, seq, TAG } from './der.js'
import { describePublicKey, type KeyDescription } from './keys.js'

export interface VerifiedCsr {
  /** SubjectPublicKeyInfo DER of the requester's key. */
  spki: Uint8Array
  key: KeyDescription
}

/** CSRs larger than this are not requests for a device certificate; refuse before parsing. */
const MAX_CSR_BYTES = 64 * 1024

/** Signature algorithms accepted on a CSR; SHA-1 and MD5 signatures prove nothing any more. */
const SIGNATURE_ALGORITHMS: Record<string, { family: 'ec' | 'rsa', hash: string }> = {
  '1.2.840.10045.4.3.2': { family: 'ec', hash: 'sha256' },
  '1.2.840.10045.4.3.3': { family: 'ec', hash: 'sha384' },
  '1.2.840.10045.4.3.4': { family: 'ec', hash: 'sha512' },
  '1.2.840.113549.1.1.11': { family: 'rsa', hash: 'sha256' },
  '1.2.840.113549.1.1.12': { family: 'rsa', hash: 'sha384' },
  '1.2.840.113549.1.1.13': { family: 'rsa', hash: 'sha512' },
}

function toDer (input: string | Uint8Array, operation: string): Uint8Array {
  if (input.length > MAX_CSR_BYTES) throw new ZtError('ZT_BAD_CSR', `${operation}: CSR of ${input.length} bytes is too large`)
  // DER starts with a SEQUENCE tag; anything else is taken for PEM text.
  if (typeof input !== 'string' && input[0] === TAG.SEQUENCE) return input
  const text = typeof input === 'string' ? input : Buffer.from(input.buffer, input.byteOffset, input.byteLength).toString('latin1')
  const m = /-----BEGIN (?:NEW )?CERTIFICATE REQUEST-----([\s\S]*?)-----END (?:NEW )?CERTIFICATE REQUEST-----/.exec(text)
  if (m === null) throw new ZtError('ZT_BAD_CSR', `${operation}: not a certificate request (no BEGIN CERTIFICATE REQUEST block, and not DER)`)
  const body = m[1] ?? ''
  // Base64 with whitespace anywhere (Node's decoder skips it): checked here, since the decoder would skip junk too.
  if (!/^[A-Za-z0-9+/\s]*(?:=\s*){0,2}$/.test(body) || !/[^\s=]/.test(body)) throw new ZtError('ZT_BAD_CSR', `${operation}: the CSR's PEM body is not base64`)
  return Buffer.from(body, 'base64')
}

interface CsrParts {
  info: Uint8Array
  spki: Uint8Array
  algorithm: string
  signature: Uint8Array
}

/** CertificationRequest ::= SEQUENCE { certificationRequestInfo, signatureAlgorithm, signature BIT STRING } (RFC 2986). */
function parseCsr (der: Uint8Array): CsrParts {
  const outer = readTlv(der)
  if (outer.tag !== TAG.SEQUENCE || outer.raw.length !== der.length) throw new Error('not a single DER SEQUENCE')
  // Indexed rather than destructured: this runs once per row of a bulk run.
  const top = children(outer.value)
  const info = top[0]
  const alg = top[1]
  const sig = top[2]
  if (top.length !== 3 || info?.tag !== TAG.SEQUENCE || alg?.tag !== TAG.SEQUENCE || sig?.tag !== TAG.BIT_STRING) throw new Error('not a CertificationRequest')
  const fields = children(info.value)
  const version = fields[0]
  const subject = fields[1]
  const spki = fields[2]
  if (version?.tag !== TAG.INTEGER || version.value.length !== 1 || version.value[0] !== 0) throw new Error('unknown CSR version')
  if (subject?.tag !== TAG.SEQUENCE || spki?.tag !== TAG.SEQUENCE) throw new Error('CertificationRequestInfo without subject and key')
  const algOid = children(alg.value)[0]
  if (algOid?.tag !== TAG.OID) throw new Error('signature algorithm without an OID')
  if (sig.value[0] !== 0) throw new Error('signature BIT STRING with unused bits')
  return { info: info.raw, spki: spki.raw, algorithm: readOid(algOid.value), signature: sig.value.subarray(1) }
}

const OID_EC_PUBLIC_KEY = '1.2.840.10045.2.1'

interface EcCurve {
  crv: string
  bytes: number
  description: KeyDescription
  /** The named-curve SubjectPublicKeyInfo of an uncompressed point, up to and including the point's 0x04 byte. */
  prefix: Uint8Array
  /** Its whole length: prefix and the two coordinates. */
  spkiLength: number
}

function ecCurve (curveOid: string, crv: string, bytes: number, description: KeyDescription): EcCurve {
  const point = new Uint8Array(1 + 2 * bytes)
  point[0] = 0x04
  const spki = seq(seq(oid(OID_EC_PUBLIC_KEY), oid(curveOid)), bitString(point))
  return { crv, bytes, description, prefix: spki.slice(0, spki.length - 2 * bytes), spkiLength: spki.length }
}

const EC_CURVES: Record<string, EcCurve> = {
  '1.2.840.10045.3.1.7': ecCurve('1.2.840.10045.3.1.7', 'P-256', 32, { type: 'ec-p256', label: 'EC P-256' }),
  '1.3.132.0.34': ecCurve('1.3.132.0.34', 'P-384', 48, { type: 'ec-p384', label: 'EC P-384' }),
}
const EC_CURVE_LIST = Object.values(EC_CURVES)

interface ImportedKey {
  key: KeyObject
  description: KeyDescription
  /** The key's SubjectPublicKeyInfo as node:crypto encodes it, when already known without asking it. */
  spki?: Uint8Array
}

/**
 * Imports the CSR's key. EC keys with an uncompressed point (what `openssl req` and WebCrypto make) go through JWK,
 * which OpenSSL 3 imports in half the time of its generic SPKI decoder: this is most of the per-certificate cost in
 * bulk issuance. OpenSSL still checks the point is on the curve. Everything else takes the generic path.
 */
function importKey (spki: Uint8Array, operation: string): ImportedKey {
  // The common case first, without taking the SPKI apart: byte for byte the DER of a named P-256 or P-384 curve and
  // an uncompressed point. DER has one encoding per value, so this is exactly the SPKI the generic path below
  // accepts for such a key and re-encodes to the same bytes.
  for (const curve of EC_CURVE_LIST) {
    if (spki.length === curve.spkiLength && bytesEqual(spki.subarray(0, curve.prefix.length), curve.prefix)) return importEcPoint(spki, spki.length - 2 * curve.bytes, curve)
  }
  // The SPKI is checked strictly here because its shape decides what the CA signs: an algorithm and a key, nothing
  // more, a BIT STRING without unused bits, and EC keys that name their curve (RFC 5480 forbids explicit parameters,
  // which Go, BoringSSL and rustls refuse). verifyCsr also re-encodes the key before it goes into a certificate.
  const top = children(readTlv(spki).value)
  const [alg, bits] = top
  if (top.length !== 2 || alg?.tag !== TAG.SEQUENCE || bits?.tag !== TAG.BIT_STRING || bits.value[0] !== 0) {
    throw new Error('malformed SubjectPublicKeyInfo')
  }
  const algParts = children(alg.value)
  const [algOid, params] = algParts
  if (algOid?.tag === TAG.OID && readOid(algOid.value) === OID_EC_PUBLIC_KEY && (params?.tag !== TAG.OID || algParts.length !== 2)) {
    throw new ZtError('ZT_WEAK_KEY', `${operation}: EC keys must name their curve (explicit curve parameters are not accepted)`)
  }
  if (algOid?.tag === TAG.OID && readOid(algOid.value) === OID_EC_PUBLIC_KEY && params?.tag === TAG.OID) {
    const curve = EC_CURVES[readOid(params.value)]
    const point = bits.value.subarray(1)
    if (curve !== undefined && point[0] === 0x04 && point.length === 1 + 2 * curve.bytes) {
      // What key.export({ type: 'spki' }) gives for a named-curve key, byte for byte (a test holds it to that).
      const canonical = new Uint8Array(curve.spkiLength)
      canonical.set(curve.prefix)
      canonical.set(point.subarray(1), curve.prefix.length)
      return importEcPoint(canonical, curve.prefix.length, curve)
    }
  }
  const key = createPublicKey({ key: Buffer.from(spki), format: 'der', type: 'spki' })
  return { key, description: describePublicKey(key, operation) }
}

/**
 * Imports an uncompressed EC point through JWK; `spki` is the canonical SubjectPublicKeyInfo it sits in, at `at`
 * (after the 0x04 byte). OpenSSL still checks the point is on the curve.
 */
function importEcPoint (spki: Uint8Array, at: number, curve: EcCurve): ImportedKey {
  const view = Buffer.from(spki.buffer, spki.byteOffset, spki.byteLength)
  const jwk = { kty: 'EC', crv: curve.crv, x: view.toString('base64url', at, at + curve.bytes), y: view.toString('base64url', at + curve.bytes, at + 2 * curve.bytes) }
  const key = createPublicKey({ key: jwk, format: 'jwk' })
  // The certificate carries its own copy: never a view into the caller's buffer.
  return { key, description: curve.description, spki: spki.slice() }
}

/**
 * Parses a CSR and checks it: readable, a key the CA issues for, a signature that verifies with that key.
 * Errors are ZT_BAD_CSR (unreadable, forged) or ZT_WEAK_KEY, each one line naming the operation.
 */
export function verifyCsr (input: string | Uint8Array, operation: string): VerifiedCsr {
  const der = toDer(input, operation)
  let parts: CsrParts
  let imported: ImportedKey
  try {
    parts = parseCsr(der)
    imported = importKey(parts.spki, operation)
  } catch (err) {
    if (err instanceof ZtError) throw err
    throw new ZtError('ZT_BAD_CSR', `${operation}: the CSR cannot be parsed (${err instanceof Error ? err.message : String(err)})`, {}, { cause: err })
  }
  const { key, description } = imported
  const alg = SIGNATURE_ALGORITHMS[parts.algorithm]
  if (alg === undefined) throw new ZtError('ZT_BAD_CSR', `${operation}: the CSR's signature algorithm ${parts.algorithm} is not accepted (ECDSA or RSA PKCS#1 v1.5 with SHA-256/384/512)`, { algorithm: parts.algorithm })
  if (alg.family !== key.asymmetricKeyType) throw new ZtError('ZT_BAD_CSR', `${operation}: the CSR's signature algorithm does not match its ${description.label} key`)
  let ok: boolean
  try {
    ok = nodeVerify(alg.hash, parts.info, key, parts.signature)
  } catch {
    ok = false
  }
  if (!ok) throw new ZtError('ZT_BAD_CSR', `${operation}: the CSR's signature does not verify with its own key (forged or corrupted)`)
  // The certificate carries the key as node:crypto encodes it, never the CSR's own bytes.
  return { spki: imported.spki ?? new Uint8Array(key.export({ type: 'spki', format: 'der' })), key: description }
}
