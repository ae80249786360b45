// Issuance benchmark: certificates per second from CSRs, `cert issue-bulk` against a shell loop of `openssl x509 -req`.
//
//   npm run build && node bench/issuance.mjs [--count 1000] [--openssl 50] [--runs 1]
//   taskset -c 0 node bench/issuance.mjs      # pin to one core, as the README figure is measured
//
// --runs N repeats the library and CLI runs (alternately, each into a fresh output directory) and reports medians:
// on a shared machine one run says little. Everything lives in a temp directory (os.tmpdir(), so $TMPDIR) that is
// removed at the end; the figures go to stdout (last line JSON).
import 'reflect-metadata'
import { execFileSync, spawnSync } from 'node:child_process'
import { webcrypto } from 'node:crypto'
import { mkdtempSync, promises as fs, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import * as x509 from '@peculiar/x509'
import { spread } from './lib/stats.mjs'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const { initHome, openAuthority, issueBulk } = await import(path.join(root, 'dist/ca/index.js')).catch(() => {
  console.error('bench/issuance: dist/ is missing; run `npm run build` first')
  process.exit(1)
})

const { values } = parseArgs({ options: { count: { type: 'string', default: '1000' }, openssl: { type: 'string', default: '50' }, runs: { type: 'string', default: '1' } } })
const COUNT = Number(values.count)
const RUNS = Math.max(1, Number(values.runs))
const OPENSSL_COUNT = Math.min(Number(values.openssl), COUNT)
const PASSPHRASE = 'bench-passphrase-not-secret'

const tmp = mkdtempSync(path.join(os.tmpdir(), 'aedes-zt-bench-'))
process.on('exit', () => rmSync(tmp, { recursive: true, force: true }))

const home = path.join(tmp, 'home')
await initHome(home, { passphrase: PASSPHRASE })

// Device CSRs (EC P-256, the default device key), made in-process: 1 000 `openssl req` runs would take longer than the benchmark.
process.stderr.write(`making ${COUNT} CSRs...\n`)
const csrDir = path.join(tmp, 'csr')
await fs.mkdir(csrDir)
const rows = ['id,kind,groups,csr']
for (let i = 0; i < COUNT; i++) {
  const keys = await webcrypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, false, ['sign', 'verify'])
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({ name: `CN=device-${i}`, keys, signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' } })
  await fs.writeFile(path.join(csrDir, `device-${i}.csr`), csr.toString('pem'))
  rows.push(`device-${i},device,sensors,csr/device-${i}.csr`)
}
await fs.writeFile(path.join(tmp, 'manifest.csv'), rows.join('\n') + '\n')

const authority = await openAuthority(home, { passphrase: PASSPHRASE })
const libRuns = []
const cliRuns = []
for (let run = 0; run < RUNS; run++) {
  const suffix = RUNS === 1 ? '' : `-${run}`
  // 1. issue-bulk through the library: read CSRs, verify, sign, record in the inventory, write each bundle durably.
  const started = process.hrtime.bigint()
  const summary = await issueBulk(authority, path.join(tmp, 'manifest.csv'), { outDir: path.join(tmp, `out-lib${suffix}`) })
  libRuns.push(Number(process.hrtime.bigint() - started) / 1e9)
  if (summary.issued !== COUNT) throw new Error(`issue-bulk issued ${summary.issued} of ${COUNT}: ${JSON.stringify(summary.failed.slice(0, 3))}`)

  // 2. The same through the CLI, a fresh process: start-up and CA key decryption included.
  const cliStart = process.hrtime.bigint()
  const cli = spawnSync(process.execPath, [path.join(root, 'bin/aedes-zt.js'), 'cert', 'issue-bulk', '--home', home, '--manifest', path.join(tmp, 'manifest.csv'), '--out-dir', path.join(tmp, `out-cli${suffix}`)],
    { env: { ...process.env, AEDES_ZT_CA_PASSPHRASE: PASSPHRASE }, encoding: 'utf8' })
  cliRuns.push(Number(process.hrtime.bigint() - cliStart) / 1e9)
  if (cli.status !== 0) throw new Error(`aedes-zt cert issue-bulk failed: ${cli.stderr}`)
}
const libSeconds = spread(libRuns).median
const cliSeconds = spread(cliRuns).median
// 1b. The CPU part alone (CSR parse + signature check + sign + PEM), CSRs already in memory: what one core sustains.
const csrTexts = await Promise.all(Array.from({ length: COUNT }, async (_, i) => await fs.readFile(path.join(csrDir, `device-${i}.csr`))))
const signStart = process.hrtime.bigint()
for (let i = 0; i < COUNT; i++) await authority.sign({ id: `device-${i}`, groups: ['sensors'], csr: csrTexts[i] })
const signSeconds = Number(process.hrtime.bigint() - signStart) / 1e9
await authority.close()

// 3. A shell loop of `openssl x509 -req` with the same profile, on a subset, extrapolated per certificate.
const ext = path.join(tmp, 'leaf.cnf')
await fs.writeFile(ext, [
  'basicConstraints = critical, CA:FALSE',
  'keyUsage = critical, digitalSignature',
  'extendedKeyUsage = clientAuth',
  'subjectKeyIdentifier = hash',
  'authorityKeyIdentifier = keyid',
  'subjectAltName = URI:spiffe://aedes-zt.local/device/$ENV::ID',
].join('\n') + '\n')
await fs.mkdir(path.join(tmp, 'out-openssl'))
const script = `
for i in $(seq 0 ${OPENSSL_COUNT - 1}); do
  ID=device-$i openssl x509 -req -in csr/device-$i.csr -CA home/issuing.pem -CAkey home/private/issuing.key -passin env:AEDES_ZT_CA_PASSPHRASE \\
    -set_serial 0x$(openssl rand -hex 16) -days 90 -sha256 -extfile leaf.cnf -subj "/OU=sensors/CN=device-$i" -out out-openssl/device-$i.pem 2>/dev/null || exit 1
done`
const shStart = process.hrtime.bigint()
const sh = spawnSync('sh', ['-c', script], { cwd: tmp, env: { ...process.env, AEDES_ZT_CA_PASSPHRASE: PASSPHRASE }, encoding: 'utf8' })
const shSeconds = Number(process.hrtime.bigint() - shStart) / 1e9
if (sh.status !== 0) throw new Error(`openssl loop failed: ${sh.stderr}`)
// The loop's output must be a valid leaf too, or the comparison means nothing.
execFileSync('openssl', ['verify', '-CAfile', path.join(home, 'ca.pem'), '-untrusted', path.join(home, 'issuing.pem'), path.join(tmp, 'out-openssl', 'device-0.pem')], { stdio: 'ignore' })

const result = {
  count: COUNT,
  cpus: os.cpus().length,
  cpu: os.cpus()[0]?.model ?? 'unknown',
  node: process.version,
  signOnly: { seconds: +signSeconds.toFixed(3), certsPerSecond: Math.round(COUNT / signSeconds) },
  issueBulkLibrary: { seconds: +libSeconds.toFixed(3), certsPerSecond: Math.round(COUNT / libSeconds), ...(RUNS > 1 ? { runs: libRuns.map((x) => +x.toFixed(3)) } : {}) },
  issueBulkCli: { seconds: +cliSeconds.toFixed(3), certsPerSecond: Math.round(COUNT / cliSeconds), ...(RUNS > 1 ? { runs: cliRuns.map((x) => +x.toFixed(3)) } : {}) },
  opensslLoop: { count: OPENSSL_COUNT, seconds: +shSeconds.toFixed(3), certsPerSecond: +(OPENSSL_COUNT / shSeconds).toFixed(1) },
}
console.log(`verify CSR + sign, in memory: ${COUNT} certificates in ${signSeconds.toFixed(2)} s = ${result.signOnly.certsPerSecond} certs/s`)
const of = RUNS > 1 ? ` (median of ${RUNS})` : ''
console.log(`issue-bulk (library):       ${COUNT} certificates in ${libSeconds.toFixed(2)} s = ${result.issueBulkLibrary.certsPerSecond} certs/s${of}`)
console.log(`aedes-zt cert issue-bulk:    ${COUNT} certificates in ${cliSeconds.toFixed(2)} s = ${result.issueBulkCli.certsPerSecond} certs/s (process start-up included)${of}`)
console.log(`shell loop of openssl x509:  ${OPENSSL_COUNT} certificates in ${shSeconds.toFixed(2)} s = ${result.opensslLoop.certsPerSecond} certs/s`)
console.log(JSON.stringify(result))
