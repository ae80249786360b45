// TLS server options for mutual TLS with our own CA only, and the per-socket hardening applied to each connection.
import type { TLSSocket, TlsOptions } from 'node:tls'
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
