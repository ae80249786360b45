// Chooses the CertStore a home uses: Redis when a URL is given, else the file store inside the home.
import { ZtError } from '../common/errors.js'
import type { CertStore } from '../store/types.js'
import { openFileStore } from '../store/file.js'
import type { LoadedHome } from './home.js'

/**
 * Loaded only when a Redis URL is given, so the file-store path never pulls in ioredis. The specifier is a
 * variable so the CA still builds and runs (with a clear refusal) in a tree without the Redis store.
 */
const REDIS_STORE_MODULE = '../store/redis.js'
interface RedisStoreModule {
  openRedisStore (options: { url: string }): Promise<CertStore>
}

/** Opens the store a home uses: Redis when redisUrl is given, else files in the home. */
export async function openStore (home: LoadedHome, options: { redisUrl?: string | undefined } = {}): Promise<CertStore> {
  if (options.redisUrl !== undefined && options.redisUrl !== '') {
    let mod: Partial<RedisStoreModule>
    try {
      mod = await import(REDIS_STORE_MODULE) as Partial<RedisStoreModule>
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ERR_MODULE_NOT_FOUND') {
        throw new ZtError('ZT_STORE_UNAVAILABLE', `open store: Redis store not available yet (given ${redactUrl(options.redisUrl)}); unset REDIS_URL/--redis to use the file store`)
      }
      throw err
    }
    if (typeof mod.openRedisStore !== 'function') throw new ZtError('ZT_STORE_UNAVAILABLE', 'open store: store/redis.js does not export openRedisStore')
    return await mod.openRedisStore({ url: options.redisUrl })
  }
  return await openFileStore(home.paths.storeDir)
}

/** A Redis URL may carry a password: never print it. */
export function redactUrl (url: string): string {
  try {
    const u = new URL(url)
    if (u.password !== '') u.password = '***'
    return u.toString()
  } catch {
    return '<unparseable URL>'
  }
}
