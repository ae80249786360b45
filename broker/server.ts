// `startBroker(config)`: CA home, store, revocation mirror, policies, Aedes, the mutual-TLS listener and the HTTP side.
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import type { Server as TlsServer } from 'node:tls'
import { Aedes, type AedesOptions } from 'aedes'
import pino, { type DestinationStream, type Logger } from 'pino'
import { loadHome, type LoadedHome } from '../ca/index.js'
import { isZtError, oneLine } from '../common/errors.js'
import { resolvePoliciesDir, watchPolicies, type PolicyWatcher } from '../policies/index.js'
import type { CertStore } from '../store/types.js'
import { openStore } from '../ca/index.js'
import { openRedisStore } from '../store/redis.js'
import type { BrokerConfig } from './config.js'
import { RevocationMirror, type MirrorState } from './revocation.js'
import { zeroTrust, type ZeroTrust } from './plugin.js'
import { trustFromHome } from './tls.js'
import { BrokerMetrics } from './metrics.js'
import { createAdminServer, openAdminAuthority } from './admin.js'
import { redisBackends } from './cluster.js'
import { CrlService } from './crl.js'
import type { RevocationView } from './decide.js'

/** Keys pino must never print, at the top level or one level down, whatever a caller logs by mistake. */
export const REDACTED_KEYS: ReadonlySet<string> = new Set([
  'passphrase', 'password', 'key', 'keyPem', 'serverKeyPem', 'payload', 'redisUrl',
])
const CENSOR = '[redacted]'

function isPlainObject (v: unknown): v is Record<string, unknown> {
  if (v === null || typeof v !== 'object') return false
  const proto = Object.getPrototypeOf(v) as unknown
  return proto === Object.prototype || proto === null
}

/**
 * Censors REDACTED_KEYS in a log line's fields (`key` and `*.key`, as pino's redact paths would), copying only what
 * it changes: the caller's objects are left as they were. pino's own redact with those wildcard paths cost about
 * 19 µs per line, three times the rest of the line; this walk costs well under a microsecond for an audit line.
 */
export function censorSecrets (fields: Record<string, unknown>): Record<string, unknown> {
  let out: Record<string, unknown> | undefined
  for (const k in fields) {
    if (!Object.prototype.hasOwnProperty.call(fields, k)) continue
    const v = fields[k]
    if (REDACTED_KEYS.has(k)) {
      out ??= { ...fields }
      out[k] = CENSOR
      continue
    }
    if (!isPlainObject(v)) continue
    let inner: Record<string, unknown> | undefined
    for (const j in v) {
      if (REDACTED_KEYS.has(j) && Object.prototype.hasOwnProperty.call(v, j)) {
        inner ??= { ...v }
        inner[j] = CENSOR
      }
    }
    if (inner !== undefined) {
      out ??= { ...fields }
      out[k] = inner
    }
  }
  return out ?? fields
}

/**
 * The broker's logger. Without a destination it writes to stdout synchronously: an audit line is handed to the kernel
 * before the action it records goes on, and on a broker pinned to one core it is also cheaper (~32 µs of CPU per
 * line against ~43 µs for pino's default asynchronous stdout, which wakes a libuv thread for every line).
 */
export function createLogger (level: string, destination?: DestinationStream): Logger {
  const opts = { level, formatters: { log: censorSecrets }, base: { name: 'aedes-zt' } }
  return pino(opts, destination ?? pino.destination({ dest: 1, sync: true }))
}

/**
 * Where Aedes keeps sessions and routes messages. In memory without Redis; with redisUrl, the cluster wiring of
 * broker/cluster.ts (aedes-persistence-redis + mqemitter-redis).
 */
export interface AedesBackends {
  persistence?: unknown
  mq?: unknown
  /** While this answers false the node admits no one (shared sessions not loaded yet). @default always ready */
  ready?: () => boolean
  close?: () => Promise<void>
}

export interface StartOptions {
  /** pino destination for the log (tests capture it); default stdout. */
  logStream?: DestinationStream
  logger?: Logger
  /** Builds the Aedes persistence and emitter; default: Redis (broker/cluster.ts) with redisUrl, else in memory. */
  backends?: (config: Readonly<BrokerConfig>) => Promise<AedesBackends>
  /** Where CRL signing and the admin API read AEDES_ZT_CA_PASSPHRASE (a dev home uses its own file). @default process.env */
  env?: NodeJS.ProcessEnv
}

