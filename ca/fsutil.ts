// Durable file writes: a reader sees either the old file or the complete new one, never a torn one.
import { randomBytes } from 'node:crypto'
import { closeSync, fsync as fsyncCb, linkSync, openSync, promises as fs, rmSync, unlinkSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { ZtError } from '../common/errors.js'

export interface AtomicWriteOptions {
  /** File mode of the result (default 0o644). */
  mode?: number
  /** Refuse to replace an existing file (ZT_IO) instead of overwriting it (default false). */
  noClobber?: boolean
  /** Operation named in error messages (default "write"). */
  operation?: string
}

/** The pid and a random tag, then a count: unique names without a random draw (or a getpid) per file. */
const TMP_PREFIX = `${process.pid}.${randomBytes(4).toString('hex')}`
let tmpCount = 0

/** `.<name>.<pid>.<unique>.tmp` beside the file (string slicing: bulk issuance names thousands, path.* costs more). */
function tmpName (file: string): string {
  const at = file.lastIndexOf(path.sep) + 1
  return `${file.slice(0, at)}.${file.slice(at)}.${TMP_PREFIX}${(tmpCount++).toString(36)}.tmp`
}

/** Syncs a directory so a rename in it survives a crash; some platforms cannot, which is harmless. */
export async function fsyncDir (dir: string): Promise<void> {
  let handle: fs.FileHandle | undefined
  try {
    handle = await fs.open(dir, 'r')
    await handle.sync()
  } catch {
    // Directories cannot be opened for sync on every platform: the rename is still atomic.
  } finally {
    await handle?.close()
  }
}

/**
 * mkdir -p with the directories whose entries it changed: `dir` itself, and the parent of every directory it made.
 * Fsync those (fsyncDir) once the names made inside must survive a power cut.
 */
export async function makeDir (dir: string, mode: number): Promise<string[]> {
  const made = await fs.mkdir(dir, { recursive: true, mode })
  const changed = [dir]
  if (made !== undefined) {
    for (let d = dir; d !== path.dirname(made) && d !== path.dirname(d); d = path.dirname(d)) changed.push(path.dirname(d))
  }
  return changed
}

/** Writes tmp + fsync + rename (or link, with noClobber), then syncs the directory. */
export async function writeFileAtomic (file: string, data: string | Uint8Array, options: AtomicWriteOptions = {}): Promise<void> {
  const mode = options.mode ?? 0o644
  const operation = options.operation ?? 'write'
  const tmp = tmpName(file)
  try {
    const handle = await fs.open(tmp, 'wx', mode)
    try {
      await handle.writeFile(data)
      // The umask may have narrowed the mode on open; keys must end exactly as asked.
      await handle.chmod(mode)
      await handle.sync()
    } finally {
      await handle.close()
    }
    if (options.noClobber === true) {
      // link() fails when the target exists, where rename() would silently replace it.
      await fs.link(tmp, file)
      await fs.unlink(tmp)
    } else {
      await fs.rename(tmp, file)
    }
  } catch (err) {
    await fs.rm(tmp, { force: true }).catch(() => {})
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'EEXIST') throw new ZtError('ZT_IO', `${operation}: ${file} already exists; refusing to overwrite it`, { file }, { cause: err })
    throw new ZtError('ZT_IO', `${operation}: cannot write ${file} (${code ?? (err instanceof Error ? err.message : String(err))})`, { file }, { cause: err })
  }
  await fsyncDir(path.dirname(file))
}

export async function exists (file: string): Promise<boolean> {
  try {
    await fs.lstat(file)
    return true
  } catch {
    return false
  }
}

/** Reads a file, turning a missing or unreadable file into ZT_IO naming the operation and path. */
export async function readFileOrThrow (file: string, operation: string): Promise<Buffer> {
  try {
    return await fs.readFile(file)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    throw new ZtError('ZT_IO', `${operation}: cannot read ${file} (${code === 'ENOENT' ? 'no such file' : code ?? String(err)})`, { file }, { cause: err })
  }
}

/** A file written under a temporary name, still open so its flush can be queued without reopening it. */
export interface StagedFile {
  tmp: string
  fd: number
}

/**
 * First step of an atomic write, for batches: the data goes to a temporary file synchronously (no thread-pool
 * round trips per file); syncStaged then fsyncs it in the thread pool, off the signing thread, and linkStaged
 * gives it its name. Between the two, the caller may record what the file holds: its content is already durable.
 */
export function stageFileSync (file: string, data: string | Uint8Array, mode: number): StagedFile {
  const tmp = tmpName(file)
  // No chmod here (unlike writeFileAtomic): the umask can only narrow the mode, and bulk output counts syscalls.
  const fd = openSync(tmp, 'wx', mode)
  try {
    writeFileSync(fd, data)
  } catch (err) {
    closeSync(fd)
    rmSync(tmp, { force: true })
    throw err
  }
  return { tmp, fd }
}

/** fsyncs a staged file in the thread pool and closes it: its content is durable, under its temporary name. */
export async function syncStaged (staged: StagedFile): Promise<void> {
  try {
    await fsyncFd(staged.fd)
  } finally {
    closeSync(staged.fd)
    // The number may be handed to another file at once: a second close (discardStaged) must not touch it.
    staged.fd = -1
  }
}

/**
 * Gives a synced staged file its name without replacing anything (EEXIST if taken) and drops the temporary name.
 * Synchronous: two cheap directory operations, not worth two thread-pool round trips each. The caller syncs the
 * directory once for all the names it made.
 */
export function linkStaged (staged: StagedFile, file: string): void {
  if (staged.fd >= 0) throw new Error(`linkStaged: ${staged.tmp} was not synced`)
  try {
    linkSync(staged.tmp, file)
  } finally {
    dropName(staged.tmp)
  }
}

/** unlink (one syscall, where rmSync adds an lstat), for temporary names: one left behind is only litter. */
function dropName (file: string): void {
  try { unlinkSync(file) } catch { /* already gone, or cannot be removed: the output itself is unaffected */ }
}

/** Drops a staged file that will not be committed (closing it if syncStaged did not). */
export function discardStaged (staged: StagedFile): void {
  if (staged.fd >= 0) {
    try { closeSync(staged.fd) } catch { /* nothing more to release */ }
    staged.fd = -1
  }
  dropName(staged.tmp)
}

function fsyncFd (fd: number): Promise<void> {
  return new Promise((resolve, reject) => fsyncCb(fd, (err) => { if (err === null) resolve(); else reject(err) }))
}
