// Who a connection is: the identity read from its client certificate's DER, or the short reason it is refused.
import 'reflect-metadata'
import { createHash, verify as verifySignature, X509Certificate as NodeX509, type KeyObject } from 'node:crypto'
import * as x509 from '@peculiar/x509'
import { canonicalSerial, isValidId, KINDS, MQTT_KINDS, parseSpiffeUri, type Kind } from '../common/ids.js'
import { bytesEqual } from '../ca/der.js'
import { describeName, readLeaf, type LeafFields, type LeafKey } from './leaf-der.js'

/** A certificate-backed identity allowed to speak MQTT. */
export interface Identity {
  id: string
  kind: Kind
  groups: readonly string[]
  /** Canonical serial (lower-case hex, no leading zeros). */
  serial: string
  trustDomain: string
  /** SHA-256 of the certificate DER, lower-case hex. */
  fingerprint: string
  notBefore: Date
  notAfter: Date
}

/** Stable, short reasons for refusing a certificate; they appear verbatim in audit lines and the README table. */
export type IdentityRefusal =
  | 'no-certificate'
  | 'unparsable-certificate'
  | 'foreign-issuer'
  | 'bad-signature'
  | 'ca-certificate'
  | 'no-basic-constraints'
  | 'no-digital-signature'
  | 'no-client-auth'
  | 'cn-count'
  | 'san-uri-count'
  | 'bad-spiffe-uri'
  | 'wrong-trust-domain'
  | 'cn-uri-mismatch'
  | 'kind-not-allowed'
  | 'weak-key'
  | 'bad-group'
  | 'expired'
  | 'not-yet-valid'

export type IdentityResult =
  | { ok: true, identity: Identity }
  | { ok: false, reason: IdentityRefusal, detail: string }

/** What a certificate is checked against: our issuing CA and trust domain. */
export interface TrustAnchor {
  trustDomain: string
  /** Exact DER of the issuing CA's subject name: our CA copies it byte for byte into every leaf's issuer. */
  issuerName: Uint8Array
  /** Subject key identifier of the issuing CA, lower-case hex. */
  issuerKeyId: string
  issuer: NodeX509
  /** The issuing CA's public key, made once: `X509Certificate.publicKey` builds a new KeyObject on every read. */
  issuerKey: KeyObject
}

/** Leaf signature algorithms our CA uses (ca/leaf.ts): ECDSA or RSA PKCS#1 v1.5, digest by OID. */
const SIGNATURE_HASHES: Record<string, string> = {
  '1.2.840.10045.4.3.2': 'sha256',
  '1.2.840.10045.4.3.3': 'sha384',
  '1.2.840.10045.4.3.4': 'sha512',
  '1.2.840.113549.1.1.11': 'sha256',
  '1.2.840.113549.1.1.12': 'sha384',
  '1.2.840.113549.1.1.13': 'sha512',
}


/** Builds the trust anchor from the issuing CA certificate (PEM or DER) and our trust domain. */
export function trustAnchor (issuingCa: string | Uint8Array, trustDomain: string): TrustAnchor {
  const ca = new x509.X509Certificate(typeof issuingCa === 'string' ? issuingCa : new Uint8Array(issuingCa))
  const ski = ca.getExtension(x509.SubjectKeyIdentifierExtension)
  if (ski === null) throw new Error(`broker trust anchor: issuing CA "${ca.subject}" has no subject key identifier`)
  const bc = ca.getExtension(x509.BasicConstraintsExtension)
  if (bc === null || !bc.ca) throw new Error(`broker trust anchor: "${ca.subject}" is not a CA certificate`)
  const issuer = new NodeX509(Buffer.from(ca.rawData))
  let issuerName: Uint8Array
  try {
    issuerName = readLeaf(new Uint8Array(ca.rawData)).subject
  } catch (err) {
    throw new Error(`broker trust anchor: issuing CA "${ca.subject}" cannot be read: ${(err as Error).message}`)
  }
  return {
    trustDomain,
    issuerName,
    issuerKeyId: ski.keyId.toLowerCase(),
    issuer,
    issuerKey: issuer.publicKey,
  }
}

/**
 * Frozen group lists shared by the identities that have the same one: a fleet has a handful of distinct lists and
 * thousands of certificates, each of which is cached and held by its connections. Immutable, so sharing is safe.
 * Bounded: past MAX_SHARED_GROUP_LISTS distinct lists, new ones are simply not shared.
 */
const SHARED_GROUP_LISTS = new Map<string, readonly string[]>()
const MAX_SHARED_GROUP_LISTS = 1_024
const NO_GROUPS: readonly string[] = Object.freeze([])

function sharedGroups (groups: string[]): readonly string[] {
  if (groups.length === 0) return NO_GROUPS
  // Groups are in the id alphabet, which has no '/': the joined key is unambiguous.
  const key = groups.join('/')
  const shared = SHARED_GROUP_LISTS.get(key)
  if (shared !== undefined) return shared
  const list = Object.freeze(groups)
  if (SHARED_GROUP_LISTS.size < MAX_SHARED_GROUP_LISTS) SHARED_GROUP_LISTS.set(key, list)
  return list
}

