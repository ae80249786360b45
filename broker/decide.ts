// Admission decisions at CONNECT as plain functions: certificate identity, revocation, inventory, client id binding.
import { isValidId } from '../common/ids.js'
import type { CertStore } from '../store/types.js'
import type { Identity, IdentityReader } from './identity.js'

/** MQTT 3.1.1 CONNACK return codes. */
export const CONNACK = Object.freeze({
  accepted: 0,
  unacceptableProtocol: 1,
  identifierRejected: 2,
  serverUnavailable: 3,
  badCredentials: 4,
  notAuthorized: 5,
})

/** What the plugin needs of the revoked set (RevocationMirror fits). */
export interface RevocationView {
  isRevoked (serial: string): boolean
  /** The revocation's record (its reason) for a revoked serial, else undefined. */
  get (serial: string): { serial: string, id: string, reason: string } | undefined
  state (): { current: boolean }
  on (event: 'revoked', listener: (revocation: { serial: string, id: string, reason: string }, latencyMs: number) => void): unknown
  off (event: 'revoked', listener: (revocation: { serial: string, id: string, reason: string }, latencyMs: number) => void): unknown
}

export interface ConnectRefusal {
  /** CONNACK return code. */
  code: number
  /** Short stable reason for audit lines. */
  reason: string
  detail: string
}

export interface ConnectInput {
  /** Whether a CA is configured at all. */
  configured: boolean
  /** Whether the connection is TLS. */
  tls: boolean
  /** Node's verdict on the chain (OpenSSL), which the identity check complements and never replaces. */
  tlsAuthorized: boolean
  /** The connection came through the plugin's own TLS server (trust store: our two CA certificates only). */
  chainVerifiedByOurTls?: boolean
  /** The peer certificate's DER, read fresh from the socket on every connection (resumed sessions included). */
  certificate: Uint8Array | undefined
  reader: IdentityReader | undefined
  revocation: RevocationView | undefined
  /** The inventory; required when requireIssuedSerial. */
  store: Pick<CertStore, 'getIssued'> | undefined
  requireIssuedSerial: boolean
  now?: Date
}

export type ConnectDecision =
  | { ok: true, identity: Identity }
  | ({ ok: false, identity?: Identity } & ConnectRefusal)

function no (code: number, reason: string, detail: string, identity?: Identity): ConnectDecision {
  return identity === undefined ? { ok: false, code, reason, detail } : { ok: false, code, reason, detail, identity }
}

/**
 * Decides whether a connection's certificate may speak MQTT. Nothing here is cached across connections except the
 * pure certificate parse inside `reader`: revocation and inventory are asked every time.
 */
export async function decideConnect (input: ConnectInput): Promise<ConnectDecision> {
  const { reader, revocation } = input
  if (!input.configured || reader === undefined) return no(CONNACK.serverUnavailable, 'not-configured', 'no CA is configured: the broker admits nobody')
  if (!input.tls) return no(CONNACK.notAuthorized, 'no-tls', 'the connection is not TLS')
  if (!input.tlsAuthorized) return no(CONNACK.notAuthorized, 'tls-unauthorized', 'the TLS layer did not verify the client certificate')
  const read = reader.read(input.certificate, input.now, { chainVerifiedByOurTls: input.chainVerifiedByOurTls === true })
  if (!read.ok) return no(CONNACK.notAuthorized, read.reason, read.detail)
  const identity = read.identity
  if (revocation === undefined) return no(CONNACK.serverUnavailable, 'no-revocation-source', 'no revocation mirror is configured', identity)
  if (!revocation.state().current) return no(CONNACK.serverUnavailable, 'revocation-not-current', 'this node cannot confirm it knows every revocation', identity)
  if (revocation.isRevoked(identity.serial)) return no(CONNACK.notAuthorized, 'revoked', `serial ${identity.serial} is revoked`, identity)
  if (input.requireIssuedSerial) {
    if (input.store === undefined) return no(CONNACK.serverUnavailable, 'no-store', 'identity.requireIssuedSerial is on but no certificate store is configured', identity)
    let record
    try {
      record = await input.store.getIssued(identity.serial)
    } catch (err) {
      return no(CONNACK.serverUnavailable, 'store-unavailable', `inventory lookup failed: ${(err as Error).message}`, identity)
    }
    if (record === null) return no(CONNACK.notAuthorized, 'unknown-serial', `serial ${identity.serial} is not in the CA inventory`, identity)
    if (record.id !== identity.id || record.kind !== identity.kind) {
      return no(CONNACK.notAuthorized, 'inventory-mismatch', `inventory has serial ${identity.serial} as ${record.kind}/${record.id}, certificate says ${identity.kind}/${identity.id}`, identity)
    }
    // The lookup took time: a revocation may have arrived meanwhile.
    if (revocation.isRevoked(identity.serial)) return no(CONNACK.notAuthorized, 'revoked', `serial ${identity.serial} is revoked`, identity)
  }
  return { ok: true, identity }
}

export type ClientIdBinding = { ok: true, clientId: string } | ({ ok: false } & ConnectRefusal)

/**
 * The MQTT client id must be the certificate id (or `<id>:<suffix>` when allowed), so no device can reach another's
 * session. An empty id with a clean session is given the certificate id; with a persistent session it is refused.
 */
export function bindClientId (raw: string, clean: boolean, id: string, allowSuffix: boolean): ClientIdBinding {
  if (raw === '') {
    if (clean) return { ok: true, clientId: id }
    return { ok: false, code: CONNACK.identifierRejected, reason: 'empty-client-id-persistent', detail: 'an empty client id needs a clean session' }
  }
  if (raw === id) return { ok: true, clientId: raw }
  if (allowSuffix && raw.startsWith(`${id}:`) && isValidId(raw.slice(id.length + 1))) return { ok: true, clientId: raw }
  return {
    ok: false,
    code: CONNACK.identifierRejected,
    reason: 'client-id-mismatch',
    detail: `client id ${JSON.stringify(raw.slice(0, 200))} is not the certificate id ${JSON.stringify(id)}${allowSuffix ? ` or ${id}:<suffix>` : ''}`,
  }
}
