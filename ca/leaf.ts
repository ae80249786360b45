// Leaf certificate signer: the fixed device profile assembled from pre-encoded DER and signed with node:crypto.
import { hash, sign as nodeSign, type KeyObject } from 'node:crypto'
import { oneLine, ZtError } from '../common/errors.js'
import { spiffeUri, type Kind } from '../common/ids.js'
import { children, DerBackWriter, explicit, integerFromBytes, octetString, oid, readOid, readTime, readTlv, seq, TAG, time, tlv, tlvLength } from './der.js'
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

function extension (id: string, critical: boolean, value: Uint8Array): Uint8Array {
  return critical ? seq(oid(id), TRUE, octetString(value)) : seq(oid(id), octetString(value))
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
  // SubjectPublicKeyInfo ::= SEQUENCE { algorithm AlgorithmIdentifier, subjectPublicKey BIT STRING }
  const { value } = readTlv(spki)
  const bits = readTlv(value, readTlv(value).raw.length)
  if (bits.tag !== TAG.BIT_STRING) throw new Error('SubjectPublicKeyInfo without a BIT STRING')
  // One-shot hash: no Hash object per leaf.
  return hash('sha1', bits.value.subarray(1), 'buffer')
}

/** What issuing needs from the issuing CA certificate, read straight from its DER (no X.509 library to load). */
export interface IssuingFacts {
  /** Its subject key identifier: every leaf's authority key identifier. */
  keyId: Uint8Array
  notAfter: Date
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
    notAfter = readTime(validity?.tag === TAG.SEQUENCE ? children(validity.value)[1] : undefined)
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
    throw new ZtError('ZT_BAD_CERT', `load CA: the issuing CA certificate cannot be read (${oneLine(err)})`, {}, { cause: err })
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

/** The encoded attribute types of the leaf subject and the OIDs of the per-leaf extensions. */
const OU_TYPE = oid(OID.organizationalUnit)
const CN_TYPE = oid(OID.commonName)
const SAN_TYPE = oid(OID.subjectAltName)
const SKI_TYPE = oid(OID.subjectKeyId)
const ZERO_OCTET = new Uint8Array([0])

export class LeafSigner {
  private readonly issuerName: Uint8Array
  private readonly algorithm: Uint8Array
  private readonly hash: string
  /** basicConstraints, keyUsage and extKeyUsage: the same bytes in every leaf (its SAN, SKI and the AKI follow). */
  private readonly fixedExtensions: Uint8Array
  private readonly authorityKeyId: Uint8Array
  /** Room for a TBSCertificate's fixed parts; the per-leaf ones are added to it in sign. */
  private readonly fixedLength: number
  /** The TBSCertificate is written here, back to front, and signed in place (sign is synchronous, so one suffices). */
  private scratch = Buffer.allocUnsafe(2048)
  /** notBefore/notAfter change once a second at most: a bulk run encodes its validity once per second, not per leaf. */
  private validity: { notBefore: number, notAfter: number, der: Uint8Array } = { notBefore: NaN, notAfter: NaN, der: new Uint8Array(0) }

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
    this.fixedExtensions = Buffer.concat([BASIC_CONSTRAINTS_LEAF, KEY_USAGE_DIGITAL_SIGNATURE, EKU_CLIENT_AUTH])
    this.authorityKeyId = extension(OID.authorityKeyId, false, seq(tlv(0x80, issuingKeyId)))
    // Fixed parts, plus generous room for the serial, validity, SKI, the OIDs and every header.
    this.fixedLength = VERSION_3.length + this.algorithm.length + this.issuerName.length + this.fixedExtensions.length +
      this.authorityKeyId.length + 3 * trustDomain.length + 512
  }

  private validityDer (notBefore: Date, notAfter: Date): Uint8Array {
    const v = this.validity
    if (v.notBefore !== notBefore.getTime() || v.notAfter !== notAfter.getTime()) {
      this.validity = { notBefore: notBefore.getTime(), notAfter: notAfter.getTime(), der: seq(time(notBefore), time(notAfter)) }
    }
    return this.validity.der
  }

