// File-backed CertStore in a CA home: append-only JSONL inventory and revocations, the latter doubling as the feed.
import { watch, promises as fs, type FSWatcher } from 'node:fs'
import path from 'node:path'
import { ZtError } from '../common/errors.js'
import { canonicalSerial, checkReason, type RevocationReason } from '../common/ids.js'
import { fsyncDir, makeDir, writeFileAtomic } from '../ca/fsutil.js'
import { FileLock } from './file-lock.js'
import type {
  CertListFilter, CertListing, CertStore, FeedEntry, IssuedCert, Revocation, RevokeResult, StoredCrl,
} from './types.js'

/** Names of the store's files inside its directory (`<home>/store/`). */
export const FILE_STORE_FILES = {
  inventory: 'inventory.jsonl',
  revocations: 'revocations.jsonl',
  crlNumber: 'crl-number',
  crl: 'crl.json',
  lock: 'lock',
} as const

export interface FileStoreOptions {
  /** Give up waiting for another process's lock after this long (default 10 000 ms). */
  lockTimeoutMs?: number
  /**
   * A lock whose holder runs on another host or container (so its pid cannot be checked) counts as abandoned once it
   * has not been touched for this long (default 30 000 ms; holders touch it every quarter of that). A holder on this
   * host is checked by pid: its lock is broken as soon as it dies, never while it runs.
   */
  staleLockMs?: number
  /**
   * Feed poll interval where fs.watch is unavailable (default 25 ms). While fs.watch is armed the poll only backs it
   * up (a replaced file, a filesystem that drops events) and runs every `max(pollMs, 250)` ms.
   */
  pollMs?: number
}

const NL = 0x0a

/** Backup poll while fs.watch is armed: inotify wakes a reader within milliseconds, so this only bounds a lost event. */
const WATCHED_POLL_MS = 250

function storeError (operation: string, err: unknown): ZtError {
  if (err instanceof ZtError) return err
  const code = (err as NodeJS.ErrnoException).code
  return new ZtError('ZT_STORE_UNAVAILABLE', `${operation}: file store unavailable (${code ?? (err instanceof Error ? err.message : String(err))})`, {}, { cause: err })
}

/**
 * An append-only JSONL file mirrored in memory. Only complete lines count: a line without its newline is
 * either still being written or torn by a crash, and the next writer truncates it away under the lock.
 */
class JsonlFile<T> {
  /** Bytes through the last complete line already parsed. */
  offset = 0
  private running: Promise<void> | null = null
  private next: Promise<void> | null = null

  constructor (readonly file: string, private readonly onLine: (value: T, endOffset: number) => void, private readonly onReset: () => void) {}

  /**
   * Brings the mirror up to the file as it was when called; cheap (one stat) when nothing changed. A writer relies on
   * that under the lock: it must see every line other processes appended before it took the lock.
   */
  async refresh (): Promise<void> {
    if (this.running === null) {
      this.running = this.doRefresh().finally(() => { this.running = null })
      await this.running
      return
    }
    // The read in flight may have looked at the file before this call: queue one more, shared by all who wait for it.
    this.next ??= this.running.catch(() => {}).then(async () => {
      this.next = null
      await this.refresh()
    })
    await this.next
  }

  private async doRefresh (): Promise<void> {
    // A writer in this process may mirror its own lines while we wait (append()): the offset can move under us.
    const parsed = this.offset
    const { size } = await fs.stat(this.file)
    if (size < parsed) {
      // Only a torn tail is ever truncated, below what we parsed, so shrinking past it means the file was replaced.
      this.offset = 0
      this.onReset()
    }
    if (size <= this.offset) return
    const { lines } = await readLines(this.file, this.offset, size)
    for (const { value, end } of lines) {
      if (end <= this.offset) continue
      this.onLine(JSON.parse(value) as T, end)
      this.offset = end
    }
  }

