// Identity vocabulary shared by the CA and the broker: ids, kinds, SPIFFE URIs and serial numbers.
import { ZtError } from './errors.js'

export const KINDS = ['device', 'service', 'operator'] as const
export type Kind = typeof KINDS[number]

/** Kinds that may connect over MQTT; operator certificates are for the admin API only. */
export const MQTT_KINDS: readonly Kind[] = ['device', 'service']

/** 1–64 characters (the CN limit of RFC 5280) of [A-Za-z0-9._-], not starting with '.' or '-'. */
const ID_RE = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$/

/** Group names (Subject OU) follow the id alphabet: they are substituted into topics by ${group}. */
const GROUP_RE = ID_RE

/** SPIFFE trust domain: lower-case letters, digits, '.', '-', '_' (SPIFFE ID spec, section 2.1). */
const TRUST_DOMAIN_RE = /^[a-z0-9._-]{1,255}$/

export const DEFAULT_TRUST_DOMAIN = 'aedes-zt.local'

function describeChar (c: string): string {
  if (c === '\0') return 'NUL'
  if (c === ' ') return 'a space'
  const code = c.codePointAt(0) ?? 0
  if (code < 0x20 || code === 0x7f) return `control character 0x${code.toString(16).padStart(2, '0')}`
  return `'${c}'`
}

function explainBadName (value: string): string {
  if (value.length === 0) return 'is empty'
  if (value.length > 64) return `is ${value.length} characters long (at most 64)`
  if (value[0] === '.' || value[0] === '-') return `starts with '${value[0]}'`
  for (const c of value) {
    if (!/[A-Za-z0-9._-]/.test(c)) return `contains ${describeChar(c)}`
  }
  return 'is not a valid name'
}

export function isValidId (id: string): boolean {
  return ID_RE.test(id)
}

/** Returns the id, or throws ZT_BAD_ID with a message that names the operation and the offending character. */
export function checkId (id: string, operation: string): string {
  if (typeof id !== 'string' || !ID_RE.test(id)) {
    throw new ZtError('ZT_BAD_ID', `${operation}: id ${JSON.stringify(String(id))} ${explainBadName(String(id))}; ids are 1-64 of [A-Za-z0-9._-], not starting with '.' or '-'`, { id })
  }
  return id
}

export function checkGroup (group: string, operation: string): string {
  if (typeof group !== 'string' || !GROUP_RE.test(group)) {
    throw new ZtError('ZT_BAD_ID', `${operation}: group ${JSON.stringify(String(group))} ${explainBadName(String(group))}; groups are 1-64 of [A-Za-z0-9._-], not starting with '.' or '-'`, { group })
  }
  return group
}

export function isKind (kind: string): kind is Kind {
  return (KINDS as readonly string[]).includes(kind)
}

export function checkKind (kind: string, operation: string): Kind {
  if (!isKind(kind)) {
    throw new ZtError('ZT_BAD_KIND', `${operation}: kind ${JSON.stringify(kind)} is not one of ${KINDS.join(', ')}`, { kind })
  }
  return kind
}

export function checkTrustDomain (domain: string, operation: string): string {
  if (!TRUST_DOMAIN_RE.test(domain)) {
    throw new ZtError('ZT_BAD_ARGUMENT', `${operation}: trust domain ${JSON.stringify(domain)} must be 1-255 of lower-case [a-z0-9._-]`, { domain })
  }
  return domain
}

export function spiffeUri (trustDomain: string, kind: Kind, id: string): string {
  return `spiffe://${trustDomain}/${kind}/${id}`
}

export interface SpiffeIdentity {
  trustDomain: string
  kind: Kind
  id: string
}

/** Parses `spiffe://<domain>/<kind>/<id>` strictly; anything else (extra path segments, query, bad id) is null. */
export function parseSpiffeUri (uri: string): SpiffeIdentity | null {
  const m = /^spiffe:\/\/([^/?#]+)\/([^/?#]+)\/([^/?#]+)$/.exec(uri)
  if (m === null) return null
  const [, trustDomain, kind, id] = m
  if (trustDomain === undefined || kind === undefined || id === undefined) return null
  if (!TRUST_DOMAIN_RE.test(trustDomain) || !isKind(kind) || !ID_RE.test(id)) return null
  return { trustDomain, kind, id }
}

/**
 * Canonical serial: lower-case hex of the positive integer, no separators, no leading zeros.
 * Accepts any case, with or without ':' separators (as `openssl x509 -serial` or Node print it).
 * Returns null for anything that is not hex.
 */
export function canonicalSerial (input: string): string | null {
  const hex = input.trim().replace(/:/g, '').toLowerCase()
  if (!/^[0-9a-f]+$/.test(hex)) return null
  const stripped = hex.replace(/^0+/, '')
  return stripped === '' ? '0' : stripped
}

export function checkSerial (input: string, operation: string): string {
  const serial = canonicalSerial(input)
  if (serial === null) {
    throw new ZtError('ZT_BAD_ARGUMENT', `${operation}: serial ${JSON.stringify(input)} is not hexadecimal`, { serial: input })
  }
  return serial
}

/** RFC 5280 section 5.3.1 reason names and codes (7 is unused). */
export const REVOCATION_REASONS = {
  unspecified: 0,
  keyCompromise: 1,
  cACompromise: 2,
  affiliationChanged: 3,
  superseded: 4,
  cessationOfOperation: 5,
  certificateHold: 6,
  removeFromCRL: 8,
  privilegeWithdrawn: 9,
  aACompromise: 10,
} as const

export type RevocationReason = keyof typeof REVOCATION_REASONS

export function checkReason (reason: string, operation: string): RevocationReason {
  // removeFromCRL only makes sense for delta CRLs and certificateHold is not final; we revoke for good.
  // Object.hasOwn: `in` would also accept inherited names such as "constructor" or "toString".
  if (!Object.hasOwn(REVOCATION_REASONS, reason) || reason === 'removeFromCRL' || reason === 'certificateHold') {
    const names = Object.keys(REVOCATION_REASONS).filter((r) => r !== 'removeFromCRL' && r !== 'certificateHold')
    throw new ZtError('ZT_BAD_REASON', `${operation}: reason ${JSON.stringify(reason)} is not one of ${names.join(', ')}`, { reason })
  }
  return reason as RevocationReason
}
