// `aedes-zt ca ...`, `cert ...` and `crl`: thin adapters from arguments to the CA in ca/.
// No @peculiar/x509 here: only `ca init` and `crl` build with it, and ca/x509.ts loads it (and its Reflect polyfill)
// on demand. Certificates are described with node:crypto.
import { X509Certificate } from 'node:crypto'
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { ZtError } from '../common/errors.js'
import { checkKind, checkReason, type RevocationReason } from '../common/ids.js'
// The CA's modules one by one rather than through ca/index.js, which loads the Reflect polyfill for library users:
// start-up counts against every `cert issue-bulk` run.
import { openAuthority, revokeIn, type IssueRequest, type OpenAuthorityOptions } from '../ca/authority.js'
import { issueBulk } from '../ca/bulk.js'
import { writeFileAtomic } from '../ca/fsutil.js'
import { initHome, loadHome, type InitOptions, type LoadedHome } from '../ca/home.js'
import { KEY_TYPES, type KeyType } from '../ca/keys.js'
import { derToPem } from '../ca/leaf.js'
import { openStore } from '../ca/store.js'
import type { CertListing, CertStatus, CertStore } from '../store/types.js'
import type { Command, CommandContext } from './main.js'

function str (ctx: CommandContext, name: string): string | undefined {
  const v = ctx.values[name]
  return typeof v === 'string' ? v : undefined
}

function list (ctx: CommandContext, name: string): string[] {
  const v = ctx.values[name]
  return Array.isArray(v) ? v : typeof v === 'string' ? [v] : []
}

function flag (ctx: CommandContext, name: string): boolean {
  return ctx.values[name] === true
}

function positiveInt (value: string, what: string, operation: string): number {
  if (!/^[0-9]+$/.test(value) || Number(value) < 1) throw new ZtError('ZT_BAD_ARGUMENT', `${operation}: ${what} ${JSON.stringify(value)} is not a positive integer`)
  return Number(value)
}

function authorityOptions (ctx: CommandContext): OpenAuthorityOptions {
  return { env: ctx.env, ...(ctx.redisUrl !== undefined ? { redisUrl: ctx.redisUrl } : {}) }
}

/** Opens the home's store for commands that need no CA key (list, revoke). */
async function withStore<T> (ctx: CommandContext, fn: (store: CertStore, home: LoadedHome) => Promise<T>): Promise<T> {
  const home = await loadHome(ctx.home)
  const store = await openStore(home, ctx.redisUrl !== undefined ? { redisUrl: ctx.redisUrl } : {})
  try {
    return await fn(store, home)
  } finally {
    await store.close()
  }
}

async function readInput (file: string, operation: string, code: 'ZT_BAD_CSR' | 'ZT_IO'): Promise<Buffer> {
  try {
    return await fs.readFile(file)
  } catch (err) {
    const why = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as NodeJS.ErrnoException).code ?? String(err)
    throw new ZtError(code, `${operation}: cannot read ${file} (${why})`, { file })
  }
}

async function refuseExisting (file: string, operation: string): Promise<void> {
  if (await fs.lstat(file).then(() => true, () => false)) throw new ZtError('ZT_IO', `${operation}: ${file} already exists; refusing to overwrite it`, { file })
}

function describeCert (pem: string): { subject: string, serial: string, fingerprint: string, notBefore: string, notAfter: string, subjectAltName?: string } {
  const c = new X509Certificate(pem)
  const out = {
    subject: c.subject.replace(/\n/g, ', '),
    serial: c.serialNumber.toLowerCase().replace(/^0+(?=.)/, ''),
    fingerprint: `SHA256:${c.fingerprint256}`,
    notBefore: new Date(c.validFrom).toISOString(),
    notAfter: new Date(c.validTo).toISOString(),
  }
  return c.subjectAltName !== undefined ? { ...out, subjectAltName: c.subjectAltName } : out
}

