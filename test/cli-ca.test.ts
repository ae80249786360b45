// `aedes-zt ca|cert|crl` end to end: each command's success and refusal, interop with openssl, and a real subprocess.
import { execFileSync, spawnSync } from 'node:child_process'
import { promises as fs } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Writable } from 'node:stream'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { main } from '../cli/main.js'

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const PASS = 'cli-test-passphrase'

class Capture extends Writable {
  text = ''
  override _write (chunk: Buffer | string, _enc: BufferEncoding, cb: () => void): void {
    this.text += chunk.toString()
    cb()
  }
}

interface Run { code: number, stdout: string, stderr: string }

async function run (argv: string[], env: NodeJS.ProcessEnv = { AEDES_ZT_CA_PASSPHRASE: PASS }): Promise<Run> {
  const stdout = new Capture()
  const stderr = new Capture()
  const code = await main(argv, { stdout, stderr, env })
  return { code, stdout: stdout.text, stderr: stderr.text }
}

/** A refusal: non-zero exit, exactly one line on stderr, naming the command, no stack. */
function expectOneLine (r: Run, command: string, pattern: RegExp | string): void {
  expect(r.code, r.stderr).not.toBe(0)
  expect(r.stderr.split('\n').filter(Boolean)).toHaveLength(1)
  expect(r.stderr).toMatch(new RegExp(`^aedes-zt ${command}: `))
  if (typeof pattern === 'string') expect(r.stderr).toContain(pattern)
  else expect(r.stderr).toMatch(pattern)
  expect(r.stderr).not.toMatch(/\n\s+at /)
}

function openssl (args: string[]): { code: number, out: string } {
  const r = spawnSync('openssl', args, { encoding: 'utf8' })
  return { code: r.status ?? -1, out: `${r.stdout}${r.stderr}` }
}

function csr (file: string, keyArgs: string[]): void {
  execFileSync('openssl', ['req', '-new', ...keyArgs, '-nodes', '-keyout', `${file}.key`, '-subj', '/CN=x', '-out', file], { stdio: 'ignore' })
}

let tmp: string
let home: string
let h: string[]
beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'aedes-zt-cli-'))
  home = path.join(tmp, 'home')
  h = ['--home', home]
})
afterAll(async () => { await fs.rm(tmp, { recursive: true, force: true }) })

describe('ca init and ca show', () => {
  it('refuses without a passphrase, then creates the home', async () => {
    expectOneLine(await run(['ca', 'init', ...h], {}), 'ca init', /AEDES_ZT_CA_PASSPHRASE/)
    expectOneLine(await run(['ca', 'init', ...h, '--key', 'dsa-512']), 'ca init', /--key "dsa-512"/)
    expectOneLine(await run(['ca', 'init', ...h, '--trust-domain', 'Bad Domain']), 'ca init', /trust domain/)
    const r = await run(['ca', 'init', ...h, '--trust-domain', 'acme.test', '--server-name', 'mqtt.acme.test', '--server-name', '127.0.0.1'])
    expect(r.code, r.stderr).toBe(0)
    expect(r.stdout).toContain(`created CA home ${home}`)
    expect(r.stdout).not.toContain(PASS)
    expectOneLine(await run(['ca', 'init', ...h]), 'ca init', /already holds a CA/)
  })

  it('shows paths, subjects and fingerprints, as text and JSON', async () => {
    const text = await run(['ca', 'show', ...h])
    expect(text.code).toBe(0)
    expect(text.stdout).toContain('CN=aedes-zt Root CA')
    expect(text.stdout).toContain(path.join(home, 'ca.pem'))
    const json = JSON.parse((await run(['ca', 'show', '--json', ...h])).stdout) as { paths: Record<string, string>, root: { fingerprint: string }, trustDomain: string, dev: boolean }
    expect(json.trustDomain).toBe('acme.test')
    expect(json.dev).toBe(false)
    expect(json.paths.chain).toBe(path.join(home, 'ca-chain.pem'))
    expect(json.paths).not.toHaveProperty('passphrase')
    const fp = openssl(['x509', '-noout', '-fingerprint', '-sha256', '-in', path.join(home, 'ca.pem')]).out.trim().split('=')[1]
    expect(json.root.fingerprint).toBe(`SHA256:${fp}`)
    expectOneLine(await run(['ca', 'show', '--home', path.join(tmp, 'nowhere')]), 'ca show', /does not exist/)
  })

  it('makes a dev home with --dev and says where the passphrase is', async () => {
    const dev = path.join(tmp, 'dev')
    const r = await run(['ca', 'init', '--home', dev, '--dev'], {})
    expect(r.code).toBe(0)
    expect(r.stdout).toContain(`passphrase was generated and kept in ${path.join(dev, 'private', 'passphrase')}`)
    const passphrase = (await fs.readFile(path.join(dev, 'private', 'passphrase'), 'utf8')).trim()
    expect(r.stdout).not.toContain(passphrase)
    const issued = await run(['cert', 'issue', 'd1', '--home', dev, '--key-out', path.join(tmp, 'dev-d1.key')], {})
    expect(issued.code, issued.stderr).toBe(0)
  })
})