export interface RunningBroker {
  readonly config: Readonly<BrokerConfig>
  readonly home: LoadedHome
  readonly aedes: Aedes
  readonly zeroTrust: ZeroTrust
  readonly mirror: RevocationMirror
  readonly store: CertStore
  readonly policies: PolicyWatcher
  readonly logger: Logger
  /** Bound MQTT port (useful with port 0). */
  readonly port: number
  /** Bound HTTP port, or null when disabled. */
  readonly httpPort: number | null
  /** Bound admin API port, or null when disabled. */
  readonly adminPort: number | null
  /** This broker's Prometheus metrics (also served at GET /metrics). */
  readonly metrics: BrokerMetrics
  /** The CRL this node serves at GET /crl, and re-signs when it holds the CA key. */
  readonly crl: CrlService
  /** Whether new connections are admitted now (the revocation mirror is current and shared sessions are loaded). */
  admitting (): boolean
  /** Whether Aedes' sessions are loaded (always true in memory; with Redis, once they were read from it). */
  sessionsReady (): boolean
  close (): Promise<void>
}

function listen (server: http.Server | TlsServer, port: number, host: string | null): Promise<number> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error): void => { reject(err) }
    server.once('error', onError)
    const done = (): void => {
      server.off('error', onError)
      resolve((server.address() as AddressInfo).port)
    }
    if (host === null) server.listen(port, done)
    else server.listen(port, host, done)
  })
}

function closeServer (server: http.Server | TlsServer): Promise<void> {
  return new Promise((resolve) => { server.close(() => { resolve() }) })
}

/** GET /healthz, /crl and /metrics, plain HTTP: a CRL is public and signed, health and metrics are for load balancers and scrapers. */
function httpHandler (broker: () => RunningBroker | undefined): http.RequestListener {
  return (req, res) => {
    const b = broker()
    const url = (req.url ?? '/').split('?')[0]
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end()
      return
    }
    if (b === undefined) {
      res.writeHead(503, { 'content-type': 'application/json' }).end(JSON.stringify({ status: 'starting' }))
      return
    }
    if (url === '/healthz') {
      const state: MirrorState = b.mirror.state()
      const admitting = b.admitting()
      const body = JSON.stringify({
        status: admitting ? 'ok' : 'refusing',
        connections: b.zeroTrust.connections,
        revocation: { ...state, stalenessMs: Number.isFinite(state.stalenessMs) ? state.stalenessMs : null },
        sessionsReady: b.sessionsReady(),
        policiesGeneration: b.policies.current().generation,
      })
      res.writeHead(admitting ? 200 : 503, { 'content-type': 'application/json', 'cache-control': 'no-store' }).end(req.method === 'HEAD' ? undefined : body)
      return
    }
    if (url === '/metrics') {
      b.metrics.scrape().then(({ contentType, body }) => {
        res.writeHead(200, { 'content-type': contentType, 'cache-control': 'no-store' }).end(req.method === 'HEAD' ? undefined : body)
      }, (err: unknown) => {
        b.logger.error({ event: 'http.metrics.error', reason: oneLine(err) }, 'GET /metrics failed')
        res.writeHead(500, { 'content-type': 'text/plain' }).end('metrics unavailable\n')
      })
      return
    }
    if (url === '/crl') {
      b.crl.current().then((der) => {
        if (der === null) {
          res.writeHead(404, { 'content-type': 'text/plain' }).end('no CRL has been made yet; run aedes-zt crl\n')
          return
        }
        res.writeHead(200, { 'content-type': 'application/pkix-crl', 'content-length': String(der.length), 'cache-control': 'no-cache' })
        res.end(req.method === 'HEAD' ? undefined : Buffer.from(der.buffer, der.byteOffset, der.byteLength))
      }, (err: unknown) => {
        b.logger.error({ event: 'http.crl.error', reason: oneLine(err) }, 'GET /crl failed')
        res.writeHead(503, { 'content-type': 'text/plain' }).end('certificate store unavailable\n')
      })
      return
    }
    res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n')
  }
}

/**
 * The mirror as the plugin sees it, with one more condition for admitting: the shared sessions are loaded. A node
 * that admitted before aedes-persistence-redis had read every persistent subscription would miss messages for them.
 */
