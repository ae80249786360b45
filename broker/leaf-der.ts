// One pass over a client certificate's DER, keeping only the fields broker/identity.ts checks.
//
// A generic X.509 parser (@peculiar/x509 over asn1js) built an object tree per connection and decoded each extension
// again on lookup: about 40 % of the broker's CPU per new connection. The fields the broker needs are few and fixed,
// so they are read straight from the TLVs with ca/der.ts. Anything malformed throws DerError; the caller turns that
// into a refusal.
import { bytesEqual, children, DerError, oid, readOid, readTime, readTlv, TAG, type Tlv } from '../ca/der.js'

/** An OID's content bytes, for comparing against a TLV's value without decoding it. */
const oidValue = (dotted: string): Buffer => Buffer.from(oid(dotted).subarray(2))

const OID = {
  commonName: oidValue('2.5.4.3'),
  organizationalUnit: oidValue('2.5.4.11'),
  keyUsage: oidValue('2.5.29.15'),
  subjectAltName: oidValue('2.5.29.17'),
  basicConstraints: oidValue('2.5.29.19'),
  authorityKeyId: oidValue('2.5.29.35'),
  extKeyUsage: oidValue('2.5.29.37'),
  subjectKeyId: oidValue('2.5.29.14'),
  clientAuth: oidValue('1.3.6.1.5.5.7.3.2'),
  ecPublicKey: '1.2.840.10045.2.1',
  rsaEncryption: '1.2.840.113549.1.1.1',
} as const

/** OpenSSL's names, so refusal details read as they did when node:crypto described the key. */
const KEY_TYPES: Record<string, string> = {
  '1.2.840.113549.1.1.10': 'rsa-pss',
  '1.2.840.10040.4.1': 'dsa',
  '1.2.840.113549.1.3.1': 'dh',
  '1.2.840.10046.2.1': 'dh',
  '1.3.101.110': 'x25519',
  '1.3.101.111': 'x448',
  '1.3.101.112': 'ed25519',
  '1.3.101.113': 'ed448',
}
/** Coordinate size in bytes of the curves the CA issues for, to check the point's length. */
const COORDINATE_BYTES: Record<string, number> = { prime256v1: 32, secp384r1: 48 }
const CURVES: Record<string, string> = {
  '1.2.840.10045.3.1.7': 'prime256v1',
  '1.3.132.0.34': 'secp384r1',
  '1.3.132.0.35': 'secp521r1',
  '1.3.132.0.33': 'secp224r1',
  '1.3.132.0.10': 'secp256k1',
  '1.2.840.10045.3.1.1': 'prime192v1',
  '1.3.36.3.3.2.8.1.1.7': 'brainpoolP256r1',
  '1.3.36.3.3.2.8.1.1.11': 'brainpoolP384r1',
  '1.3.36.3.3.2.8.1.1.13': 'brainpoolP512r1',
}

export type LeafKey =
  | { type: 'ec', curve: string | undefined }
  | { type: 'rsa', modulusBits: number }
  | { type: 'other', name: string }

export interface LeafFields {
  /** TBSCertificate, tag and length included: what the issuer signed. */
  tbs: Uint8Array
  /** The outer signatureAlgorithm (whole AlgorithmIdentifier) and its OID. */
  signatureAlgorithm: Uint8Array
  signatureOid: string
  /** The TBS `signature` field; must equal signatureAlgorithm (RFC 5280 section 4.1.1.2). */
  tbsSignatureAlgorithm: Uint8Array
  signature: Uint8Array
  /** Serial INTEGER contents as hex (sign byte included when present). */
  serialHex: string
  /** Issuer and subject Names, tag and length included. */
  issuer: Uint8Array
  subject: Uint8Array
  notBefore: Date
  notAfter: Date
  /** Every CN and OU value in subject order, decoded as @peculiar/x509 did. */
  cns: string[]
  ous: string[]
  key: LeafKey
  /** undefined: no basicConstraints extension. */
  basicConstraintsCa: boolean | undefined
  /** keyUsage bits, undefined when the extension is absent. */
  keyUsage: { digitalSignature: boolean, keyCertSign: boolean } | undefined
  /** undefined: no extendedKeyUsage extension. */
  clientAuth: boolean | undefined
  /** SAN uniformResourceIdentifier values, in order; other name types are skipped. */
  uris: string[]
  /** authorityKeyIdentifier keyIdentifier, lower-case hex; undefined when absent. */
  authorityKeyId: string | undefined
}