function refuse (reason: IdentityRefusal, detail: string): IdentityResult {
  return { ok: false, reason, detail }
}

function checkKey (key: LeafKey): string | null {
  switch (key.type) {
    case 'ec':
      // OpenSSL's names for P-256 and P-384; every other curve is outside what the CA issues.
      if (key.curve === 'prime256v1' || key.curve === 'secp384r1') return null
      return `EC curve ${key.curve ?? 'unknown'} (P-256 or P-384 required)`
    case 'rsa':
      if (key.modulusBits >= 2048) return null
      return `RSA-${key.modulusBits} (at least 2048 bits required)`
    default:
      return `key type ${key.name} (EC P-256/P-384 or RSA >= 2048 required)`
  }
}

/** Whether our issuing CA signed exactly these TBS bytes with an algorithm it uses. */
function signedByAnchor (leaf: LeafFields, anchor: TrustAnchor): boolean {
  // The algorithm outside the signature is not covered by it: it must repeat the signed one (as OpenSSL requires).
  if (!bytesEqual(leaf.signatureAlgorithm, leaf.tbsSignatureAlgorithm)) return false
  const hash = SIGNATURE_HASHES[leaf.signatureOid]
  if (hash === undefined) return false
  try {
    return verifySignature(hash, leaf.tbs, anchor.issuerKey, leaf.signature)
  } catch {
    // A key/algorithm mismatch or a garbled signature: not ours either way.
    return false
  }
}

/**
 * Reads and checks the identity in a client certificate (DER). Pure: the answer depends only on the DER, the
 * anchor and `kinds`, so it may be cached per fingerprint. Validity dates are NOT checked here (they change with
 * time): see checkValidity. Revocation and inventory are never part of this answer.
 * @param kinds kinds accepted; default the MQTT ones (device, service). The admin API passes ['operator'].
 */
export function readIdentity (der: Uint8Array, anchor: TrustAnchor, kinds: readonly Kind[] = MQTT_KINDS): IdentityResult {
  if (der.length === 0) return refuse('no-certificate', 'the client presented no certificate')
  return readFingerprinted(der, createHash('sha256').update(der).digest('hex'), anchor, kinds, true)
}

function readFingerprinted (der: Uint8Array, fingerprint: string, anchor: TrustAnchor, kinds: readonly Kind[], checkSignature: boolean): IdentityResult {
  let cert: LeafFields
  try {
    cert = readLeaf(der)
  } catch (err) {
    return refuse('unparsable-certificate', `certificate ${fingerprint.slice(0, 16)} does not parse: ${(err as Error).message}`)
  }

  // Issued directly by our issuing CA: same issuer name, same key id, and the signature verifies under its key.
  // `checkSignature` is false only when OpenSSL verified the chain against a trust store holding nothing but our two
  // CA certificates (see IdentityReader.read): then a leaf naming our issuing CA as issuer was signed by its key.
  if (!bytesEqual(cert.issuer, anchor.issuerName)) {
    return refuse('foreign-issuer', `issuer "${describeName(cert.issuer)}" is not our issuing CA`)
  }
  if (cert.authorityKeyId === undefined || cert.authorityKeyId !== anchor.issuerKeyId) {
    return refuse('foreign-issuer', `authority key id ${cert.authorityKeyId ?? 'missing'} is not our issuing CA's ${anchor.issuerKeyId}`)
  }
  if (checkSignature && !signedByAnchor(cert, anchor)) {
    return refuse('bad-signature', 'the certificate signature does not verify under our issuing CA key')
  }

  if (cert.basicConstraintsCa === undefined) return refuse('no-basic-constraints', 'the certificate has no basicConstraints (CA:FALSE required)')
  if (cert.basicConstraintsCa) return refuse('ca-certificate', 'the certificate is a CA certificate (CA:TRUE)')
  if (cert.keyUsage === undefined || !cert.keyUsage.digitalSignature) {
    return refuse('no-digital-signature', 'keyUsage digitalSignature is missing')
  }
  if (cert.keyUsage.keyCertSign) return refuse('ca-certificate', 'a client certificate may not carry keyCertSign')
  if (cert.clientAuth !== true) return refuse('no-client-auth', 'extendedKeyUsage clientAuth is missing')

  const keyProblem = checkKey(cert.key)
  if (keyProblem !== null) return refuse('weak-key', keyProblem)

  const cns = cert.cns
  if (cns.length !== 1) return refuse('cn-count', `the subject has ${cns.length} CN values (exactly one required)`)
  const cn = cns[0] as string
  const uris = cert.uris
  if (uris.length !== 1) return refuse('san-uri-count', `the certificate has ${uris.length} SAN URIs (exactly one required)`)
  const uri = uris[0] as string
  const spiffe = parseSpiffeUri(uri)
  if (spiffe === null) return refuse('bad-spiffe-uri', `SAN URI ${JSON.stringify(uri)} is not spiffe://<trust-domain>/<kind>/<id>`)
  if (spiffe.trustDomain !== anchor.trustDomain) {
    return refuse('wrong-trust-domain', `trust domain ${JSON.stringify(spiffe.trustDomain)} is not ours (${anchor.trustDomain})`)
  }
  if (cn !== spiffe.id) return refuse('cn-uri-mismatch', `CN ${JSON.stringify(cn)} differs from the SAN URI id ${JSON.stringify(spiffe.id)}`)
  if (!kinds.includes(spiffe.kind)) {
    return refuse('kind-not-allowed', kinds === MQTT_KINDS ? `kind ${spiffe.kind} may not connect over MQTT` : `kind ${spiffe.kind} is not accepted here (${kinds.join(' or ')} only)`)
  }

  const groups: string[] = []
  for (const ou of cert.ous) {
    if (!isValidId(ou)) return refuse('bad-group', `group (OU) ${JSON.stringify(ou)} is outside the id alphabet`)
    if (!groups.includes(ou)) groups.push(ou)
  }

  const serial = canonicalSerial(cert.serialHex)
  if (serial === null) return refuse('unparsable-certificate', `serial ${JSON.stringify(cert.serialHex)} is not hexadecimal`)

  return {
    ok: true,
    identity: Object.freeze({
      id: spiffe.id,
      // The shared constants rather than the substrings of this certificate's URI (equal values).
      kind: KINDS.find((k) => k === spiffe.kind) ?? spiffe.kind,
      groups: sharedGroups(groups),
      serial,
      trustDomain: anchor.trustDomain,
      fingerprint,
      notBefore: cert.notBefore,
      notAfter: cert.notAfter,
    }),
  }
}

