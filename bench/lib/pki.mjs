// The bench's CA home, made once per bench invocation with the project's own CA, and the certificates every run reuses.
import 'reflect-metadata'
import fs from 'node:fs'
import path from 'node:path'
import tls from 'node:tls'

/** Fixed and obviously fake: it only encrypts the keys of a throw-away bench CA in a temp dir. */
export const BENCH_PASSPHRASE = 'bench-passphrase-not-secret'

/** The service identity that subscribes to every device's telemetry (kind service, group ingest: the shipped policy). */
export const SERVICE_ID = 'ingest-1'

export function deviceId (i) {
  return `dev-${i}`
}

/**
 * Creates the CA home in dir/home, issues `devices` device certificates (group sensors) and one service certificate
 * (group ingest) with generated keys in one batch (the fast path: no CSR round trip), and writes a signed CRL in
 * PEM for Mosquitto. Returns the paths, the PEMs, and lazily built TLS client contexts.
 */
export async function makeBenchPki (root, dir, devices) {
  const ca = await import(path.join(root, 'dist/ca/index.js'))
  const home = path.join(dir, 'home')
  const loaded = await ca.initHome(home, { passphrase: BENCH_PASSPHRASE, serverNames: ['localhost', '127.0.0.1'] })
  const authority = await ca.openAuthority(home, { passphrase: BENCH_PASSPHRASE })
  const started = performance.now()
  let issued
  let crlDer
  try {
    const reqs = [{ id: SERVICE_ID, kind: 'service', groups: ['ingest'], generateKey: true }]
    for (let i = 0; i < devices; i++) reqs.push({ id: deviceId(i), kind: 'device', groups: ['sensors'], generateKey: true })
    const outcomes = await authority.issueMany(reqs, { stopOnError: true })
    const bad = outcomes.find((o) => !o.ok)
    if (bad !== undefined || outcomes.length !== reqs.length) throw new Error(`bench CA: issuing failed: ${bad?.error.message ?? 'rows missing'}`)
    issued = outcomes.map((o) => o.bundle)
    // One revoked certificate that is not used otherwise, so every CRL check has something to look through.
    const spare = await authority.issue({ id: 'revoked-spare', kind: 'device', groups: ['sensors'], generateKey: true })
    await authority.revoke({ serial: spare.record.serial }, 'superseded')
    crlDer = await authority.crl()
  } finally {
    await authority.close()
  }
  const issueMs = performance.now() - started
  const crlPem = `-----BEGIN X509 CRL-----\n${Buffer.from(crlDer).toString('base64').match(/.{1,64}/g).join('\n')}\n-----END X509 CRL-----\n`
  const crlFile = path.join(dir, 'crl.pem')
  fs.writeFileSync(crlFile, crlPem)

  const toCred = (b) => ({ id: b.record.id, serial: b.record.serial, record: b.record, bundlePem: b.bundlePem, keyPem: b.keyPem })
  const service = toCred(issued[0])
  const deviceCreds = issued.slice(1).map(toCred)
  const contexts = new Map()
  const contextFor = (cred) => {
    let c = contexts.get(cred.id)
    if (c === undefined) {
      // The bundle (leaf + issuing CA) is what `cert issue` gives a device; the root is what it trusts.
      c = tls.createSecureContext({ key: cred.keyPem, cert: cred.bundlePem, ca: loaded.rootPem, minVersion: 'TLSv1.2' })
      contexts.set(cred.id, c)
    }
    return c
  }
  return {
    home,
    paths: loaded.paths,
    rootPem: loaded.rootPem,
    issuingPem: loaded.issuingPem,
    serverCertPem: loaded.serverCertPem,
    serverKeyPem: loaded.serverKeyPem,
    crlFile,
    issueMs,
    service,
    devices: deviceCreds,
    contextFor,
    /** Builds the client contexts of devices [from, to) ahead of a measured phase, so their cost stays out of it. */
    warmContexts (from, to) {
      for (let i = from; i < Math.min(to, deviceCreds.length); i++) contextFor(deviceCreds[i])
    },
  }
}