function want (t: Tlv | undefined, tag: number, what: string): Tlv {
  if (t === undefined || t.tag !== tag) throw new DerError(`${what}: expected tag 0x${tag.toString(16)}`)
  // OIDs are compared as bytes, so a malformed one must not pass for merely unknown.
  if (tag === TAG.OID && (t.value.length === 0 || t.value[0] === 0x80 || ((t.value[t.value.length - 1] as number) & 0x80) !== 0)) {
    throw new DerError(`${what}: malformed OBJECT IDENTIFIER`)
  }
  return t
}

/** The one TLV that `bytes` must consist of (an extension value, an RSA key inside its BIT STRING). */
function only (bytes: Uint8Array, tag: number, what: string): Tlv {
  const t = want(readTlv(bytes), tag, what)
  if (t.raw.length !== bytes.length) throw new DerError(`${what}: trailing data`)
  return t
}


/** A DirectoryString as @peculiar/x509's Name.getField decoded it; any other type becomes the hex of its TLV. */
function readString (t: Tlv): string {
  switch (t.tag) {
    case TAG.UTF8_STRING: return Buffer.from(t.value).toString('utf8')
    case 0x13: // PrintableString
    case 0x14: // TeletexString
    case 0x16: // IA5String
      return Buffer.from(t.value).toString('latin1')
    case 0x1e: // BMPString: UTF-16BE
      if (t.value.length % 2 !== 0) throw new DerError('BMPString of odd length')
      return Buffer.from(t.value).swap16().toString('utf16le')
    case 0x1c: { // UniversalString: UTF-32BE
      if (t.value.length % 4 !== 0) throw new DerError('UniversalString not a multiple of 4 bytes')
      const cps: number[] = []
      for (let i = 0; i < t.value.length; i += 4) {
        const cp = (((t.value[i] as number) << 24) | ((t.value[i + 1] as number) << 16) | ((t.value[i + 2] as number) << 8) | (t.value[i + 3] as number)) >>> 0
        if (cp > 0x10ffff) throw new DerError('UniversalString code point out of range')
        cps.push(cp)
      }
      return String.fromCodePoint(...cps)
    }
    default: return Buffer.from(t.raw).toString('hex')
  }
}

function readSubject (name: Tlv, cns: string[], ous: string[]): void {
  for (const rdn of children(name.value)) {
    want(rdn, TAG.SET, 'subject RDN')
    for (const atv of children(rdn.value)) {
      const [type, value, ...extra] = children(want(atv, TAG.SEQUENCE, 'subject attribute').value)
      if (value === undefined || extra.length > 0) throw new DerError('subject attribute: not a type and a value')
      const typeOid = want(type, TAG.OID, 'subject attribute type').value
      if (bytesEqual(typeOid, OID.commonName)) cns.push(readString(value))
      else if (bytesEqual(typeOid, OID.organizationalUnit)) ous.push(readString(value))
    }
  }
}

const SHORT_NAMES: Record<string, string> = {
  '2.5.4.3': 'CN', '2.5.4.6': 'C', '2.5.4.7': 'L', '2.5.4.8': 'ST', '2.5.4.10': 'O', '2.5.4.11': 'OU',
  '0.9.2342.19200300.100.1.25': 'DC', '1.2.840.113549.1.9.1': 'E',
}

/** A Name as one line for refusal details (`CN=x, O=y`); never throws, since it only describes a refusal. */
export function describeName (name: Uint8Array): string {
  try {
    return children(readTlv(name).value).map((rdn) => children(rdn.value).map((atv) => {
      const [type, value] = children(atv.value)
      if (type === undefined || value === undefined) throw new DerError('attribute without a value')
      const id = readOid(type.value)
      return `${SHORT_NAMES[id] ?? id}=${readString(value).replace(/([,+"\\<>;=])/g, '\\$1')}`
    }).join('+')).join(', ')
  } catch {
    return `(unreadable name ${Buffer.from(name).toString('hex').slice(0, 64)})`
  }
}

/** A non-negative INTEGER's size in bits (leading zero octets ignored), as OpenSSL reports an RSA modulus. */
function bitLength (int: Uint8Array): number {
  let i = 0
  while (i < int.length && int[i] === 0) i++
  if (i === int.length) return 0
  return (int.length - i - 1) * 8 + (32 - Math.clz32(int[i] as number))
}

