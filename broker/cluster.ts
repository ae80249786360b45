// Cluster wiring: Aedes sessions, retained messages, wills and routing in Redis (aedes-persistence-redis, mqemitter-redis).
import { randomUUID } from 'node:crypto'
import { createRequire } from 'node:module'
import { Redis, type RedisOptions } from 'ioredis'
import type { Logger } from 'pino'
import { oneLine, ZtError } from '../common/errors.js'
import { DEFAULT_PREFIX, escapePart } from '../store/redis-keys.js'

/**
 * Aedes' keys go under the store's prefix, so one SCAN MATCH finds everything the deployment keeps in Redis.
 * Pub/sub channels cannot be namespaced the same way: mqemitter-redis' prefix variant keys its proxy callbacks by
 * function, and Aedes subscribes one function per client to many topics, so unsubscribing would remove the wrong
 * listener. Channels are global across Redis databases too: give each cluster a Redis of its own.
 */
export const AEDES_KEY_PREFIX = `${DEFAULT_PREFIX}aedes:`

export interface ClusterBackendsOptions {
  /** redis:// or rediss:// URL, the same Redis as the certificate store. */
  url: string
  logger?: Logger | undefined
  /** @default AEDES_KEY_PREFIX */
  keyPrefix?: string
  /**
   * How long a node's claim on a dead node's will holds. The claimer publishes (or, when the plugin refuses it, drops)
   * the will and deletes it at once; the claim only has to outlive the other survivors' reads of the will list. If the
   * claimer dies before it is done, another survivor publishes the will once the claim has expired.
   * @default 60000
   */
  willClaimTtlMs?: number
}

/** What startBroker hands to Aedes (persistence and mq), plus whether the shared session state is loaded yet. */
export interface ClusterBackends {
  persistence: unknown
  mq: unknown
  /** false until aedes-persistence-redis has loaded every persistent subscription: the node must not admit before. */
  ready (): boolean
  close (): Promise<void>
}

/** A Last Will as aedes-persistence-redis stores and streams it (putWill adds clientId and brokerId). */
type StoredWill = { clientId?: unknown, brokerId?: unknown, ztSerial?: unknown, ztWillId?: unknown }

interface CallbackPersistence {
  setup (broker: unknown): Promise<void>
  putWill (client: unknown, packet: StoredWill, cb?: unknown): unknown
  streamWill (brokers: unknown): AsyncIterable<StoredWill>
}

interface MqEmitter {
  state: NodeJS.EventEmitter
  close (cb?: () => void): void
}

type PersistenceFactory = (opts: { conn: Redis }) => CallbackPersistence
type MqFactory = (opts: { subConn: Redis, pubConn: Redis }) => MqEmitter

const require = createRequire(import.meta.url)

const SETUP_RETRY_MIN_MS = 100
const SETUP_RETRY_MAX_MS = 2_000
/** mqemitter-redis closes with QUIT and waits for both links to end: during an outage that would never happen. */
const MQ_CLOSE_GRACE_MS = 1_000
const DEFAULT_WILL_CLAIM_TTL_MS = 60_000

/**
 * Builds the Redis persistence and emitter for Aedes. Returns at once, even while Redis is down: the persistence's
 * setup (loading every persistent subscription) is retried in the background, and ready() stays false until it has
 * succeeded, so a node that starts during an outage stays up and refuses connections instead of failing to start.
 */
