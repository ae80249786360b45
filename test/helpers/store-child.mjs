// A separate process working on a file store (the built dist/), for tests of the store lock across processes.
//   work DIR WORKER COUNT STALE_MS   COUNT rounds of: record a certificate, take a CRL number, and one critical
//                                    section under the store's lock file, traced to DIR/../trace
//   hold DIR STALE_MS HOLD_MS [HOST] take the lock, say "held", keep it HOLD_MS (0: until killed), say "released <ours>"
//   race DIR WORKER                  say "ready", wait for the file DIR/../go, then one traced critical section
// Each line written to the trace is "+WORKER" on entering a critical section and "-WORKER" on leaving it.
import { randomBytes } from 'node:crypto'
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { openFileStore } from '../../dist/store/file.js'
import { FileLock } from '../../dist/store/file-lock.js'

const [mode, dir, ...args] = process.argv.slice(2)
const trace = path.join(dir, '..', 'trace')
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

async function critical (lock, worker, ms) {
  const hold = await lock.acquire('trace')
  await fs.appendFile(trace, `+${worker}\n`)
  await sleep(ms)
  await fs.appendFile(trace, `-${worker}\n`)
  return await hold.release()
}

if (mode === 'work') {
  const [worker, count, staleMs] = args
  const store = await openFileStore(dir, { staleLockMs: Number(staleMs), lockTimeoutMs: 60_000 })
  const lock = new FileLock(path.join(dir, 'lock'), { timeoutMs: 60_000, staleMs: Number(staleMs) })
  process.stdout.write('ready\n')
  const numbers = []
  for (let i = 0; i < Number(count); i++) {
    const b = randomBytes(16)
    b[0] = 0x10 + (b[0] % 0x70)
    const now = Date.now()
    await store.recordIssued([{
      serial: b.toString('hex'), id: `w${worker}-${i}`, kind: 'device', groups: [], notBefore: new Date(now).toISOString(), notAfter: new Date(now + 86_400_000).toISOString(),
    }])
    numbers.push(String(await store.nextCrlNumber()))
    if (!(await critical(lock, worker, 1))) throw new Error('lost the lock while holding it')
  }
  await store.close()
  process.stdout.write(JSON.stringify({ numbers }) + '\n')
} else if (mode === 'hold') {
  const [staleMs, holdMs, host] = args
  const lock = new FileLock(path.join(dir, 'lock'), { timeoutMs: 60_000, staleMs: Number(staleMs), ...(host === undefined ? {} : { host }) })
  const hold = await lock.acquire('hold')
  await fs.appendFile(trace, '+hold\n')
  process.stdout.write('held\n')
  if (Number(holdMs) === 0) await new Promise(() => { setInterval(() => {}, 60_000) })
  await sleep(Number(holdMs))
  await fs.appendFile(trace, '-hold\n')
  process.stdout.write(`released ${await hold.release()}\n`)
} else if (mode === 'race') {
  const [worker] = args
  const lock = new FileLock(path.join(dir, 'lock'), { timeoutMs: 60_000, staleMs: 30_000 })
  process.stdout.write('ready\n')
  // Spin rather than sleep: every racer should see the go file (and the stale lock) within the same millisecond.
  for (;;) {
    try { await fs.access(path.join(dir, '..', 'go')); break } catch { /* not yet */ }
  }
  if (!(await critical(lock, worker, 20))) throw new Error('lost the lock while holding it')
} else {
  throw new Error(`store-child: unknown mode ${mode}`)
}