function gatedView (mirror: RevocationMirror, ready: () => boolean): RevocationView {
  return {
    isRevoked: (serial) => mirror.isRevoked(serial),
    get: (serial) => mirror.get(serial),
    state: () => ({ current: mirror.state().current && ready() }),
    on: (event, listener) => mirror.on(event, listener),
    off: (event, listener) => mirror.off(event, listener),
  }
}

const MIRROR_RETRY_MAX_MS = 2_000

/** Waits for Redis the usual short while (so a healthy start loads at once), then settles for connecting later. */
async function openRedisStoreAnyway (url: string, logger: Logger): Promise<CertStore> {
  try {
    return await openRedisStore({ url, logger })
  } catch (err) {
    if (!isZtError(err) || err.code !== 'ZT_STORE_UNAVAILABLE') throw err
    logger.warn({ event: 'store.unavailable', backend: 'redis', reason: oneLine(err) }, 'Redis is not answering; starting anyway and admitting no one until it does')
    return await openRedisStore({ url, logger, waitForConnection: false })
  }
}

/**
 * Starts a broker from a resolved config (broker/config.ts resolveConfig). Rejects with a ZtError when the home,
 * the file store, the revocation mirror on files or the policies cannot be loaded, and with the listen error when a
 * port is taken. With Redis the node starts even while Redis is down: it admits no one (CONNACK 3, /healthz 503)
 * and keeps retrying until it has loaded the revocations and the shared sessions.
 */