const caInit: Command = {
  path: ['ca', 'init'],
  usage: `ca init [--name NAME] [--trust-domain DOMAIN] [--key ${KEY_TYPES.join('|')}] [--server-name NAME ...] [--crl-days N] [--dev]`,
  options: {
    name: { type: 'string' },
    'trust-domain': { type: 'string' },
    key: { type: 'string' },
    'server-name': { type: 'string', multiple: true },
    'crl-days': { type: 'string' },
    dev: { type: 'boolean' },
  },
  async run (ctx) {
    const op = 'ca init'
    const dev = flag(ctx, 'dev')
    const opts: InitOptions = { dev }
    const name = str(ctx, 'name')
    if (name !== undefined) opts.name = name
    const td = str(ctx, 'trust-domain')
    if (td !== undefined) opts.trustDomain = td
    const key = str(ctx, 'key')
    if (key !== undefined) {
      if (!(KEY_TYPES as readonly string[]).includes(key)) throw new ZtError('ZT_BAD_ARGUMENT', `${op}: --key ${JSON.stringify(key)} is not one of ${KEY_TYPES.join(', ')}`)
      opts.keyType = key as KeyType
    }
    const names = list(ctx, 'server-name')
    if (names.length > 0) opts.serverNames = names
    const crlDays = str(ctx, 'crl-days')
    if (crlDays !== undefined) opts.crlDays = positiveInt(crlDays, '--crl-days', op)
    const passphrase = ctx.env.AEDES_ZT_CA_PASSPHRASE
    // A dev home always gets its own generated passphrase, so a developer's exported one is never written into it.
    if (!dev && passphrase !== undefined && passphrase !== '') opts.passphrase = passphrase
    const home = await initHome(ctx.home, opts)
    const root = describeCert(home.rootPem)
    const issuing = describeCert(home.issuingPem)
    const server = describeCert(home.serverCertPem)
    ctx.stdout.write([
      `created CA home ${home.paths.home}`,
      `  root CA     ${root.subject}  ${root.fingerprint}  (${home.paths.rootCert}: give this to clients as --cafile)`,
      `  issuing CA  ${issuing.subject}  ${issuing.fingerprint}`,
      `  server      ${server.subjectAltName ?? server.subject}  (${home.paths.serverCert}, ${home.paths.serverKey})`,
      `  trust domain ${home.config.trustDomain}, keys ${home.config.keyType}`,
      ...(dev ? [`  dev home: the CA passphrase was generated and kept in ${home.paths.passphrase} (mode 0600); do not use this home in production`] : []),
    ].join('\n') + '\n')
  },
}

const caShow: Command = {
  path: ['ca', 'show'],
  usage: 'ca show [--json]',
  options: { json: { type: 'boolean' } },
  async run (ctx) {
    const home = await loadHome(ctx.home)
    const { paths } = home
    const info = {
      home: paths.home,
      trustDomain: home.config.trustDomain,
      keyType: home.config.keyType,
      dev: home.config.dev,
      crlDays: home.config.crlDays,
      paths: {
        rootCert: paths.rootCert,
        chain: paths.chain,
        issuingCert: paths.issuingCert,
        serverCert: paths.serverCert,
        serverKey: paths.serverKey,
        privateDir: paths.privateDir,
        config: paths.config,
        ...(home.config.dev ? { passphrase: paths.passphrase } : {}),
        ...(ctx.redisUrl === undefined ? { store: paths.storeDir } : {}),
      },
      root: describeCert(home.rootPem),
      issuing: describeCert(home.issuingPem),
      server: describeCert(home.serverCertPem),
    }
    if (flag(ctx, 'json')) {
      ctx.stdout.write(JSON.stringify(info, null, 2) + '\n')
      return
    }
    const row = (k: string, v: string): string => `${k.padEnd(14)} ${v}`
    ctx.stdout.write([
      row('home', `${info.home}${info.dev ? ' (dev home)' : ''}`),
      row('trust domain', info.trustDomain),
      row('key type', info.keyType),
      row('root CA', `${info.root.subject}  ${info.root.fingerprint}  until ${info.root.notAfter}`),
      row('issuing CA', `${info.issuing.subject}  ${info.issuing.fingerprint}  until ${info.issuing.notAfter}`),
      row('server cert', `${info.server.subjectAltName ?? info.server.subject}  ${info.server.fingerprint}  until ${info.server.notAfter}`),
      ...Object.entries(info.paths).map(([k, v]) => row(k, v)),
    ].join('\n') + '\n')
  },
}

