// The Redis store through the shared CertStore contract, each test under its own key prefix on the real Redis.
import { openRedisStore, type RedisCertStore } from '../store/redis.js'
import { deletePrefix, REDIS_URL, testPrefix } from './helpers/redis.js'
import { storeContract } from './store-contract.js'

storeContract('redis', async () => {
  const prefix = testPrefix()
  const store = await openRedisStore({ url: REDIS_URL, prefix })
  const others: RedisCertStore[] = []
  return {
    store,
    openSecond: async () => {
      const s = await openRedisStore({ url: REDIS_URL, prefix })
      others.push(s)
      return s
    },
    async cleanup () {
      await store.close()
      for (const s of others) await s.close()
      await deletePrefix(prefix)
    },
  }
})
