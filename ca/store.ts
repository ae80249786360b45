// Chooses the CertStore a home uses: Redis when a URL is given, else the file store inside the home.
import type { CertStore } from '../store/types.js'
import { openFileStore } from '../store/file.js'
import type { LoadedHome } from './home.js'

/** Opens the store a home uses: Redis when redisUrl is given, else files in the home. */
export async function openStore (home: LoadedHome, options: { redisUrl?: string | undefined } = {}): Promise<CertStore> {
  if (options.redisUrl !== undefined && options.redisUrl !== '') {
    // Loaded only when a Redis URL is given, so the file-store path never pulls in ioredis.
    const { openRedisStore } = await import('../store/redis.js')
    return await openRedisStore({ url: options.redisUrl })
  }
  return await openFileStore(home.paths.storeDir)
}