/** The time-dependent part, re-checked on every connection: resumed TLS sessions skip OpenSSL's date checks. */
export function checkValidity (identity: Identity, now: Date = new Date()): IdentityResult {
  if (now.getTime() < identity.notBefore.getTime()) return refuse('not-yet-valid', `certificate is valid from ${identity.notBefore.toISOString()}`)
  if (now.getTime() > identity.notAfter.getTime()) return refuse('expired', `certificate expired at ${identity.notAfter.toISOString()}`)
  return { ok: true, identity }
}

/** How the TLS layer in front of a read was set up. */
export interface ReadOptions {
  /**
   * The connection came through a TLS server whose trust store is exactly our root and issuing CA (the plugin's own
   * `createServer`, with `rejectUnauthorized`): OpenSSL has verified the leaf's signature under the certificate
   * its issuer name and key id designate, and only our issuing CA carries those (a look-alike would itself need our
   * root's signature). The signature check, about 100 µs of a new connection, is then skipped, not the name and
   * key id checks. Anything else (a TLS server configured by someone else) is checked in full.
   */
  chainVerifiedByOurTls?: boolean
}

/**
 * readIdentity with a bounded cache per certificate fingerprint, so reconnecting devices are not re-parsed.
 * Only the pure certificate answer is cached: revocation and inventory checks happen on every connection.
 */
export class IdentityReader {
  readonly #anchor: TrustAnchor
  readonly #max: number
  readonly #kinds: readonly Kind[]
  /** Per fingerprint: the identity itself when the certificate is acceptable (no result wrapper per entry), else the refusal. */
  readonly #cache = new Map<string, Identity | IdentityResult>()
  /** Identities whose leaf signature we checked ourselves; the others were vouched for by our own TLS server only. */
  readonly #signatureChecked = new WeakSet<Identity>()

  /** `kinds`: see readIdentity; the cache holds answers for these kinds only, so each use needs its own reader. */
  constructor (anchor: TrustAnchor, maxEntries = 10_000, kinds: readonly Kind[] = MQTT_KINDS) {
    this.#anchor = anchor
    this.#max = maxEntries
    this.#kinds = kinds
  }

  get anchor (): TrustAnchor { return this.#anchor }

  read (der: Uint8Array | undefined | null, now: Date = new Date(), options: ReadOptions = {}): IdentityResult {
    if (der === undefined || der === null || der.length === 0) return refuse('no-certificate', 'the client presented no certificate')
    const key = createHash('sha256').update(der).digest('hex')
    const checkSignature = options.chainVerifiedByOurTls !== true
    let entry = this.#cache.get(key)
    if (entry !== undefined) {
      // Map order is insertion order: re-inserting makes this the most recently used entry.
      this.#cache.delete(key)
    }
    // A refusal stays a refusal; an acceptance made without our signature check is redone when one is needed.
    if (entry === undefined || (checkSignature && !('ok' in entry) && !this.#signatureChecked.has(entry))) {
      const result = readFingerprinted(der, key, this.#anchor, this.#kinds, checkSignature)
      entry = result.ok ? result.identity : result
      if (result.ok && checkSignature) this.#signatureChecked.add(result.identity)
    }
    this.#cache.set(key, entry)
    if (this.#cache.size > this.#max) {
      const oldest = this.#cache.keys().next().value
      if (oldest !== undefined) this.#cache.delete(oldest)
    }
    return 'ok' in entry ? entry : checkValidity(entry, now)
  }

  get size (): number { return this.#cache.size }
}