function readKey (spki: Tlv): LeafKey {
  const [alg, bits, ...extra] = children(spki.value)
  if (extra.length > 0) throw new DerError('subjectPublicKeyInfo: trailing data')
  const [algOid, params] = children(want(alg, TAG.SEQUENCE, 'key algorithm').value)
  const keyBits = want(bits, TAG.BIT_STRING, 'subjectPublicKey')
  if (keyBits.value[0] !== 0) throw new DerError('subjectPublicKey: unused bits')
  const type = readOid(want(algOid, TAG.OID, 'key algorithm OID').value)
  if (type === OID.ecPublicKey) {
    // Explicit curve parameters get no name from OpenSSL either.
    if (params?.tag !== TAG.OID) return { type: 'ec', curve: undefined }
    const curveOid = readOid(params.value)
    const curve = CURVES[curveOid] ?? curveOid
    const n = COORDINATE_BYTES[curve]
    const point = keyBits.value.subarray(1)
    // Whether the point is on the curve is OpenSSL's to check (the TLS handshake proved the client holds its key).
    if (n !== undefined && !(point[0] === 0x04 && point.length === 1 + 2 * n) && !((point[0] === 0x02 || point[0] === 0x03) && point.length === 1 + n)) {
      throw new DerError(`subjectPublicKey: not a ${curve} point`)
    }
    return { type: 'ec', curve }
  }
  if (type === OID.rsaEncryption) {
    const [modulus, exponent, ...more] = children(only(keyBits.value.subarray(1), TAG.SEQUENCE, 'RSAPublicKey').value)
    want(exponent, TAG.INTEGER, 'RSA public exponent')
    if (more.length > 0) throw new DerError('RSAPublicKey: trailing data')
    return { type: 'rsa', modulusBits: bitLength(want(modulus, TAG.INTEGER, 'RSA modulus').value) }
  }
  return { type: 'other', name: KEY_TYPES[type] ?? type }
}

/** otherName, rfc822Name, dNSName, x400Address, directoryName, ediPartyName, URI, iPAddress, registeredID. */
const GENERAL_NAME_TAGS = new Set([0xa0, 0x81, 0x82, 0xa3, 0xa4, 0xa5, 0x86, 0x87, 0x88])

/** Applies one extension's value to `out`; unknown extensions are left to OpenSSL, as before. */
function readExtension (id: Uint8Array, value: Uint8Array, out: LeafFields): void {
  if (bytesEqual(id, OID.basicConstraints)) {
    const parts = children(only(value, TAG.SEQUENCE, 'basicConstraints').value)
    const ca = parts[0]?.tag === 0x01 ? parts.shift() : undefined
    if (ca !== undefined && ca.value.length !== 1) throw new DerError('basicConstraints: bad BOOLEAN')
    if (parts.length > 1 || (parts.length === 1 && parts[0]?.tag !== TAG.INTEGER)) throw new DerError('basicConstraints: unexpected fields')
    // cA is DEFAULT FALSE: absent means not a CA.
    out.basicConstraintsCa = ca !== undefined && ca.value[0] !== 0
  } else if (bytesEqual(id, OID.keyUsage)) {
    const bitString = only(value, TAG.BIT_STRING, 'keyUsage')
    const unused = bitString.value[0] ?? 8
    if (unused > 7) throw new DerError('keyUsage: bad unused-bits count')
    const first = bitString.value[1] ?? 0
    const used = (bitString.value.length - 1) * 8 - unused
    // Bit 0 (digitalSignature) is the most significant bit of the first octet; bit 5 is keyCertSign.
    out.keyUsage = { digitalSignature: used > 0 && (first & 0x80) !== 0, keyCertSign: used > 5 && (first & 0x04) !== 0 }
  } else if (bytesEqual(id, OID.extKeyUsage)) {
    out.clientAuth = false
    for (const purpose of children(only(value, TAG.SEQUENCE, 'extendedKeyUsage').value)) {
      if (bytesEqual(want(purpose, TAG.OID, 'extendedKeyUsage purpose').value, OID.clientAuth)) out.clientAuth = true
    }
  } else if (bytesEqual(id, OID.subjectAltName)) {
    for (const name of children(only(value, TAG.SEQUENCE, 'subjectAltName').value)) {
      if (!GENERAL_NAME_TAGS.has(name.tag)) throw new DerError(`subjectAltName: tag 0x${name.tag.toString(16)} is not a GeneralName`)
      // [6] IMPLICIT IA5String uniformResourceIdentifier
      if (name.tag === 0x86) out.uris.push(Buffer.from(name.value).toString('latin1'))
    }
  } else if (bytesEqual(id, OID.authorityKeyId)) {
    const parts = children(only(value, TAG.SEQUENCE, 'authorityKeyIdentifier').value)
    // keyIdentifier [0], authorityCertIssuer [1], authorityCertSerialNumber [2]
    if (parts.some((t) => t.tag !== 0x80 && t.tag !== 0xa1 && t.tag !== 0x82)) throw new DerError('authorityKeyIdentifier: unexpected fields')
    const keyId = parts.find((t) => t.tag === 0x80)
    out.authorityKeyId = keyId === undefined ? undefined : Buffer.from(keyId.value).toString('hex')
  } else if (bytesEqual(id, OID.subjectKeyId)) {
    // Not used here, but OpenSSL refuses a certificate whose SKI does not decode: so do we.
    only(value, TAG.OCTET_STRING, 'subjectKeyIdentifier')
  }
}