describe('cert issue, list, revoke and crl with openssl', () => {
  let leaf: string
  let serial: string

  it('issues from an `openssl req` P-256 CSR; openssl verifies the chain and shows the profile', async () => {
    const req = path.join(tmp, 'dev1.csr')
    csr(req, ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256'])
    leaf = path.join(tmp, 'dev1.pem')
    const r = await run(['cert', 'issue', 'dev1', ...h, '--csr', req, '--group', 'sensors', '--group', 'lab', '--out', leaf])
    expect(r.code, r.stderr).toBe(0)
    serial = /issued ([0-9a-f]{32}) /.exec(r.stdout)?.[1] ?? ''
    expect(serial).not.toBe('')
    const bundle = await fs.readFile(leaf, 'utf8')
    expect(bundle.match(/BEGIN CERTIFICATE/g)).toHaveLength(2)
    expect(bundle.endsWith(await fs.readFile(path.join(home, 'issuing.pem'), 'utf8'))).toBe(true)

    const v = openssl(['verify', '-CAfile', path.join(home, 'ca.pem'), '-untrusted', path.join(home, 'issuing.pem'), '-purpose', 'sslclient', leaf])
    expect(v.out).toContain(': OK')
    const text = openssl(['x509', '-noout', '-text', '-in', leaf]).out
    expect(text).toContain('CA:FALSE')
    expect(text).toContain('Digital Signature')
    expect(text).toContain('TLS Web Client Authentication')
    expect(text).not.toContain('TLS Web Server Authentication')
    expect(text).toContain('URI:spiffe://acme.test/device/dev1')
    expect(text).toMatch(/Subject: OU = sensors, OU = lab, CN = dev1/)
    expect(text).toMatch(/X509v3 Basic Constraints: critical/)
    expect(text).toMatch(/X509v3 Key Usage: critical/)
    expect(text).toContain('X509v3 Authority Key Identifier')
    expect(text).toContain('X509v3 Subject Key Identifier')
    expect(openssl(['x509', '-noout', '-serial', '-in', leaf]).out.trim().toLowerCase()).toBe(`serial=${serial}`)
    // The certificate carries the CSR's key.
    const certKey = openssl(['x509', '-noout', '-pubkey', '-in', leaf]).out
    const csrKey = openssl(['req', '-noout', '-pubkey', '-in', req]).out
    expect(certKey).toBe(csrKey)
  })

  it('prints the bundle on stdout without --out and writes a generated key with mode 0600', async () => {
    const keyOut = path.join(tmp, 'svc.key')
    const r = await run(['cert', 'issue', 'ingest', ...h, '--kind', 'service', '--days', '30', '--key-out', keyOut])
    expect(r.code, r.stderr).toBe(0)
    expect(r.stdout.match(/BEGIN CERTIFICATE/g)).toHaveLength(2)
    expect(r.stderr).toMatch(/^issued [0-9a-f]{32} for service ingest/)
    expect((await fs.stat(keyOut)).mode & 0o777).toBe(0o600)
    const certFile = path.join(tmp, 'svc.pem')
    await fs.writeFile(certFile, r.stdout)
    expect(openssl(['x509', '-noout', '-checkend', String(31 * 86400), '-in', certFile]).code).toBe(1)
    // The key matches the certificate.
    expect(openssl(['pkey', '-pubout', '-in', keyOut]).out).toBe(openssl(['x509', '-noout', '-pubkey', '-in', certFile]).out)
    expectOneLine(await run(['cert', 'issue', 'again', ...h, '--key-out', keyOut]), 'cert issue', /already exists/)
  })

  it.each([
    ['a/b', "contains '/'"], ['a+b', "contains '+'"], ['a#b', "contains '#'"], ['a b', 'contains a space'], ['a\0b', 'contains NUL'],
  ])('refuses id %j with one line', async (id, why) => {
    const r = await run(['cert', 'issue', id, ...h, '--key-out', path.join(tmp, 'never.key')])
    expectOneLine(r, 'cert issue', why)
    await expect(fs.stat(path.join(tmp, 'never.key'))).rejects.toThrow()
  })

  it('refuses unreadable, forged and weak CSRs, bad options, a wrong passphrase and a missing home', async () => {
    expectOneLine(await run(['cert', 'issue', 'x', ...h, '--csr', path.join(tmp, 'none.csr')]), 'cert issue', /cannot read .*none\.csr/)
    await fs.writeFile(path.join(tmp, 'garbage.csr'), 'not a csr')
    expectOneLine(await run(['cert', 'issue', 'x', ...h, '--csr', path.join(tmp, 'garbage.csr')]), 'cert issue', /not a certificate request/)
    const good = path.join(tmp, 'good.csr')
    csr(good, ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256'])
    const der = Buffer.from((await fs.readFile(good, 'utf8')).replace(/-----[^-]+-----|\s/g, ''), 'base64')
    der[der.length - 3] = (der[der.length - 3] ?? 0) ^ 0xff
    await fs.writeFile(path.join(tmp, 'forged.csr'), der)
    expectOneLine(await run(['cert', 'issue', 'x', ...h, '--csr', path.join(tmp, 'forged.csr')]), 'cert issue', /signature does not verify/)
    const weak = path.join(tmp, 'weak.csr')
    csr(weak, ['-newkey', 'rsa:1024'])
    expectOneLine(await run(['cert', 'issue', 'x', ...h, '--csr', weak]), 'cert issue', /RSA key of 1024 bits is too weak/)
    // RFC 5480: EC keys name their curve; explicit parameters (which Go, BoringSSL and rustls refuse) are not signed.
    // A key that cannot be saved leaves no active certificate behind in the inventory.
    expectOneLine(await run(['cert', 'issue', 'lost-key', ...h, '--key-out', path.join(tmp, 'no-such-dir', 'x.key')]), 'cert issue', /no-such-dir/)
    expect((await run(['cert', 'list', ...h, '--id', 'lost-key'])).stdout).toBe('no certificates\n')
    const explicit = path.join(tmp, 'explicit.csr')
    csr(explicit, ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-pkeyopt', 'ec_param_enc:explicit'])
    expectOneLine(await run(['cert', 'issue', 'x', ...h, '--csr', explicit]), 'cert issue', /explicit curve parameters are not accepted/)
    expectOneLine(await run(['cert', 'issue', 'x', ...h, '--csr', good, '--kind', 'robot']), 'cert issue', /kind "robot"/)
    expectOneLine(await run(['cert', 'issue', 'x', ...h, '--csr', good, '--days', 'ten']), 'cert issue', /--days "ten"/)
    expectOneLine(await run(['cert', 'issue', 'x', ...h]), 'cert issue', /exactly one of --csr/)
    expectOneLine(await run(['cert', 'issue', 'x', ...h, '--csr', good], { AEDES_ZT_CA_PASSPHRASE: 'wrong-passphrase' }), 'cert issue', /passphrase does not decrypt/)
    expectOneLine(await run(['cert', 'issue', 'x', ...h, '--csr', good], {}), 'cert issue', /set AEDES_ZT_CA_PASSPHRASE/)
    expectOneLine(await run(['cert', 'issue', 'x', '--home', path.join(tmp, 'missing'), '--csr', good]), 'cert issue', /does not exist/)
    // Nothing listens on port 1: the store is unavailable, said in one line that does not leak the password.
    const unreachable = await run(['cert', 'list', ...h, '--redis', 'redis://u:secret@127.0.0.1:1'])
    expectOneLine(unreachable, 'cert list', /redis|Redis/)
    expect(unreachable.stderr).not.toContain('secret')
  })

  it('lists as JSON and as a table, with filters', async () => {
    const json = JSON.parse((await run(['cert', 'list', '--json', ...h])).stdout) as Array<Record<string, unknown>>
    expect(json.map((c) => c.id).sort()).toEqual(['dev1', 'ingest'])
    const dev1 = json.find((c) => c.id === 'dev1')
    expect(Object.keys(dev1 ?? {})).toEqual(['serial', 'id', 'kind', 'groups', 'notBefore', 'notAfter', 'status'])
    expect(dev1).toMatchObject({ serial, id: 'dev1', kind: 'device', groups: ['sensors', 'lab'], status: 'active' })
    const table = await run(['cert', 'list', ...h, '--id', 'ingest'])
    expect(table.stdout.split('\n')[0]).toMatch(/^SERIAL\s+ID\s+KIND/)
    expect(table.stdout).toContain('ingest')
    expect(table.stdout).not.toContain('dev1')
    expect((await run(['cert', 'list', ...h, '--status', 'revoked'])).stdout).toBe('no certificates\n')
    expectOneLine(await run(['cert', 'list', ...h, '--status', 'gone']), 'cert list', /--status "gone"/)
    expectOneLine(await run(['cert', 'list', ...h, '--bogus']), 'cert list', /bogus/)
    expectOneLine(await run(['cert', 'list', '--home=']), 'cert list', /--home needs a directory/)
  })

  it('revokes (idempotently, any serial notation), refuses unknown serials, and openssl sees it in the CRL', async () => {
    const colons = serial.toUpperCase().replace(/(..)(?=.)/g, '$1:')
    const r = await run(['cert', 'revoke', colons, ...h, '--reason', 'keyCompromise'])
    expect(r.code, r.stderr).toBe(0)
    expect(r.stdout).toMatch(new RegExp(`^revoked ${serial} \\(id dev1, reason keyCompromise\\)`))
    const again = await run(['cert', 'revoke', serial, ...h])
    expect(again.code).toBe(0)
    expect(again.stdout).toContain('already revoked')
    expectOneLine(await run(['cert', 'revoke', 'abcdef0123456789', ...h]), 'cert revoke', /abcdef0123456789 was not issued by this CA/)
    expectOneLine(await run(['cert', 'revoke', 'zz', ...h]), 'cert revoke', /not hexadecimal/)
    expectOneLine(await run(['cert', 'revoke', serial, ...h, '--reason', 'because']), 'cert revoke', /reason "because"/)
    expectOneLine(await run(['cert', 'revoke', ...h]), 'cert revoke', /exactly one of/)
    expectOneLine(await run(['cert', 'revoke', ...h, '--id', 'nobody']), 'cert revoke', /no active certificate/)
    const listed = JSON.parse((await run(['cert', 'list', '--json', ...h, '--status', 'revoked'])).stdout) as Array<Record<string, unknown>>
    expect(listed).toHaveLength(1)
    expect(listed[0]).toMatchObject({ serial, status: 'revoked', reason: 'keyCompromise' })

    const crl = path.join(tmp, 'crl.pem')
    expect((await run(['crl', ...h, '--out', crl])).code).toBe(0)
    const v = openssl(['crl', '-in', crl, '-noout', '-verify', '-CAfile', path.join(home, 'ca-chain.pem')])
    expect(v.out).toContain('verify OK')
    const text = openssl(['crl', '-in', crl, '-noout', '-text']).out
    expect(text).toContain('Version 2')
    expect(text).toContain('X509v3 CRL Number')
    expect(text).toContain('X509v3 Authority Key Identifier')
    expect(text).toContain('Key Compromise')
    expect(text).toContain(serial.toUpperCase())
    const revoked = openssl(['verify', '-crl_check', '-CRLfile', crl, '-CAfile', path.join(home, 'ca.pem'), '-untrusted', path.join(home, 'issuing.pem'), leaf])
    expect(revoked.code).not.toBe(0)
    expect(revoked.out).toContain('certificate revoked')

    // Each new CRL has a higher number; DER on stdout parses as the same kind of CRL.
    const number = (t: string): number => Number(/CRL Number:\s*\n?\s*(\d+)/.exec(t)?.[1])
    const second = await run(['crl', ...h])
    expect(second.stdout).toMatch(/^-----BEGIN X509 CRL-----/)
    const secondNumber = number(execFileSync('openssl', ['crl', '-noout', '-text'], { input: second.stdout }).toString())
    expect(secondNumber).toBeGreaterThan(number(text))
    const derFile = path.join(tmp, 'crl.der')
    expect((await run(['crl', ...h, '--der', '--out', derFile])).code).toBe(0)
    expect(number(openssl(['crl', '-inform', 'DER', '-in', derFile, '-noout', '-text']).out)).toBeGreaterThan(secondNumber)
    expectOneLine(await run(['crl', ...h], { AEDES_ZT_CA_PASSPHRASE: 'wrong-passphrase' }), 'crl', /passphrase does not decrypt/)
  })
})

describe('cert issue-bulk', () => {
  it('issues a manifest with a summary and reports bad rows one line each', async () => {
    const dir = path.join(tmp, 'bulk')
    await fs.mkdir(dir)
    csr(path.join(dir, 'a.csr'), ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256'])
    await fs.writeFile(path.join(dir, 'm.csv'), 'id,kind,groups,csr\na,device,sensors|lab,a.csr\nb,service,,\nc d,,,\n')
    const r = await run(['cert', 'issue-bulk', ...h, '--manifest', path.join(dir, 'm.csv'), '--out-dir', path.join(dir, 'out')])
    expect(r.code).toBe(1)
    expect(r.stdout).toMatch(/^issued 2 of 3 certificates into .* \(\d+\/s\); 1 failed\n$/)
    expect(r.stderr).toBe(`aedes-zt cert issue-bulk: line 4 (id "c d"): id "c d" contains a space; ids are 1-64 of [A-Za-z0-9._-], not starting with '.' or '-'\n`)
    expect((await fs.readdir(path.join(dir, 'out'))).sort()).toEqual(['a.pem', 'b.key', 'b.pem'])
    expect(openssl(['verify', '-CAfile', path.join(home, 'ca.pem'), '-untrusted', path.join(home, 'issuing.pem'), path.join(dir, 'out', 'a.pem')]).code).toBe(0)
    expectOneLine(await run(['cert', 'issue-bulk', ...h, '--manifest', path.join(dir, 'none.csv'), '--out-dir', dir]), 'cert issue-bulk', /cannot read manifest/)
    expectOneLine(await run(['cert', 'issue-bulk', ...h, '--out-dir', dir]), 'cert issue-bulk', /--manifest FILE.csv and --out-dir DIR/)
  })
})

describe('command dispatch', () => {
  it("lists every module's commands in --help and refuses unknown ones whatever their first word", async () => {
    const help = await run(['--help'])
    expect(help.code).toBe(0)
    for (const c of ['ca init', 'cert issue-bulk', 'crl', 'policy check', 'policy explain', 'broker']) expect(help.stdout).toContain(`\n  aedes-zt ${c} `)
    for (const argv of [['--home', home, 'frobnicate'], ['cert', 'frobnicate'], ['policy']]) {
      const r = await run(argv)
      expect(r.code, argv.join(' ')).toBe(2)
      expect(r.stderr).toMatch(/^aedes-zt: unknown command "[^"]+"; run aedes-zt --help\n$/)
    }
  })
})

describe('the real binary', () => {
  it('exits non-zero with one line and no stack trace', () => {
    const bin = path.join(ROOT, 'bin', 'aedes-zt.js')
    const env = { ...process.env, AEDES_ZT_CA_PASSPHRASE: PASS, AEDES_ZT_DEBUG: '' }
    const bad = spawnSync(process.execPath, [bin, 'cert', 'revoke', 'abcdef', '--home', home], { encoding: 'utf8', env })
    expect(bad.status).toBe(1)
    expect(bad.stdout).toBe('')
    expect(bad.stderr).toBe('aedes-zt cert revoke: serial abcdef was not issued by this CA; nothing revoked\n')
    const missing = spawnSync(process.execPath, [bin, 'cert', 'list', '--home', path.join(tmp, 'missing')], { encoding: 'utf8', env })
    expect(missing.status).toBe(1)
    expect(missing.stderr.split('\n').filter(Boolean)).toHaveLength(1)
    expect(missing.stderr).not.toMatch(/\n\s+at /)
    const ok = spawnSync(process.execPath, [bin, 'cert', 'list', '--json', '--home', home], { encoding: 'utf8', env })
    expect(ok.status).toBe(0)
    expect(Array.isArray(JSON.parse(ok.stdout))).toBe(true)
  })
})

describe('start-up of the real binary', () => {
  // @peculiar/x509 and what comes with it (asn1 schemas, tsyringe, the Reflect polyfill) cost ~0.3 s of CPU to load:
  // only `ca init` and `crl` build with it. Every module a CLI process loads is recorded by a preloaded script:
  // ESM resolutions through a module.register hook, and CommonJS modules (these packages are) from require.cache.
  const HEAVY = /@peculiar[\\/]x509|[\\/]pkijs[\\/]|reflect-metadata|[\\/]asn1js[\\/]|[\\/]tsyringe[\\/]/

  let traceDir: string
  let seq = 0
  beforeAll(async () => {
    traceDir = path.join(tmp, 'trace')
    await fs.mkdir(traceDir)
    await fs.writeFile(path.join(traceDir, 'hooks.mjs'), [
      "import { appendFileSync } from 'node:fs'",
      'let file',
      'export async function initialize (data) { file = data.file }',
      "export async function resolve (specifier, context, next) { const r = await next(specifier, context); appendFileSync(file, r.url + '\\n'); return r }",
    ].join('\n') + '\n')
    await fs.writeFile(path.join(traceDir, 'trace.mjs'), [
      "import { appendFileSync } from 'node:fs'",
      "import { createRequire, register } from 'node:module'",
      'const file = process.env.ZT_TRACE_FILE',
      "register(new URL('./hooks.mjs', import.meta.url), { data: { file } })",
      'const cache = createRequire(import.meta.url).cache',
      "process.on('exit', () => { appendFileSync(file, Object.keys(cache).map((k) => `cjs:${k}\\n`).join('') + 'done\\n') })",
    ].join('\n') + '\n')
  })

  /** Runs the binary with the tracer; returns the exit code and every module it loaded. */
  async function traced (argv: string[]): Promise<{ code: number | null, stderr: string, modules: string[] }> {
    const file = path.join(traceDir, `run-${++seq}.txt`)
    const env = { ...process.env, AEDES_ZT_CA_PASSPHRASE: PASS, AEDES_ZT_DEBUG: '', ZT_TRACE_FILE: file }
    const r = spawnSync(process.execPath, ['--import', path.join(traceDir, 'trace.mjs'), path.join(ROOT, 'bin', 'aedes-zt.js'), ...argv], { encoding: 'utf8', env })
    const modules = (await fs.readFile(file, 'utf8')).split('\n').filter(Boolean)
    // The exit handler ran, and the hooks saw the CLI's own modules: an empty trace proves nothing.
    expect(modules).toContain('done')
    expect(modules.some((m) => m.endsWith('/dist/cli/main.js'))).toBe(true)
    return { code: r.status, stderr: r.stderr, modules }
  }

  it('cert issue, issue-bulk, list and revoke and ca show do not load @peculiar/x509, pkijs or reflect-metadata', async () => {
    const dir = path.join(tmp, 'startup')
    await fs.mkdir(dir)
    csr(path.join(dir, 'a.csr'), ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256'])
    csr(path.join(dir, 'b.csr'), ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256'])
    await fs.writeFile(path.join(dir, 'm.csv'), 'id,kind,groups,csr\nstartup-a,device,sensors,a.csr\nstartup-b,device,,\n')
    const runs: string[][] = [
      ['cert', 'issue-bulk', ...h, '--manifest', path.join(dir, 'm.csv'), '--out-dir', path.join(dir, 'out')],
      ['cert', 'issue', 'startup-c', ...h, '--csr', path.join(dir, 'b.csr'), '--out', path.join(dir, 'c.pem')],
      ['cert', 'list', ...h, '--id', 'startup-a'],
      ['cert', 'revoke', ...h, '--id', 'startup-c'],
      ['ca', 'show', ...h],
      ['cert', 'issue-bulk', '--help'],
    ]
    for (const argv of runs) {
      const r = await traced(argv)
      expect(r.code, `${argv.join(' ')}: ${r.stderr}`).toBe(0)
      expect(r.modules.filter((m) => HEAVY.test(m)), argv.slice(0, 2).join(' ')).toEqual([])
    }
    expect(openssl(['verify', '-CAfile', path.join(home, 'ca.pem'), '-untrusted', path.join(home, 'issuing.pem'), path.join(dir, 'out', 'startup-a.pem')]).code).toBe(0)
  }, 60_000)

  it('crl still loads @peculiar/x509 (and the tracer sees it)', async () => {
    const r = await traced(['crl', ...h, '--out', path.join(tmp, 'startup.crl')])
    expect(r.code, r.stderr).toBe(0)
    expect(r.modules.some((m) => /@peculiar[\\/]x509/.test(m))).toBe(true)
    expect(r.modules.some((m) => /reflect-metadata/.test(m))).toBe(true)
  })
})