  /**
   * Under the writer's lock, after the refresh() its checks were made on: drops a torn tail left by a crashed writer,
   * then appends whole lines and fsyncs.
   */
  async append (values: readonly unknown[]): Promise<void> {
    if (values.length === 0) return
    const at = this.offset
    const lines = values.map((v) => JSON.stringify(v) + '\n')
    const text = Buffer.from(lines.join(''), 'utf8')
    const handle = await fs.open(this.file, 'r+')
    try {
      const { size } = await handle.stat()
      if (size > at) {
        // Past what we parsed there may only be a torn line. A newline there is a record we never saw: the lock
        // did not keep another writer out, and truncating would destroy what it wrote.
        const tail = Buffer.alloc(size - at)
        await handle.read(tail, 0, tail.length, at)
        if (tail.includes(NL)) throw new ZtError('ZT_STORE_UNAVAILABLE', `${this.file} has records written without the store lock; nothing written`)
        await handle.truncate(at)
      }
      await handle.write(text, 0, text.length, at)
      await handle.sync()
    } finally {
      await handle.close()
    }
    // Nobody else writes under the lock, so the file now ends with exactly these lines: mirror them from memory
    // instead of reading them back. A reader's refresh in this process may have taken some already.
    let end = at
    for (const line of lines) {
      end += Buffer.byteLength(line, 'utf8')
      if (end <= this.offset) continue
      this.onLine(JSON.parse(line) as T, end)
      this.offset = end
    }
  }
}

/** Reads the complete lines between two byte offsets. */
async function readLines (file: string, from: number, to: number): Promise<{ lines: Array<{ value: string, end: number }> }> {
  const lines: Array<{ value: string, end: number }> = []
  if (to <= from) return { lines }
  const handle = await fs.open(file, 'r')
  try {
    const buf = Buffer.alloc(to - from)
    const { bytesRead } = await handle.read(buf, 0, buf.length, from)
    let start = 0
    for (let i = 0; i < bytesRead; i++) {
      if (buf[i] !== NL) continue
      if (i > start) lines.push({ value: buf.toString('utf8', start, i), end: from + i + 1 })
      start = i + 1
    }
  } finally {
    await handle.close()
  }
  return { lines }
}

export class FileCertStore implements CertStore {
  readonly backend = 'file' as const
  readonly dir: string
  private readonly files: Record<keyof typeof FILE_STORE_FILES, string>
  private readonly lock: FileLock
  private readonly staleLockMs: number
  private readonly pollMs: number

  private readonly issued = new Map<string, IssuedCert>()
  private readonly revoked = new Map<string, Revocation>()
  private revocationOrder: Revocation[] = []
  private readonly inventory: JsonlFile<IssuedCert>
  private readonly revocationLog: JsonlFile<Revocation>

  /** In-process queue in front of the file lock: the lock file alone would make our own calls spin. */
  private queue: Promise<void> = Promise.resolve()
  private closed = false
  private readonly waiters = new Set<() => void>()

  constructor (dir: string, options: FileStoreOptions = {}) {
    this.dir = dir
    this.files = {
      inventory: path.join(dir, FILE_STORE_FILES.inventory),
      revocations: path.join(dir, FILE_STORE_FILES.revocations),
      crlNumber: path.join(dir, FILE_STORE_FILES.crlNumber),
      crl: path.join(dir, FILE_STORE_FILES.crl),
      lock: path.join(dir, FILE_STORE_FILES.lock),
    }
    this.staleLockMs = options.staleLockMs ?? 30_000
    this.lock = new FileLock(this.files.lock, { timeoutMs: options.lockTimeoutMs ?? 10_000, staleMs: this.staleLockMs })
    this.pollMs = options.pollMs ?? 25
    this.inventory = new JsonlFile<IssuedCert>(this.files.inventory, (c) => { this.issued.set(c.serial, c) }, () => { this.issued.clear() })
    this.revocationLog = new JsonlFile<Revocation>(this.files.revocations, (r) => {
      // Revoke is idempotent at write time; the first record of a serial is the one that counts.
      if (!this.revoked.has(r.serial)) { this.revoked.set(r.serial, r); this.revocationOrder.push(r) }
    }, () => { this.revoked.clear(); this.revocationOrder = [] })
  }

