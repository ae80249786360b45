// Leaf certificate signer: the fixed device profile assembled from pre-encoded DER and signed with node:crypto.
import { hash, sign as nodeSign, type KeyObject } from 'node:crypto'
import { ZtError } from '../common/errors.js'
import { spiffeUri, type Kind } from '../common/ids.js'
import { bitString, children, explicit, integerFromBytes, octetString, oid, readOid, readTlv, seq, set, TAG, time, tlv, utf8String, type Tlv } from './der.js'
import type { KeyType } from './keys.js'

const OID = {
  commonName: '2.5.4.3',
  organizationalUnit: '2.5.4.11',
  basicConstraints: '2.5.29.19',
  keyUsage: '2.5.29.15',
  extKeyUsage: '2.5.29.37',
  subjectAltName: '2.5.29.17',
  subjectKeyId: '2.5.29.14',
  authorityKeyId: '2.5.29.35',
  clientAuth: '1.3.6.1.5.5.7.3.2',
  ecdsaWithSha256: '1.2.840.10045.4.3.2',
  ecdsaWithSha384: '1.2.840.10045.4.3.3',
  sha256WithRsa: '1.2.840.113549.1.1.11',
} as const

const TRUE = tlv(0x01, new Uint8Array([0xff]))
const VERSION_3 = explicit(0, integerFromBytes(new Uint8Array([2])))

/** OIDs encoded once: the per-certificate parts below are built for every leaf of a bulk run. */
const OID_DER = new Map<string, Uint8Array>()
function oidDer (id: string): Uint8Array {
  let der = OID_DER.get(id)
  if (der === undefined) { der = oid(id); OID_DER.set(id, der) }
  return der
}

function extension (id: string, critical: boolean, value: Uint8Array): Uint8Array {
  return critical ? seq(oidDer(id), TRUE, octetString(value)) : seq(oidDer(id), octetString(value))
}

/** The constant part of the profile: CA:FALSE and digitalSignature (both critical), clientAuth only. */
const BASIC_CONSTRAINTS_LEAF = extension(OID.basicConstraints, true, seq())
const KEY_USAGE_DIGITAL_SIGNATURE = extension(OID.keyUsage, true, tlv(0x03, new Uint8Array([0x07, 0x80])))
const EKU_CLIENT_AUTH = extension(OID.extKeyUsage, false, seq(oid(OID.clientAuth)))

/** Signature algorithm and digest for each CA key type (ECDSA hash matched to the curve, as @peculiar/x509 does for the CAs). */
function signatureAlgorithm (keyType: KeyType): { algorithm: Uint8Array, hash: string } {
  switch (keyType) {
    case 'ec-p256': return { algorithm: seq(oid(OID.ecdsaWithSha256)), hash: 'sha256' }
    case 'ec-p384': return { algorithm: seq(oid(OID.ecdsaWithSha384)), hash: 'sha384' }
    default: return { algorithm: seq(oid(OID.sha256WithRsa), tlv(0x05, new Uint8Array(0))), hash: 'sha256' }
  }
}

/** RFC 5280 section 4.2.1.2 method 1: SHA-1 of the subjectPublicKey BIT STRING's value (without the unused-bits octet). */
export function keyIdentifier (spki: Uint8Array): Uint8Array {
  const parts = children(readTlv(spki).value)
  const bits = parts[1]
  if (bits === undefined || bits.tag !== 0x03) throw new Error('SubjectPublicKeyInfo without a BIT STRING')
  // One-shot hash: no Hash object per leaf.
  return hash('sha1', bits.value.subarray(1), 'buffer')
}

/** What issuing needs from the issuing CA certificate, read straight from its DER (no X.509 library to load). */
export interface IssuingFacts {
  /** Its subject key identifier: every leaf's authority key identifier. */
  keyId: Uint8Array
  notAfter: Date
}

