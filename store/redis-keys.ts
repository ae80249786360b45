// Every Redis key the store uses, built in one place from escaped parts under one configurable prefix.
//
// Single Redis (or a primary with replicas), not Redis Cluster: the revoke script touches the cert hashes,
// the revoked hash and the feed stream in one atomic step, which Cluster would only allow if every key
// carried the same {hash tag}. The prefix is refused if it contains braces, so no accidental hash tag
// can appear; moving to Cluster would mean wrapping the prefix in one tag deliberately.
import { ZtError } from '../common/errors.js'

/** @default 'azt:' */
export const DEFAULT_PREFIX = 'azt:'

/** What may appear in a prefix: printable, no braces (hash tags), no glob characters (SCAN MATCH by prefix). */
const PREFIX_RE = /^[A-Za-z0-9._:@/=+-]{0,128}$/

function checkPrefix (prefix: string): string {
  if (typeof prefix !== 'string' || !PREFIX_RE.test(prefix)) {
    throw new ZtError('ZT_BAD_ARGUMENT', `redis store: key prefix ${JSON.stringify(String(prefix))} must be at most 128 of [A-Za-z0-9._:@/=+-]`, { prefix })
  }
  return prefix
}

/**
 * Percent-encodes every byte outside [A-Za-z0-9._-], so a part can never contain the ':' separator (or '%')
 * and two different parts can never build the same key. Ids and canonical serials pass through unchanged.
 */
export function escapePart (part: string): string {
  let out = ''
  for (const byte of Buffer.from(part, 'utf8')) {
    const c = String.fromCharCode(byte)
    out += /[A-Za-z0-9._-]/.test(c) ? c : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`
  }
  return out
}

export interface RedisKeys {
  readonly prefix: string
  /** Hash: id, kind, groups (JSON array), notBefore, notAfter of one issued certificate. */
  cert (serial: string): string
  /** Sorted set of every issued serial, scored by notBefore (ms): the inventory in list order. */
  readonly certs: string
  /** Set of the serials issued to one id: revoke --id and list --id without a scan. */
  id (id: string): string
  /** Hash serial → revocation record "serial id reason revokedAt notAfter": the point lookup and the `cert list` join. */
  readonly revoked: string
  /** Stream, one entry {r: record} per revocation, never trimmed: the ordered durable feed nodes load and follow. */
  readonly revocations: string
  /** Counter: the last CRL number handed out (INCR). */
  readonly crlNumber: string
  /** Hash: der (bytes) and number (decimal) of the latest signed CRL. */
  readonly crl: string
  /** SCAN MATCH pattern for every key under this prefix (tests and tooling clean up with it). */
  readonly pattern: string
}

export function redisKeys (prefix: string = DEFAULT_PREFIX): RedisKeys {
  const p = checkPrefix(prefix)
  return Object.freeze({
    prefix: p,
    cert: (serial: string) => `${p}cert:${escapePart(serial)}`,
    certs: `${p}certs`,
    id: (id: string) => `${p}id:${escapePart(id)}`,
    revoked: `${p}revoked`,
    revocations: `${p}revocations`,
    crlNumber: `${p}crl:number`,
    crl: `${p}crl`,
    // The prefix alphabet has no glob characters, so it is its own pattern.
    pattern: `${p}*`,
  })
}