export async function startBroker (config: Readonly<BrokerConfig>, options: StartOptions = {}): Promise<RunningBroker> {
  const logger = options.logger ?? createLogger(config.logLevel, options.logStream)
  const cleanups: Array<() => Promise<void> | void> = []
  const unwind = async (): Promise<void> => {
    const steps = cleanups.splice(0).reverse()
    for (const c of steps) {
      try { await c() } catch { /* already failing; the first error is the one to report */ }
    }
  }
  try {
    const home = await loadHome(config.home)
    const redisUrl = config.redisUrl
    const store: CertStore = redisUrl === null ? await openStore(home) : await openRedisStoreAnyway(redisUrl, logger)
    cleanups.push(() => store.close())
    // Currency is confirmed once per feed read, and a read waits up to blockMs: staleness peaks near twice that, so a
    // blockMs close to a short bound would make a healthy node flap between admitting and refusing.
    const blockMs = Math.max(25, Math.min(1_000, Math.floor(config.revocation.maxStalenessMs / 4)))
    const mirror = new RevocationMirror(store, { maxStalenessMs: config.revocation.maxStalenessMs, blockMs, logger })
    cleanups.push(() => mirror.close())
    if (redisUrl === null) {
      await mirror.start()
    } else {
      // Redis may be down right now: a node that cannot load admits no one (the mirror is not current) but stays up,
      // answering CONNACK 3 and /healthz 503, so it joins by itself when Redis returns.
      let stopped = false
      let retry: NodeJS.Timeout | undefined
      const attempt = (delay: number): void => {
        mirror.start().catch(() => {
          if (stopped) return
          retry = setTimeout(() => { attempt(Math.min(delay * 2, MIRROR_RETRY_MAX_MS)) }, delay)
        })
      }
      attempt(100)
      cleanups.push(() => { stopped = true; clearTimeout(retry) })
    }
    const policiesDir = resolvePoliciesDir(config.policies ?? undefined)
    const metrics = new BrokerMetrics({ revocation: mirror, loadCrl: () => store.loadCrl() })
    const policies = watchPolicies(policiesDir, {
      onReload: (set) => { logger.info({ event: 'policies.reloaded', generation: set.generation, files: set.files }, 'policies reloaded'); metrics.record('policies.reloaded', {}) },
      onError: (err) => { logger.error({ event: 'policies.rejected', reason: oneLine(err) }, 'policy change rejected; the last good set stays'); metrics.record('policies.rejected', {}) },
    })
    cleanups.push(() => { policies.close() })
    logger.info({ event: 'policies.loaded', dir: policiesDir, generation: policies.current().generation, statements: policies.current().statements.length }, 'policies loaded')

    const backends: AedesBackends = options.backends !== undefined
      ? await options.backends(config)
      : redisUrl !== null ? redisBackends({ url: redisUrl, logger }) : {}
    if (backends.close !== undefined) cleanups.push(backends.close)
    const sessionsReady = backends.ready ?? (() => true)
    const admission: RevocationView = backends.ready === undefined ? mirror : gatedView(mirror, sessionsReady)
    // A node silent this long is taken for dead by the others, which then publish its clients' wills.
    const aedesOptions: AedesOptions = { heartbeatInterval: config.cluster.heartbeatMs }
    if (backends.persistence !== undefined) aedesOptions.persistence = backends.persistence
    if (backends.mq !== undefined) aedesOptions.mq = backends.mq
    const aedes = await Aedes.createBroker(aedesOptions)
    cleanups.push(() => new Promise<void>((resolve) => { aedes.close(() => { resolve() }) }))
    // Aedes re-emits persistence failures while clearing wills as 'error'; unhandled, that would kill the process.
    ;(aedes as unknown as NodeJS.EventEmitter).on('error', (err: Error) => { logger.error({ event: 'aedes.error', reason: oneLine(err) }, 'aedes error') })

    const zt = zeroTrust(aedes, {
      ca: trustFromHome(home),
      store,
      revocation: admission,
      policies,
      identity: config.identity,
      limits: config.limits,
      logger,
      metrics,
    })
    cleanups.push(() => { zt.detach() })
    const tlsServer = zt.createServer()
    const port = await listen(tlsServer, config.port, config.host)
    // Not awaited: server.close() waits for every connection, and Aedes (closed next) is what ends them.
    cleanups.push(() => { tlsServer.close() })

    let running: RunningBroker | undefined
    let httpPort: number | null = null
    let httpServer: http.Server | undefined
    if (config.httpPort !== null) {
      httpServer = http.createServer(httpHandler(() => running))
      httpPort = await listen(httpServer, config.httpPort, config.host)
      const s = httpServer
      cleanups.push(() => { s.closeAllConnections(); return closeServer(s) })
    }

    // The CA key is optional on a broker: a node that can open it re-signs the CRL after revocations and for the admin
    // API; the others only serve what the store holds.
    const opened = await openAdminAuthority(config.home, store, options.env ?? process.env)
    if (opened.authority !== null) {
      const a = opened.authority
      cleanups.push(() => a.close())
    }
    const crl = new CrlService({ store, issuingPem: home.issuingPem, authority: opened.authority, revocation: mirror, logger })
    crl.start()
    cleanups.push(() => crl.close())

    let adminPort: number | null = null
    if (config.adminPort !== null) {
      if (opened.authority === null) {
        logger.warn({ event: 'admin.ca.unavailable', reason: opened.problem }, 'admin API: the CA keys cannot be opened; issuing and CRL signing answer 503')
      }
      const adminServer = createAdminServer({
        ca: trustFromHome(home),
        limits: config.limits,
        store,
        revocation: mirror,
        policies,
        requireIssuedSerial: config.identity.requireIssuedSerial,
        authority: opened.authority,
        ...(opened.authority === null ? { authorityProblem: opened.problem } : {}),
        logger,
        metrics,
        crl,
      })
      adminPort = await listen(adminServer, config.adminPort, config.host)
      cleanups.push(() => { adminServer.closeAllConnections(); return closeServer(adminServer) })
    }

    let closing: Promise<void> | undefined
    running = {
      config, home, aedes, zeroTrust: zt, mirror, store, policies, logger, port, httpPort, adminPort, metrics, crl,
      admitting: () => admission.state().current,
      sessionsReady,
      close () {
        closing ??= (async () => {
          logger.info({ event: 'broker.stopping' }, 'shutting down')
          // Reverse order of creation: stop listening, close sessions (Aedes), then policies, mirror, store.
          await unwind()
          logger.info({ event: 'broker.stopped' }, 'stopped')
        })()
        return closing
      },
    }
    logger.info({ event: 'broker.started', port, httpPort, adminPort, home: home.paths.home, trustDomain: home.config.trustDomain, store: store.backend, sessions: backends.persistence === undefined ? 'memory' : 'shared', crlSigner: crl.signing }, `MQTT over mutual TLS on port ${port}`)
    return running
  } catch (err) {
    await unwind()
    throw err
  }
}
