// TLS server options for mutual TLS with our own CA only, and the per-socket hardening applied to each connection.
import type { TLSSocket, TlsOptions } from 'node:tls'
import { children, DerError, readTlv, TAG } from '../ca/der.js'
import type { BrokerLimits } from './limits.js'

/** What the TLS layer and the identity check need from a CA home (a `LoadedHome` from ca/ fits). */
export interface TrustMaterial {
  /** Root CA certificate, PEM. */
  rootPem: string
  /** Issuing CA certificate, PEM: client certificates must be issued by it directly. */
  issuingPem: string
  /** Broker certificate (+ issuing CA), PEM. */
  serverCertPem: string
  serverKeyPem: string
  trustDomain: string
}

/** Builds TrustMaterial from a loaded home. */
export function trustFromHome (home: { rootPem: string, issuingPem: string, serverCertPem: string, serverKeyPem: string, config: { trustDomain: string } }): TrustMaterial {
  return {
    rootPem: home.rootPem,
    issuingPem: home.issuingPem,
    serverCertPem: home.serverCertPem,
    serverKeyPem: home.serverKeyPem,
    trustDomain: home.config.trustDomain,
  }
}

export function tlsServerOptions (ca: TrustMaterial, limits: Pick<BrokerLimits, 'handshakeTimeoutMs'>): TlsOptions {
  return {
    key: ca.serverKeyPem,
    cert: ca.serverCertPem,
    // Only our CA: passing `ca` replaces Node's bundled roots, so no public CA can vouch for a client.
    ca: [ca.issuingPem, ca.rootPem],
    requestCert: true,
    rejectUnauthorized: true,
    minVersion: 'TLSv1.2',
    // Node's default is 120 s: far too long to hold a socket for a peer that has proven nothing.
    handshakeTimeout: limits.handshakeTimeoutMs,
  }
}

/** Per-connection hardening: no client-initiated renegotiation (TLS 1.2), no Nagle delay on small MQTT packets. */
export function hardenTlsSocket (socket: TLSSocket): void {
  if (typeof socket.disableRenegotiation === 'function') socket.disableRenegotiation()
  socket.setNoDelay(true)
}

/**
 * The client certificate's DER as OpenSSL keeps it in the TLS session: the `peer [3] EXPLICIT Certificate` field of
 * the SSL_SESSION encoding (ssl/ssl_asn1.c), which is where SSL_get_peer_certificate reads it too, for full and
 * resumed handshakes alike. Node's getPeerCertificate()/getPeerX509Certificate() cost 130-340 µs on their first call
 * per connection (OpenSSL re-decodes the certificates it hands out); serialising the session and taking the field
 * out costs about 16 µs. The session holds the resumption secret, so the buffer is zeroed before returning.
 * Falls back to getPeerCertificate(false), the cheaper of Node's two, if the encoding is not as expected.
 */
export function peerCertificateDer (socket: Pick<TLSSocket, 'getSession' | 'getPeerCertificate'>): Uint8Array | undefined {
  const session = socket.getSession()
  if (session !== undefined) {
    try {
      const der = certificateFromSession(session)
      if (der !== undefined) return der
    } catch {
      // Not the encoding we know: ask OpenSSL the slow way.
    } finally {
      session.fill(0)
    }
  }
  return socket.getPeerCertificate(false)?.raw
}

/** The `[3]` field of an SSL_SESSION encoding, copied out; undefined when the session has no peer certificate. */
export function certificateFromSession (session: Uint8Array): Uint8Array | undefined {
  const outer = readTlv(session)
  if (outer.tag !== TAG.SEQUENCE) throw new DerError('SSL_SESSION is not a SEQUENCE')
  const field = children(outer.value).find((t) => t.tag === PEER_FIELD)
  if (field === undefined) return undefined
  const cert = readTlv(field.value)
  if (cert.tag !== TAG.SEQUENCE || cert.raw.length !== field.value.length) throw new DerError('SSL_SESSION peer is not one certificate')
  return Buffer.from(cert.raw) // a copy: the session buffer is zeroed
}

/** [3] EXPLICIT, constructed: `peer` in OpenSSL's SSL_SESSION_ASN1. */
const PEER_FIELD = 0xa3
