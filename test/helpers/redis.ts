// Test plumbing for the real Redis: per-test key prefixes and their cleanup, and a TCP proxy a test can cut.
import { randomUUID } from 'node:crypto'
import net from 'node:net'
import { Redis } from 'ioredis'
import { redisKeys } from '../../store/redis-keys.js'

/** The Redis the tests use: $REDIS_URL, else the CI one on 127.0.0.1:6379. */
export const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379'

/** A prefix no other test (or test run) shares, so tests can run side by side on one Redis. */
export function testPrefix (): string {
  return `azt-test:${randomUUID()}:`
}

/** Deletes every key under the prefix (SCAN + UNLINK: never KEYS, never FLUSHDB on a shared server). */
export async function deletePrefix (prefix: string, url: string = REDIS_URL): Promise<number> {
  const client = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1 })
  client.on('error', () => {})
  await client.connect()
  let deleted = 0
  try {
    let cursor = '0'
    do {
      const [next, keys] = await client.scan(cursor, 'MATCH', redisKeys(prefix).pattern, 'COUNT', 1000)
      cursor = next
      if (keys.length > 0) deleted += await client.unlink(...keys)
    } while (cursor !== '0')
  } finally {
    client.disconnect()
  }
  return deleted
}

/**
 * A TCP proxy in front of Redis. cut() drops every connection and refuses new ones (as a node that lost its
 * network would see it); restore() lets connections through again. The listening port stays ours throughout.
 */
export class TcpProxy {
  readonly #server: net.Server
  readonly #sockets = new Set<net.Socket>()
  readonly #target: { host: string, port: number }
  #cut = false

  private constructor (target: { host: string, port: number }) {
    this.#target = target
    this.#server = net.createServer((client) => { this.#accept(client) })
  }

  static async start (targetUrl: string = REDIS_URL): Promise<TcpProxy> {
    const u = new URL(targetUrl)
    const proxy = new TcpProxy({ host: u.hostname, port: Number(u.port || 6379) })
    await new Promise<void>((resolve, reject) => {
      proxy.#server.once('error', reject)
      proxy.#server.listen(0, '127.0.0.1', () => { resolve() })
    })
    return proxy
  }

  get port (): number {
    const address = this.#server.address()
    if (address === null || typeof address === 'string') throw new Error('proxy is not listening')
    return address.port
  }

  get url (): string {
    return `redis://127.0.0.1:${this.port}`
  }

  #accept (client: net.Socket): void {
    if (this.#cut) { client.destroy(); return }
    const upstream = net.connect(this.#target)
    this.#sockets.add(client)
    this.#sockets.add(upstream)
    const drop = (): void => {
      client.destroy(); upstream.destroy()
      this.#sockets.delete(client); this.#sockets.delete(upstream)
    }
    client.on('error', drop).on('close', drop)
    upstream.on('error', drop).on('close', drop)
    client.pipe(upstream)
    upstream.pipe(client)
  }

  cut (): void {
    this.#cut = true
    for (const s of this.#sockets) s.destroy()
    this.#sockets.clear()
  }

  restore (): void {
    this.#cut = false
  }

  async close (): Promise<void> {
    this.cut()
    await new Promise<void>((resolve) => { this.#server.close(() => { resolve() }) })
  }
}

/** Polls until the check passes or the timeout expires; no timing is asserted, only that it happens eventually. */
export async function eventually (check: () => boolean | Promise<boolean>, timeoutMs = 10_000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (await check()) return
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

/** A free TCP port on 127.0.0.1 (bind port 0, read it, release it). */
export async function freePort (): Promise<number> {
  return await new Promise((resolve, reject) => {
    const server = net.createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      server.close(() => { typeof address === 'object' && address !== null ? resolve(address.port) : reject(new Error('no port')) })
    })
  })
}

export interface RedisServerProcess {
  url: string
  /** Stops the server: SIGKILL by default, so nothing gets a chance to flush at exit. */
  stop (signal?: NodeJS.Signals): Promise<void>
}

/**
 * Starts a private redis-server with its data in `dir`, AOF with appendfsync always by default: the setting under
 * which an acknowledged revoke survives even a kill -9 of Redis. Start it again on the same dir to "restart" it.
 */
export async function startRedisServer (dir: string, options: { port?: number, appendfsync?: 'always' | 'everysec' } = {}): Promise<RedisServerProcess & { port: number }> {
  const { spawn } = await import('node:child_process')
  const port = options.port ?? await freePort()
  const child = spawn('redis-server', [
    '--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '',
    '--appendonly', 'yes', '--appendfsync', options.appendfsync ?? 'always', '--logfile', '',
  ], { stdio: 'ignore' })
  const exited = new Promise<void>((resolve) => { child.once('exit', () => { resolve() }) })
  const url = `redis://127.0.0.1:${port}`
  const probe = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null })
  // Refused connects until the server is up are expected; without a listener ioredis prints each one.
  probe.on('error', () => {})
  const deadline = Date.now() + 10_000
  for (;;) {
    try {
      await probe.connect()
      await probe.ping()
      probe.disconnect()
      break
    } catch {
      if (Date.now() > deadline) { child.kill('SIGKILL'); throw new Error(`redis-server on port ${port} did not start`) }
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
  }
  return {
    url,
    port,
    async stop (signal: NodeJS.Signals = 'SIGKILL') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal)
      await exited
    },
  }
}