export function redisBackends (options: ClusterBackendsOptions): ClusterBackends {
  // CommonJS without (usable) types, so this file is the one place that knows their shape; loaded only for a cluster.
  const persistenceRedis = require('aedes-persistence-redis') as PersistenceFactory
  const mqemitterRedis = require('mqemitter-redis') as MqFactory
  const log = options.logger
  const willClaimTtlMs = options.willClaimTtlMs ?? DEFAULT_WILL_CLAIM_TTL_MS
  if (!Number.isInteger(willClaimTtlMs) || willClaimTtlMs <= 0) throw new ZtError('ZT_BAD_CONFIG', `cluster: willClaimTtlMs ${willClaimTtlMs} must be a positive integer`, { willClaimTtlMs })
  const base: RedisOptions = {
    // Reconnect for as long as the process lives; revocation staleness, not this, decides when to stop admitting.
    retryStrategy: (times) => Math.min(times * 100, 1_000),
    keepAlive: 10_000,
  }
  const conn = new Redis(options.url, { ...base, keyPrefix: options.keyPrefix ?? AEDES_KEY_PREFIX, connectionName: 'azt-aedes' })
  const subConn = new Redis(options.url, { ...base, connectionName: 'azt-mq-sub' })
  // mqemitter-redis turns this on for the connections it makes itself; ours should publish as fast.
  const pubConn = new Redis(options.url, { ...base, enableAutoPipelining: true, connectionName: 'azt-mq-pub' })
  let closed = false
  watch(conn, 'sessions')
  watch(subConn, 'routing-sub')
  watch(pubConn, 'routing-pub')

  /** Logs transitions only: ioredis reports every failed reconnect, which would flood the log during an outage. */
  function watch (client: Redis, role: string): void {
    let down = false
    client.on('error', (err: Error) => {
      if (!down && !closed) log?.warn({ event: 'cluster.redis.lost', role, reason: oneLine(err) }, `cluster: Redis connection (${role}) lost; reconnecting`)
      down = true
    })
    client.on('ready', () => {
      if (down && !closed) log?.info({ event: 'cluster.redis.restored', role }, `cluster: Redis connection (${role}) restored`)
      down = false
    })
  }

  // mqemitter-redis closes with quit() and never handles its promise: during an outage it rejects ("Connection is
  // closed") and an unhandled rejection would kill the process on shutdown.
  for (const link of [subConn, pubConn]) {
    const quit = link.quit.bind(link)
    link.quit = ((...args: Parameters<typeof quit>) => quit(...args).catch(() => 'OK')) as typeof link.quit
  }
  const mq = mqemitterRedis({ subConn, pubConn })
  // Its state emitter re-emits connection errors as 'error': without a listener that would kill the process.
  mq.state.on('error', () => {})
  const closeMq = mq.close.bind(mq)
  mq.close = (cb?: () => void): void => {
    let done = false
    const finish = (): void => { if (!done) { done = true; clearTimeout(timer); cb?.() } }
    const timer = setTimeout(() => { subConn.disconnect(); pubConn.disconnect(); finish() }, MQ_CLOSE_GRACE_MS)
    closeMq(finish)
  }

  const persistence = persistenceRedis({ conn })
  const realSetup = persistence.setup.bind(persistence)
  let ready = false
  let retry: NodeJS.Timeout | undefined
  let nodeId = ''
  claimWills(persistence, conn, () => nodeId, willClaimTtlMs, log)
  // Aedes awaits setup() before it listens; checks it is an async function, hence `async`.
  persistence.setup = async (broker: unknown): Promise<void> => {
    nodeId = String((broker as { id?: unknown }).id ?? '')
    let delay = SETUP_RETRY_MIN_MS
    let failures = 0
    const attempt = (): void => {
      realSetup(broker).then(() => {
        if (closed) return
        ready = true
        log?.info({ event: 'cluster.sessions.loaded', retries: failures }, 'cluster: shared sessions loaded from Redis')
      }, (err: unknown) => {
        if (closed) return
        if (failures === 0) log?.warn({ event: 'cluster.sessions.unavailable', reason: oneLine(err) }, 'cluster: cannot load shared sessions from Redis; admitting no one and retrying')
        failures++
        retry = setTimeout(attempt, delay)
        delay = Math.min(delay * 2, SETUP_RETRY_MAX_MS)
      })
    }
    attempt()
  }

  return {
    persistence,
    mq,
    ready: () => ready,
    async close () {
      closed = true
      clearTimeout(retry)
      // Aedes has closed the emitter by now (QUIT, or disconnect after the grace); the persistence link is ours to end.
      conn.disconnect()
      subConn.disconnect()
      pubConn.disconnect()
    },
  }
}

/**
 * When a node dies, every survivor's Aedes finds its clients' wills (streamWill, every 4 heartbeats) and publishes
 * them: subscribers would get each will once per survivor. A survivor now publishes only the wills it claims first,
 * with SET NX on a key of the dead node, the client and the will's own id; the others skip them. The plugin still
 * judges the claimed will (a revoked owner's is dropped), so a will is judged once and published at most once.
 */
function claimWills (persistence: CallbackPersistence, conn: Redis, nodeId: () => string, ttlMs: number, log: Logger | undefined): void {
  const putWill = persistence.putWill.bind(persistence)
  persistence.putWill = (client: unknown, packet: StoredWill, cb?: unknown): unknown => {
    // A claim is on one will, not on a (node, client) pair: a new will of the same client under the same node id is
    // not silenced by an old claim still held.
    packet.ztWillId ??= randomUUID()
    return putWill(client, packet, cb)
  }
  const streamWill = persistence.streamWill.bind(persistence)
  persistence.streamWill = (brokers: unknown): AsyncIterable<StoredWill> => claimed(streamWill(brokers))

  async function * claimed (wills: AsyncIterable<StoredWill>): AsyncIterable<StoredWill> {
    for await (const will of wills) {
      const key = `will-claim:${[will.brokerId, will.clientId, will.ztWillId ?? ''].map((p) => escapePart(String(p))).join(':')}`
      // The connection carries the Aedes key prefix. A failed claim (Redis away) ends this sweep; Aedes retries at the next.
      if (await conn.set(key, nodeId(), 'PX', ttlMs, 'NX') !== 'OK') continue
      log?.info({ event: 'will.claimed', id: null, serial: typeof will.ztSerial === 'string' ? will.ztSerial : null, clientId: String(will.clientId), deadBroker: String(will.brokerId), reason: 'node-dead' }, 'cluster: publishing the will of a client of a dead node')
      yield will
    }
  }
}