const certIssue: Command = {
  path: ['cert', 'issue'],
  usage: 'cert issue <id> [--kind device|service|operator] [--group G ...] [--days N] (--csr FILE | --key-out FILE) [--out FILE]',
  positionals: [1, 1],
  options: {
    kind: { type: 'string' },
    group: { type: 'string', multiple: true },
    days: { type: 'string' },
    csr: { type: 'string' },
    'key-out': { type: 'string' },
    out: { type: 'string' },
  },
  async run (ctx) {
    const op = 'cert issue'
    const csrFile = str(ctx, 'csr')
    const keyOut = str(ctx, 'key-out')
    const out = str(ctx, 'out')
    if ((csrFile === undefined) === (keyOut === undefined)) throw new ZtError('ZT_BAD_ARGUMENT', `${op}: give exactly one of --csr FILE and --key-out FILE`)
    const req: IssueRequest = { id: ctx.positionals[0] ?? '', kind: checkKind(str(ctx, 'kind') ?? 'device', op), groups: list(ctx, 'group') }
    const days = str(ctx, 'days')
    if (days !== undefined) req.days = positiveInt(days, '--days', op)
    if (csrFile !== undefined) req.csr = await readInput(csrFile, op, 'ZT_BAD_CSR')
    else req.generateKey = true
    // Fail before the CA signs anything: an issued certificate whose key could not be saved is useless.
    if (keyOut !== undefined) await refuseExisting(keyOut, op)
    const authority = await openAuthority(ctx.home, authorityOptions(ctx))
    try {
      // Sign, save the files, and only then record: an inventory entry whose key or certificate could not be written
      // would be an active certificate nobody holds.
      const bundle = await authority.sign(req, op)
      const written: string[] = []
      try {
        if (keyOut !== undefined) { await writeFileAtomic(keyOut, bundle.keyPem ?? '', { mode: 0o600, noClobber: true, operation: op }); written.push(keyOut) }
        if (out !== undefined) { await writeFileAtomic(out, bundle.bundlePem, { mode: 0o644, operation: op }); written.push(out) }
        await authority.store.recordIssued([bundle.record])
      } catch (err) {
        await Promise.all(written.map(async (file) => { await fs.rm(file, { force: true }) }))
        throw err
      }
      const { record } = bundle
      const summary = `issued ${record.serial} for ${record.kind} ${record.id}${record.groups.length > 0 ? ` (groups ${record.groups.join(', ')})` : ''}, valid until ${record.notAfter}`
      if (out !== undefined) {
        ctx.stdout.write(`${summary}; certificate and issuing CA in ${out}${keyOut !== undefined ? `, key in ${keyOut}` : ''}\n`)
      } else {
        ctx.stdout.write(bundle.bundlePem)
        ctx.stderr.write(`${summary}${keyOut !== undefined ? `; key in ${keyOut}` : ''}\n`)
      }
    } finally {
      await authority.close()
    }
  },
}

function progressBar (stream: NodeJS.WritableStream): { update (done: number, total: number): void, end (): void } {
  const tty = (stream as NodeJS.WriteStream).isTTY === true
  let last = 0
  let drawn = false
  return {
    update (done, total) {
      if (!tty) return
      const now = Date.now()
      if (done < total && now - last < 100) return
      last = now
      const width = 30
      const filled = Math.round((done / total) * width)
      stream.write(`\r[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${done}/${total}`)
      drawn = true
    },
    end () {
      if (drawn) stream.write('\r\x1b[K')
    },
  }
}

const certIssueBulk: Command = {
  path: ['cert', 'issue-bulk'],
  usage: 'cert issue-bulk --manifest FILE.csv --out-dir DIR [--stop-on-error]   # CSV columns id,kind,groups,csr',
  options: {
    manifest: { type: 'string' },
    'out-dir': { type: 'string' },
    'stop-on-error': { type: 'boolean' },
  },
  async run (ctx) {
    const op = 'cert issue-bulk'
    const manifest = str(ctx, 'manifest')
    const outDir = str(ctx, 'out-dir')
    if (manifest === undefined || outDir === undefined) throw new ZtError('ZT_BAD_ARGUMENT', `${op}: --manifest FILE.csv and --out-dir DIR are both required`)
    const authority = await openAuthority(ctx.home, authorityOptions(ctx))
    const bar = progressBar(ctx.stderr)
    try {
      const summary = await issueBulk(authority, manifest, {
        outDir,
        stopOnError: flag(ctx, 'stop-on-error'),
        onProgress: (done, total) => bar.update(done, total),
        onRowError: (f) => { bar.end(); ctx.stderr.write(`aedes-zt ${op}: line ${f.line} (id ${JSON.stringify(f.id)}): ${f.message}\n`) },
      })
      bar.end()
      const seconds = summary.elapsedMs / 1000
      const rate = seconds > 0 ? Math.round(summary.issued / seconds) : summary.issued
      ctx.stdout.write(`issued ${summary.issued} of ${summary.total} certificates into ${summary.outDir} in ${seconds.toFixed(2)} s (${rate}/s)` +
        `${summary.failed.length > 0 ? `; ${summary.failed.length} failed` : ''}${summary.skipped > 0 ? `; ${summary.skipped} not attempted (--stop-on-error)` : ''}\n`)
      return summary.failed.length > 0 ? 1 : 0
    } finally {
      bar.end()
      await authority.close()
    }
  },
}