/**
 * Reads a leaf certificate. Strict about structure (one Certificate, nothing trailing, the RFC 5280 field order, no
 * extension twice); lenient where @peculiar/x509 was (unknown extensions, other SAN name types).
 * @throws DerError when the DER is malformed
 */
export function readLeaf (der: Uint8Array): LeafFields {
  const cert = only(der, TAG.SEQUENCE, 'Certificate')
  const [tbs, sigAlg, sig, ...extraCert] = children(cert.value)
  if (extraCert.length > 0) throw new DerError('Certificate: more than three fields')
  const tbsTlv = want(tbs, TAG.SEQUENCE, 'TBSCertificate')
  const sigAlgTlv = want(sigAlg, TAG.SEQUENCE, 'signatureAlgorithm')
  const sigAlgOid = children(sigAlgTlv.value)[0]
  const signature = want(sig, TAG.BIT_STRING, 'signatureValue')
  if (signature.value[0] !== 0) throw new DerError('signatureValue: unused bits')

  const fields = children(tbsTlv.value)
  let i = 0
  if (fields[0]?.tag === 0xa0) {
    only((fields[0] as Tlv).value, TAG.INTEGER, 'version')
    i++
  }
  const serial = want(fields[i++], TAG.INTEGER, 'serialNumber')
  if (serial.value.length === 0) throw new DerError('serialNumber: empty INTEGER')
  const tbsSigAlg = want(fields[i++], TAG.SEQUENCE, 'signature')
  const issuer = want(fields[i++], TAG.SEQUENCE, 'issuer')
  const [notBefore, notAfter, ...extraValidity] = children(want(fields[i++], TAG.SEQUENCE, 'validity').value)
  if (extraValidity.length > 0) throw new DerError('validity: more than two times')
  const subject = want(fields[i++], TAG.SEQUENCE, 'subject')
  const spki = want(fields[i++], TAG.SEQUENCE, 'subjectPublicKeyInfo')

  const out: LeafFields = {
    tbs: tbsTlv.raw,
    signatureAlgorithm: sigAlgTlv.raw,
    signatureOid: readOid(want(sigAlgOid, TAG.OID, 'signatureAlgorithm OID').value),
    tbsSignatureAlgorithm: tbsSigAlg.raw,
    signature: signature.value.subarray(1),
    serialHex: Buffer.from(serial.value).toString('hex'),
    issuer: issuer.raw,
    subject: subject.raw,
    notBefore: readTime(notBefore),
    notAfter: readTime(notAfter),
    cns: [],
    ous: [],
    key: readKey(spki),
    basicConstraintsCa: undefined,
    keyUsage: undefined,
    clientAuth: undefined,
    uris: [],
    authorityKeyId: undefined,
  }
  readSubject(subject, out.cns, out.ous)

  // issuerUniqueID [1] and subjectUniqueID [2] are skipped; extensions [3] come last.
  if (fields[i]?.tag === 0x81) i++
  if (fields[i]?.tag === 0x82) i++
  if (fields[i]?.tag === 0xa3) {
    const seen = new Set<string>()
    for (const ext of children(only((fields[i] as Tlv).value, TAG.SEQUENCE, 'extensions').value)) {
      const [id, second, third, ...extra] = children(want(ext, TAG.SEQUENCE, 'extension').value)
      const extnId = want(id, TAG.OID, 'extnID').value
      // critical BOOLEAN DEFAULT FALSE may be absent
      const value = third === undefined ? second : third
      if (third !== undefined) want(second, 0x01, 'critical')
      want(value, TAG.OCTET_STRING, 'extnValue')
      if (extra.length > 0) throw new DerError('extension: more than three fields')
      const key = Buffer.from(extnId).toString('hex')
      // RFC 5280 section 4.2: one instance per extension; which copy would count is anyone's guess.
      if (seen.has(key)) throw new DerError(`extension ${readOid(extnId)} appears twice`)
      seen.add(key)
      readExtension(extnId, (value as Tlv).value, out)
    }
    i++
  }
  if (i !== fields.length) throw new DerError('TBSCertificate: unexpected fields')
  return out
}