  /** Creates the directory and files when missing and loads the mirror. */
  async open (): Promise<this> {
    try {
      const dirs = await makeDir(this.dir, 0o700)
      let created = dirs.length > 1
      for (const file of [this.files.inventory, this.files.revocations]) {
        try {
          await (await fs.open(file, 'wx', 0o600)).close()
          created = true
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
        }
      }
      // A new log's name (and a new store directory's) must be durable too, or fsynced records could vanish with it.
      if (created) await Promise.all(dirs.map(fsyncDir))
      await Promise.all([this.inventory.refresh(), this.revocationLog.refresh()])
    } catch (err) {
      throw storeError(`open store ${this.dir}`, err)
    }
    return this
  }

  private assertOpen (operation: string): void {
    if (this.closed) throw new ZtError('ZT_STORE_UNAVAILABLE', `${operation}: the store is closed`)
  }

  private async withLock<T> (operation: string, fn: () => Promise<T>): Promise<T> {
    this.assertOpen(operation)
    const previous = this.queue
    let release!: () => void
    this.queue = new Promise((resolve) => { release = resolve })
    await previous
    try {
      const hold = await this.lock.acquire(operation).catch((err: unknown) => { throw storeError(operation, err) })
      let result: T
      try {
        result = await fn()
      } catch (err) {
        await hold.release().catch(() => {})
        throw storeError(operation, err)
      }
      const ours = await hold.release().catch((err: unknown) => { throw storeError(operation, err) })
      // Another writer may have run meanwhile: a false failure (the caller can look) beats a false success.
      if (!ours) {
        throw new ZtError('ZT_STORE_UNAVAILABLE', `${operation}: the store lock ${this.files.lock} was broken while this process held it (silent for more than ${this.staleLockMs} ms); check the result before retrying`)
      }
      return result
    } finally {
      release()
    }
  }

  async recordIssued (certs: readonly IssuedCert[]): Promise<void> {
    if (certs.length === 0) return
    await this.withLock('record issued', async () => {
      // The one read under the lock: append() writes at the end it found.
      await this.inventory.refresh()
      const fresh: IssuedCert[] = []
      const seen = new Set<string>()
      for (const c of certs) {
        const serial = canonicalSerial(c.serial)
        if (serial === null || serial !== c.serial) throw new ZtError('ZT_BAD_ARGUMENT', `record issued: serial ${JSON.stringify(c.serial)} is not canonical`)
        if (this.issued.has(serial) || seen.has(serial)) {
          throw new ZtError('ZT_BAD_ARGUMENT', `record issued: serial ${serial} is already in the inventory`, { serial })
        }
        seen.add(serial)
        fresh.push({ serial, id: c.id, kind: c.kind, groups: [...c.groups], notBefore: c.notBefore, notAfter: c.notAfter })
      }
      await this.inventory.append(fresh)
    })
  }

  async getIssued (serial: string): Promise<IssuedCert | null> {
    this.assertOpen('get issued')
    // Inventory lines never change once written: a hit needs no I/O, a miss looks for new lines.
    const hit = this.issued.get(serial)
    if (hit !== undefined) return hit
    try {
      await this.inventory.refresh()
    } catch (err) {
      throw storeError('get issued', err)
    }
    return this.issued.get(serial) ?? null
  }

