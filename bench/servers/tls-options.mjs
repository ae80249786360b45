// The broker's own TLS server options (broker/tls.ts) for the baselines, read from a bench CA home, so "same TLS
// settings as the broker" holds by construction. Needs `npm run build`.
import fs from 'node:fs'
import path from 'node:path'
import { tlsServerOptions } from '../../dist/broker/tls.js'

export function brokerTlsOptions (home) {
  const read = (f) => fs.readFileSync(path.join(home, f), 'utf8')
  const material = { rootPem: read('ca.pem'), issuingPem: read('issuing.pem'), serverCertPem: read('server.pem'), serverKeyPem: read('server.key'), trustDomain: '' }
  return tlsServerOptions(material, { handshakeTimeoutMs: 10_000 })
}
