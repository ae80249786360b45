// `aedes-zt broker`: resolves the config, makes the dev home on first `--dev` run, starts the broker, stops on a signal.
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { initHome, loadHome, openAuthority } from '../ca/index.js'
import { writeFileAtomic } from '../ca/fsutil.js'
import { isZtError, ZtError } from '../common/errors.js'
import type { ConfigInput } from '../broker/config.js'
import type { RunningBroker, StartOptions } from '../broker/server.js'
import type { Command, CommandContext } from './main.js'

/** Demo identities of a dev home: two sensors and an ingest backend, all served by the shipped default policies. */
export const DEV_DEVICES: ReadonlyArray<{ id: string, kind: 'device' | 'service', groups: string[] }> = [
  { id: 'sensor-1', kind: 'device', groups: ['sensors'] },
  { id: 'sensor-2', kind: 'device', groups: ['sensors'] },
  { id: 'backend-1', kind: 'service', groups: ['ingest'] },
]

function intOption (value: unknown, name: string): number | undefined {
  if (value === undefined) return undefined
  const s = String(value)
  if (!/^\d+$/.test(s) || Number(s) > 65535) throw new ZtError('ZT_BAD_ARGUMENT', `broker: --${name} ${JSON.stringify(s)} is not a port number (0-65535)`)
  return Number(s)
}

/** Creates the dev home with its demo device certificates; returns the lines to tell the user. */
async function makeDevHome (home: string): Promise<string[]> {
  const loaded = await initHome(home, { dev: true })
  const authority = await openAuthority(home)
  const dir = path.join(loaded.paths.home, 'devices')
  try {
    await fs.mkdir(dir, { recursive: true, mode: 0o700 })
    for (const d of DEV_DEVICES) {
      const b = await authority.issue({ id: d.id, kind: d.kind, groups: d.groups, generateKey: true })
      // The project's atomic writer: a key file is created 0600, never half-written, and never replaces another.
      await writeFileAtomic(path.join(dir, `${d.id}.key`), b.keyPem ?? '', { mode: 0o600, noClobber: true, operation: 'broker --dev' })
      await writeFileAtomic(path.join(dir, `${d.id}.pem`), b.bundlePem, { mode: 0o644, noClobber: true, operation: 'broker --dev' })
    }
  } finally {
    await authority.close()
  }
  return [
    `Created a development CA in ${loaded.paths.home} (trust domain ${loaded.config.trustDomain}).`,
    `A dev CA passphrase was generated and kept in ${loaded.paths.passphrase} (mode 0600): never use this home in production.`,
    `Demo certificates: ${DEV_DEVICES.map((d) => `${d.id} (${d.kind}${d.groups.length > 0 ? `, group ${d.groups.join(',')}` : ''})`).join(', ')} in ${dir}`,
  ]
}

function shellPath (p: string): string {
  const rel = path.relative(process.cwd(), p)
  const shown = rel !== '' && !rel.startsWith('..') && !path.isAbsolute(rel) ? rel : p
  return /^[\w./-]+$/.test(shown) ? shown : `'${shown.replace(/'/g, "'\\''")}'`
}

/** Copy-pasteable mosquitto lines that work with the dev home and the shipped default policies. */
export function tryItLines (home: string, port: number): string[] {
  const f = (name: string): string => shellPath(path.join(home, name))
  const creds = (id: string): string => `--cafile ${f('ca.pem')} --cert ${f(`devices/${id}.pem`)} --key ${f(`devices/${id}.key`)} -h localhost -p ${port}`
  return [
    'Try it (two terminals):',
    `  mosquitto_sub ${creds('backend-1')} -i backend-1 -t 'devices/+/telemetry' -v`,
    `  mosquitto_pub ${creds('sensor-1')} -i sensor-1 -t devices/sensor-1/telemetry -m '{"temp":21.5}'`,
    'sensor-1 may only write under devices/sensor-1/ (a publish to devices/sensor-2/... is dropped and logged);',
    'the client id must be the certificate id (-i). Policies: policies/default.yaml (reloaded on change).',
  ]
}