  async list (filter: CertListFilter = {}, now: Date = new Date()): Promise<CertListing[]> {
    this.assertOpen('list')
    try {
      await Promise.all([this.inventory.refresh(), this.revocationLog.refresh()])
    } catch (err) {
      throw storeError('list', err)
    }
    const out: CertListing[] = []
    const nowMs = now.getTime()
    for (const c of this.issued.values()) {
      if (filter.id !== undefined && c.id !== filter.id) continue
      const r = this.revoked.get(c.serial)
      const status = r !== undefined ? 'revoked' : Date.parse(c.notAfter) <= nowMs ? 'expired' : 'active'
      if (filter.status !== undefined && status !== filter.status) continue
      const listing: CertListing = { ...c, groups: [...c.groups], status }
      if (r !== undefined) { listing.revokedAt = r.revokedAt; listing.reason = r.reason }
      out.push(listing)
    }
    out.sort((a, b) => a.notBefore < b.notBefore ? -1 : a.notBefore > b.notBefore ? 1 : a.serial < b.serial ? -1 : a.serial > b.serial ? 1 : 0)
    return out
  }

  async revoke (serials: readonly string[], reason: RevocationReason, at: Date = new Date()): Promise<RevokeResult[]> {
    checkReason(reason, 'revoke')
    const wanted: string[] = []
    for (const s of serials) {
      const serial = canonicalSerial(s)
      if (serial === null) throw new ZtError('ZT_BAD_ARGUMENT', `revoke: serial ${JSON.stringify(s)} is not hexadecimal`, { serial: s })
      if (!wanted.includes(serial)) wanted.push(serial)
    }
    return await this.withLock('revoke', async () => {
      await Promise.all([this.inventory.refresh(), this.revocationLog.refresh()])
      const unknown = wanted.filter((s) => !this.issued.has(s))
      if (unknown.length > 0) {
        throw new ZtError('ZT_UNKNOWN_SERIAL', `revoke: serial ${unknown.join(', ')} was not issued by this CA; nothing revoked`, { serials: unknown })
      }
      const results: RevokeResult[] = []
      const fresh: Revocation[] = []
      for (const serial of wanted) {
        const existing = this.revoked.get(serial)
        if (existing !== undefined) { results.push({ revocation: existing, created: false }); continue }
        const cert = this.issued.get(serial) as IssuedCert
        const revocation: Revocation = { serial, id: cert.id, reason, revokedAt: at.toISOString(), notAfter: cert.notAfter }
        fresh.push(revocation)
        results.push({ revocation, created: true })
      }
      // One write for the whole batch: the records and the feed are the same lines.
      await this.revocationLog.append(fresh)
      return results
    })
  }

  async getRevocation (serial: string): Promise<Revocation | null> {
    this.assertOpen('get revocation')
    try {
      await this.revocationLog.refresh()
    } catch (err) {
      throw storeError('get revocation', err)
    }
    return this.revoked.get(serial) ?? null
  }

  async loadRevocations (): Promise<{ revocations: Revocation[], cursor: string }> {
    this.assertOpen('load revocations')
    try {
      await this.revocationLog.refresh()
    } catch (err) {
      throw storeError('load revocations', err)
    }
    return { revocations: [...this.revocationOrder], cursor: String(this.revocationLog.offset) }
  }

  private async feedFrom (offset: number, count: number): Promise<FeedEntry[]> {
    const { size } = await fs.stat(this.files.revocations)
    if (offset > size) throw new ZtError('ZT_BAD_ARGUMENT', `read feed: cursor ${offset} is beyond the end of the feed (${size})`, { cursor: offset })
    if (offset > 0) {
      // A cursor always sits just after a newline; anything else was not handed out by this store.
      const handle = await fs.open(this.files.revocations, 'r')
      try {
        const b = Buffer.alloc(1)
        await handle.read(b, 0, 1, offset - 1)
        if (b[0] !== NL) throw new ZtError('ZT_BAD_ARGUMENT', `read feed: cursor ${offset} is not a feed position`, { cursor: offset })
      } finally {
        await handle.close()
      }
    }
    const { lines } = await readLines(this.files.revocations, offset, size)
    return lines.slice(0, count).map(({ value, end }) => ({ cursor: String(end), revocation: JSON.parse(value) as Revocation }))
  }

