// RFC 5280 v2 CRLs signed by the issuing CA: CRL number, AKI, thisUpdate/nextUpdate, reason codes.
import type * as x509 from '@peculiar/x509'
import { REVOCATION_REASONS } from '../common/ids.js'
import type { Revocation } from '../store/types.js'
import { signingAlgorithm, type CryptoKey, type KeyType } from './keys.js'
import { addDays } from './profile.js'
import { integerFromBytes } from './der.js'
import { loadX509 } from './x509.js'

/** id-ce-cRLNumber (RFC 5280 section 5.2.3); @peculiar/x509 has no class for it. */
export const OID_CRL_NUMBER = '2.5.29.20'

/** DER INTEGER of a non-negative bigint, minimal length, with a sign byte when the high bit is set. */
export function derInteger (value: bigint): Uint8Array {
  if (value < 0n) throw new RangeError('derInteger: negative value')
  const hex = value.toString(16)
  return integerFromBytes(Buffer.from(hex.length % 2 === 1 ? `0${hex}` : hex, 'hex'))
}

/** Hex serial as the CRL generator wants it: even length, so leading zeros of the canonical form are restored. */
export function serialToCrlHex (serial: string): string {
  return serial.length % 2 === 1 ? '0' + serial : serial
}

export interface CrlParams {
  issuing: x509.X509Certificate
  signingKey: CryptoKey
  keyType: KeyType
  /** Issuing CA's subject key identifier, hex. */
  keyId: string
  number: bigint
  revocations: readonly Revocation[]
  thisUpdate: Date
  crlDays: number
}

/**
 * Builds and signs the CRL. Revocations of certificates already expired at thisUpdate are left out
 * (RFC 5280 section 3.3 allows it; the store keeps them for good).
 */
export async function buildCrl (p: CrlParams): Promise<x509.X509Crl> {
  const x509 = await loadX509()
  const thisUpdate = new Date(Math.floor(p.thisUpdate.getTime() / 1000) * 1000)
  const entries: x509.X509CrlEntryParams[] = []
  for (const r of p.revocations) {
    if (Date.parse(r.notAfter) <= thisUpdate.getTime()) continue
    const entry: x509.X509CrlEntryParams = { serialNumber: serialToCrlHex(r.serial), revocationDate: new Date(r.revokedAt) }
    // unspecified (0) is expressed by leaving the reason code out (RFC 5280 section 5.3.1).
    const code = REVOCATION_REASONS[r.reason]
    if (code !== 0) entry.reason = code as number as x509.X509CrlReason
    entries.push(entry)
  }
  return await x509.X509CrlGenerator.create({
    issuer: p.issuing.subjectName,
    thisUpdate,
    nextUpdate: addDays(thisUpdate, p.crlDays),
    signingKey: p.signingKey,
    signingAlgorithm: signingAlgorithm(p.keyType),
    entries,
    extensions: [
      new x509.AuthorityKeyIdentifierExtension(p.keyId),
      new x509.Extension(OID_CRL_NUMBER, false, derInteger(p.number)),
    ],
  })
}