const STATUSES: readonly CertStatus[] = ['active', 'revoked', 'expired']

function table (rows: CertListing[]): string {
  const head = ['SERIAL', 'ID', 'KIND', 'GROUPS', 'STATUS', 'NOT AFTER', 'REVOKED']
  const cells = rows.map((r) => [r.serial, r.id, r.kind, r.groups.join(',') || '-', r.status, r.notAfter, r.revokedAt !== undefined ? `${r.revokedAt} ${r.reason ?? ''}`.trim() : '-'])
  const widths = head.map((h, i) => Math.max(h.length, ...cells.map((c) => (c[i] ?? '').length)))
  return [head, ...cells].map((c) => c.map((v, i) => i === c.length - 1 ? v : v.padEnd(widths[i] ?? 0)).join('  ')).join('\n') + '\n'
}

const certList: Command = {
  path: ['cert', 'list'],
  usage: 'cert list [--id ID] [--status active|revoked|expired] [--json]',
  options: { id: { type: 'string' }, status: { type: 'string' }, json: { type: 'boolean' } },
  async run (ctx) {
    const op = 'cert list'
    const status = str(ctx, 'status')
    if (status !== undefined && !(STATUSES as readonly string[]).includes(status)) {
      throw new ZtError('ZT_BAD_ARGUMENT', `${op}: --status ${JSON.stringify(status)} is not one of ${STATUSES.join(', ')}`)
    }
    const id = str(ctx, 'id')
    const rows = await withStore(ctx, async (store) => await store.list({
      ...(id !== undefined ? { id } : {}),
      ...(status !== undefined ? { status: status as CertStatus } : {}),
    }))
    if (flag(ctx, 'json')) {
      // Fixed key order, and the optional keys only on revoked entries, as PRODUCT.md describes.
      const json = rows.map((r) => ({
        serial: r.serial, id: r.id, kind: r.kind, groups: r.groups, notBefore: r.notBefore, notAfter: r.notAfter, status: r.status,
        ...(r.revokedAt !== undefined ? { revokedAt: r.revokedAt } : {}),
        ...(r.reason !== undefined ? { reason: r.reason } : {}),
      }))
      ctx.stdout.write(JSON.stringify(json, null, 2) + '\n')
      return
    }
    ctx.stdout.write(rows.length === 0 ? 'no certificates\n' : table(rows))
  },
}

const certRevoke: Command = {
  path: ['cert', 'revoke'],
  usage: 'cert revoke (<serial-hex> | --id ID) [--reason REASON]',
  positionals: [0, 1],
  options: { id: { type: 'string' }, reason: { type: 'string' } },
  async run (ctx) {
    const op = 'cert revoke'
    const serial = ctx.positionals[0]
    const id = str(ctx, 'id')
    if ((serial === undefined) === (id === undefined)) throw new ZtError('ZT_BAD_ARGUMENT', `${op}: give exactly one of a serial and --id ID`)
    const reason: RevocationReason = checkReason(str(ctx, 'reason') ?? 'unspecified', op)
    const results = await withStore(ctx, async (store) => await revokeIn(store, serial !== undefined ? { serial } : { id: id as string }, reason))
    for (const { revocation: r, created } of results) {
      ctx.stdout.write(created
        ? `revoked ${r.serial} (id ${r.id}, reason ${r.reason}) at ${r.revokedAt}\n`
        : `${r.serial} (id ${r.id}) was already revoked at ${r.revokedAt} (reason ${r.reason}); unchanged\n`)
    }
  },
}

const crl: Command = {
  path: ['crl'],
  usage: 'crl [--der] [--out FILE]',
  options: { der: { type: 'boolean' }, out: { type: 'string' } },
  async run (ctx) {
    const op = 'crl'
    const out = str(ctx, 'out')
    const authority = await openAuthority(ctx.home, authorityOptions(ctx))
    try {
      const der = await authority.crl()
      const data = flag(ctx, 'der') ? der : derToPem(der, 'X509 CRL')
      if (out !== undefined) {
        await writeFileAtomic(path.resolve(out), data, { mode: 0o644, operation: op })
      } else {
        ctx.stdout.write(data)
      }
    } finally {
      await authority.close()
    }
  },
}

export const commands: Command[] = [caInit, caShow, certIssue, certIssueBulk, certList, certRevoke, crl]