  async readFeed (cursor: string, options: { blockMs: number, count?: number }): Promise<FeedEntry[]> {
    this.assertOpen('read feed')
    if (!/^(0|[1-9][0-9]*)$/.test(cursor)) throw new ZtError('ZT_BAD_ARGUMENT', `read feed: cursor ${JSON.stringify(cursor)} is not a feed position`, { cursor })
    const offset = Number(cursor)
    const count = options.count ?? 1000
    const deadline = Date.now() + Math.max(0, options.blockMs)
    let watcher: FSWatcher | undefined
    let watching = false
    // An event that lands while a read is in flight has no waiter to wake: remember it, or it would wait for the poll.
    let changed = false
    let wake: (() => void) | undefined
    try {
      for (;;) {
        changed = false
        let entries: FeedEntry[]
        try {
          entries = await this.feedFrom(offset, count)
        } catch (err) {
          throw storeError('read feed', err)
        }
        const remaining = deadline - Date.now()
        if (entries.length > 0 || remaining <= 0 || this.closed) return entries
        if (watcher === undefined) {
          try {
            // Armed before the next read, so a line appended in between still wakes us.
            watcher = watch(this.files.revocations, { persistent: false }, () => { changed = true; wake?.() })
            watching = true
            watcher.on('error', () => { watching = false })
            continue
          } catch {
            // inotify limits and some network filesystems: the poll below still bounds the delay.
          }
        }
        if (changed) continue
        await new Promise<void>((resolve) => {
          const timer = setTimeout(done, Math.min(remaining, watching ? Math.max(this.pollMs, WATCHED_POLL_MS) : this.pollMs))
          function done (): void { clearTimeout(timer); resolve() }
          wake = done
          this.waiters.add(done)
        })
        if (wake !== undefined) this.waiters.delete(wake)
        wake = undefined
      }
    } finally {
      watcher?.close()
    }
  }

  async nextCrlNumber (): Promise<bigint> {
    return await this.withLock('next CRL number', async () => {
      const previous = await this.readCrlNumber()
      const next = previous + 1n
      await writeFileAtomic(this.files.crlNumber, `${next}\n`, { mode: 0o600, operation: 'next CRL number' })
      return next
    })
  }

  private async readCrlNumber (): Promise<bigint> {
    let text: string
    try {
      text = await fs.readFile(this.files.crlNumber, 'utf8')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 0n
      throw err
    }
    if (!/^[0-9]+$/.test(text.trim())) throw new ZtError('ZT_STORE_UNAVAILABLE', `next CRL number: ${this.files.crlNumber} does not hold a number`)
    return BigInt(text.trim())
  }

  async saveCrl (crl: StoredCrl): Promise<void> {
    await this.withLock('save CRL', async () => {
      const current = await this.readCrl()
      if (current !== null && current.number >= crl.number) return
      const body = JSON.stringify({ number: crl.number.toString(), der: Buffer.from(crl.der).toString('base64') })
      await writeFileAtomic(this.files.crl, body + '\n', { mode: 0o644, operation: 'save CRL' })
    })
  }

  private async readCrl (): Promise<StoredCrl | null> {
    let text: string
    try {
      text = await fs.readFile(this.files.crl, 'utf8')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null
      throw err
    }
    const parsed = JSON.parse(text) as { number: string, der: string }
    return { number: BigInt(parsed.number), der: new Uint8Array(Buffer.from(parsed.der, 'base64')) }
  }

  async loadCrl (): Promise<StoredCrl | null> {
    this.assertOpen('load CRL')
    try {
      return await this.readCrl()
    } catch (err) {
      throw storeError('load CRL', err)
    }
  }

  async close (): Promise<void> {
    this.closed = true
    // Blocked feed readers return [] at once instead of holding the process open until blockMs.
    for (const w of this.waiters) w()
    this.waiters.clear()
    await this.queue
  }
}

/** Opens (creating when missing) the file store kept in `dir`. */
export async function openFileStore (dir: string, options: FileStoreOptions = {}): Promise<FileCertStore> {
  return await new FileCertStore(dir, options).open()
}