function readTime (t: Tlv): Date {
  const text = Buffer.from(t.value).toString('ascii')
  // DER: UTCTime YYMMDDHHMMSSZ (years 1950-2049), GeneralizedTime YYYYMMDDHHMMSSZ.
  const m = (t.tag === TAG.UTC_TIME ? /^(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/ : t.tag === TAG.GENERALIZED_TIME ? /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/ : null)?.exec(text)
  if (m === null || m === undefined) throw new Error(`unreadable time ${JSON.stringify(text)}`)
  const [y, mo, d, h, mi, s] = m.slice(1).map(Number) as [number, number, number, number, number, number]
  const year = t.tag === TAG.UTC_TIME ? (y < 50 ? 2000 + y : 1900 + y) : y
  return new Date(Date.UTC(year, mo - 1, d, h, mi, s))
}

/** Reads the issuing CA certificate's SKI and notAfter (ZT_BAD_CERT when it has no SKI or cannot be read). */
export function issuingFacts (der: Uint8Array): IssuingFacts {
  let keyId: Uint8Array | undefined
  let notAfter: Date
  try {
    // Certificate → TBSCertificate → [[0] version, serial, signature, issuer, validity, subject, spki, ..., [3] extensions]
    const tbs = children(readTlv(der).value)[0]
    const fields = tbs === undefined ? [] : children(tbs.value)
    const validity = fields[fields[0]?.tag === 0xa0 ? 4 : 3]
    const end = validity?.tag === TAG.SEQUENCE ? children(validity.value)[1] : undefined
    if (end === undefined) throw new Error('no validity')
    notAfter = readTime(end)
    const extensions = fields.find((f) => f.tag === 0xa3)
    for (const ext of extensions === undefined ? [] : children(readTlv(extensions.value).value)) {
      const parts = children(ext.value)
      if (parts[0]?.tag !== TAG.OID || readOid(parts[0].value) !== OID.subjectKeyId) continue
      const value = parts[parts.length - 1]
      if (value?.tag === TAG.OCTET_STRING) {
        const inner = readTlv(value.value)
        if (inner.tag === TAG.OCTET_STRING) keyId = inner.value
      }
    }
  } catch (err) {
    throw new ZtError('ZT_BAD_CERT', `load CA: the issuing CA certificate cannot be read (${err instanceof Error ? err.message : String(err)})`, {}, { cause: err })
  }
  if (keyId === undefined || keyId.length === 0) throw new ZtError('ZT_BAD_CERT', 'load CA: the issuing CA certificate has no subject key identifier')
  return { keyId: new Uint8Array(keyId), notAfter }
}

export interface LeafFields {
  /** Serial as even-length hex without a sign byte (profile.newSerial). */
  serial: string
  id: string
  kind: Kind
  groups: readonly string[]
  notBefore: Date
  notAfter: Date
  /** SubjectPublicKeyInfo DER of the subject's key, already checked for strength. */
  spki: Uint8Array
}

export class LeafSigner {
  private readonly issuerName: Uint8Array
  private readonly algorithm: Uint8Array
  private readonly hash: string
  private readonly authorityKeyId: Uint8Array

  /**
   * @param issuingDer DER of the issuing CA certificate (its subject becomes every leaf's issuer, byte for byte)
   * @param issuingKeyId the issuing CA's subject key identifier (every leaf's AKI)
   */
  constructor (issuingDer: Uint8Array, issuingKeyId: Uint8Array, private readonly key: KeyObject, keyType: KeyType, private readonly trustDomain: string) {
    // Certificate → TBSCertificate → [version, serial, signature, issuer, validity, subject, ...]
    const tbs = children(readTlv(issuingDer).value)[0]
    const fields = tbs === undefined ? [] : children(tbs.value)
    const subject = fields[0]?.tag === 0xa0 ? fields[5] : fields[4]
    if (subject === undefined) throw new Error('issuing CA certificate has no subject')
    this.issuerName = subject.raw
    const alg = signatureAlgorithm(keyType)
    this.algorithm = alg.algorithm
    this.hash = alg.hash
    this.authorityKeyId = extension(OID.authorityKeyId, false, seq(tlv(0x80, issuingKeyId)))
  }

  /** Returns the leaf certificate's DER. */
  sign (f: LeafFields): Uint8Array {
    const rdns = [
      ...f.groups.map((g) => set(seq(oidDer(OID.organizationalUnit), utf8String(g)))),
      set(seq(oidDer(OID.commonName), utf8String(f.id))),
    ]
    const san = extension(OID.subjectAltName, false, seq(tlv(0x86, Buffer.from(spiffeUri(this.trustDomain, f.kind, f.id), 'ascii'))))
    const ski = extension(OID.subjectKeyId, false, octetString(keyIdentifier(f.spki)))
    const tbs = seq(
      VERSION_3,
      integerFromBytes(Buffer.from(f.serial, 'hex')),
      this.algorithm,
      this.issuerName,
      seq(time(f.notBefore), time(f.notAfter)),
      seq(...rdns),
      f.spki,
      explicit(3, seq(BASIC_CONSTRAINTS_LEAF, KEY_USAGE_DIGITAL_SIGNATURE, EKU_CLIENT_AUTH, san, ski, this.authorityKeyId)),
    )
    // ECDSA signatures come DER-encoded (ECDSA-Sig-Value) by default, which is what X.509 carries.
    const signature = nodeSign(this.hash, tbs, this.key)
    return seq(tbs, this.algorithm, bitString(signature))
  }
}

export function derToPem (der: Uint8Array, label = 'CERTIFICATE'): string {
  const b64 = Buffer.from(der).toString('base64')
  const lines: string[] = []
  for (let i = 0; i < b64.length; i += 64) lines.push(b64.slice(i, i + 64))
  return `-----BEGIN ${label}-----\n${lines.join('\n')}\n-----END ${label}-----\n`
}