export interface RunBrokerOptions extends StartOptions {
  /** Stops the broker when aborted (the command wires SIGINT/SIGTERM to it). */
  signal?: AbortSignal
  /** Called once the broker listens. */
  onStarted?: (broker: RunningBroker) => void
}

/** The body of `aedes-zt broker`, separate from signal handling so it can be tested. */
export async function runBroker (ctx: CommandContext, options: RunBrokerOptions = {}): Promise<number> {
  const v = ctx.values
  const overrides: ConfigInput = {}
  const port = intOption(v.port, 'port')
  const httpPort = intOption(v['http-port'], 'http-port')
  const adminPort = intOption(v['admin-port'], 'admin-port')
  if (port !== undefined) overrides.port = port
  if (httpPort !== undefined) overrides.httpPort = httpPort
  if (adminPort !== undefined) overrides.adminPort = adminPort
  if (typeof v.host === 'string') overrides.host = v.host
  if (typeof v.policies === 'string') overrides.policies = v.policies
  if (!ctx.homeIsDefault) overrides.home = ctx.home
  if (ctx.redisUrl !== undefined) overrides.redisUrl = ctx.redisUrl
  // Loaded here, not at the top: Aedes, ioredis and prom-client would add ~0.1 s to every other CLI command.
  const [{ resolveConfig }, { startBroker }] = await Promise.all([import('../broker/config.js'), import('../broker/server.js')])
  const config = resolveConfig({ file: typeof v.config === 'string' ? v.config : undefined, env: ctx.env, overrides })

  const notes: string[] = []
  if (v.dev === true) {
    try {
      await loadHome(config.home)
    } catch (err) {
      if (!isZtError(err) || err.code !== 'ZT_NO_HOME') throw err
      if (!ctx.homeIsDefault && config.home !== './certs-dev') {
        throw new ZtError('ZT_NO_HOME', `broker --dev: ${config.home} holds no CA; --dev only creates the default home ./certs-dev (use aedes-zt ca init for others)`)
      }
      notes.push(...await makeDevHome(config.home))
    }
  }

  const broker = await startBroker(config, { env: ctx.env, ...options })
  const home = broker.home.paths.home
  const out = [...notes, `MQTT over mutual TLS on port ${broker.port}${broker.httpPort === null ? '' : `, HTTP (/healthz, /crl, /metrics) on port ${broker.httpPort}`}${broker.adminPort === null ? '' : `, admin API (operator certificates) on port ${broker.adminPort}`}.`]
  if (v.dev === true) out.push(...tryItLines(home, broker.port))
  ctx.stdout.write(out.join('\n') + '\n')
  options.onStarted?.(broker)

  await new Promise<void>((resolve) => {
    if (options.signal === undefined) return
    if (options.signal.aborted) { resolve(); return }
    options.signal.addEventListener('abort', () => { resolve() }, { once: true })
  })
  await broker.close()
  return 0
}

export const commands: Command[] = [
  {
    path: ['broker'],
    usage: 'broker [--config FILE] [--port 8883] [--host HOST] [--http-port 8080] [--admin-port PORT] [--policies DIR] [--redis URL] [--dev]',
    options: {
      config: { type: 'string' },
      port: { type: 'string' },
      host: { type: 'string' },
      'http-port': { type: 'string' },
      'admin-port': { type: 'string' },
      policies: { type: 'string' },
      dev: { type: 'boolean' },
    },
    async run (ctx) {
      const stop = new AbortController()
      const onSignal = (): void => { stop.abort() }
      process.once('SIGINT', onSignal)
      process.once('SIGTERM', onSignal)
      try {
        return await runBroker(ctx, { signal: stop.signal })
      } finally {
        process.off('SIGINT', onSignal)
        process.off('SIGTERM', onSignal)
      }
    },
  },
]