  /** Returns the leaf certificate's DER. */
  sign (f: LeafFields): Uint8Array {
    // An upper bound of the TBSCertificate's size: text is at most 3 UTF-8 bytes per UTF-16 unit, and each group's
    // RDN adds at most 24 bytes of headers and OID. Were it ever short, the writer throws: it never writes outside.
    let bound = this.fixedLength + f.serial.length + f.spki.length + 3 * (2 * f.id.length + f.kind.length) + 64
    for (const g of f.groups) bound += 3 * g.length + 24
    if (bound > this.scratch.length) this.scratch = Buffer.allocUnsafe(bound)
    const w = new DerBackWriter(this.scratch)
    const tbsEnd = w.pos
    // extensions [3] EXPLICIT SEQUENCE { basicConstraints, keyUsage, extKeyUsage, subjectAltName, SKI, AKI }
    w.bytes(this.authorityKeyId)
    let end = w.pos
    w.bytes(keyIdentifier(f.spki))
    w.wrap(TAG.OCTET_STRING, end)
    w.wrap(TAG.OCTET_STRING, end)
    w.bytes(SKI_TYPE)
    w.wrap(TAG.SEQUENCE, end)
    // subjectAltName: exactly one URI (IA5String, [6]); ids and the trust domain are ASCII by construction.
    end = w.pos
    w.text(spiffeUri(this.trustDomain, f.kind, f.id))
    w.wrap(0x86, end)
    w.wrap(TAG.SEQUENCE, end)
    w.wrap(TAG.OCTET_STRING, end)
    w.bytes(SAN_TYPE)
    w.wrap(TAG.SEQUENCE, end)
    w.bytes(this.fixedExtensions)
    w.wrap(TAG.SEQUENCE, tbsEnd)
    w.wrap(0xa3, tbsEnd)
    w.bytes(f.spki)
    // subject: one RDN per group (OU), in order, then CN = id
    const subjectEnd = w.pos
    for (let i = f.groups.length; i >= 0; i--) {
      end = w.pos
      w.text(i === f.groups.length ? f.id : f.groups[i] as string)
      w.wrap(TAG.UTF8_STRING, end)
      w.bytes(i === f.groups.length ? CN_TYPE : OU_TYPE)
      w.wrap(TAG.SEQUENCE, end)
      w.wrap(TAG.SET, end)
    }
    w.wrap(TAG.SEQUENCE, subjectEnd)
    w.bytes(this.validityDer(f.notBefore, f.notAfter))
    w.bytes(this.issuerName)
    w.bytes(this.algorithm)
    w.bytes(integerFromBytes(Buffer.from(f.serial, 'hex')))
    w.bytes(VERSION_3)
    w.wrap(TAG.SEQUENCE, tbsEnd)
    const tbs = this.scratch.subarray(w.pos, tbsEnd)
    // ECDSA signatures come DER-encoded (ECDSA-Sig-Value) by default, which is what X.509 carries.
    const signature = nodeSign(this.hash, tbs, this.key)
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue BIT STRING }
    const out = new DerBackWriter(Buffer.allocUnsafe(tlvLength(tbs.length + this.algorithm.length + tlvLength(1 + signature.length))))
    const certEnd = out.pos
    out.bytes(signature)
    out.bytes(ZERO_OCTET)
    out.wrap(TAG.BIT_STRING, certEnd)
    out.bytes(this.algorithm)
    out.bytes(tbs)
    out.wrap(TAG.SEQUENCE, certEnd)
    if (out.pos !== 0) throw new Error('leaf certificate length miscounted')
    return out.buf
  }
}

export function derToPem (der: Uint8Array, label = 'CERTIFICATE'): string {
  // Lines of 64 characters, each ending in a newline (the last one shorter).
  const body = Buffer.from(der.buffer, der.byteOffset, der.byteLength).toString('base64').replace(/.{1,64}/g, '$&\n')
  return `-----BEGIN ${label}-----\n${body}-----END ${label}-----\n`
}
