// Hot reload: watches the policies directory, swaps in each valid new set, keeps the last good one otherwise.
import { statSync, watch, type FSWatcher } from 'node:fs'
import { listPolicyFilesSync, loadPolicies, loadPoliciesSync } from './load.js'
import type { PolicySet, PolicySource } from './set.js'

export interface WatchOptions {
  /** Called with each new valid set, after `current()` already returns it. */
  onReload?: (set: PolicySet) => void
  /** Called when a change fails to load; the last good set stays in force. */
  onError?: (err: unknown) => void
  /** Quiet time after a change event before reloading, so an editor's write-rename-chmod is one reload. @default 150 */
  debounceMs?: number
  /** Interval of the stat poll that catches what fs.watch misses (network mounts, symlink swaps). @default 1000 */
  pollMs?: number
  /** Use fs.watch for fast pickup; turn off where it misbehaves (some network filesystems) to rely on the poll. @default true */
  fsWatch?: boolean
}

/** A live policy source: pass it to `compileFor` and every Authorizer follows reloads by itself. */
export interface PolicyWatcher extends PolicySource {
  /** The last valid set. */
  current (): PolicySet
  /** Stops watching; `current()` keeps answering with the last set. */
  close (): void
}

/**
 * Loads `dir` now (synchronously, so a broker never starts without policies) and then follows it: a change is
 * picked up by fs.watch (debounced) or, failing that, by a poll, so it applies within about a second.
 * @throws ZtError when the initial load fails (ZT_IO, ZT_BAD_POLICY).
 */
export function watchPolicies (dir: string, options: WatchOptions = {}): PolicyWatcher {
  const debounceMs = options.debounceMs ?? 150
  const pollMs = options.pollMs ?? 1000
  let current = loadPoliciesSync(dir)
  let closed = false
  let timer: NodeJS.Timeout | undefined
  let loading = false
  let again = false
  let lastFailure: string | undefined
  let signature = ''

  // Cheap fingerprint for the poll: names, sizes, mtimes and inodes; contents are compared by digest on reload.
  // Synchronous on purpose: a directory of policy files is a few stat calls, and no await means no race.
  const stamp = (): string => {
    let files: string[]
    try {
      files = listPolicyFilesSync(dir)
    } catch {
      return 'unreadable'
    }
    return files.map((f) => {
      try {
        const st = statSync(f)
        return `${f}:${st.size}:${st.mtimeMs}:${st.ino}`
      } catch {
        return `${f}:gone`
      }
    }).join('|')
  }
  signature = stamp()

  const reload = async (): Promise<void> => {
    if (closed) return
    if (loading) {
      again = true
      return
    }
    loading = true
    try {
      signature = stamp()
      const next = await loadPolicies(dir)
      if (closed) return
      lastFailure = undefined
      if (next.digest === current.digest) return
      current = next
      options.onReload?.(next)
    } catch (err) {
      // Report each distinct failure once: a bad file that stays bad is not news every second.
      const message = err instanceof Error ? err.message : String(err)
      if (!closed && message !== lastFailure) {
        lastFailure = message
        // A throwing onError must not become an unhandled rejection of this background reload.
        try { options.onError?.(err) } catch {}
      }
    } finally {
      loading = false
      if (again && !closed) {
        again = false
        void reload()
      }
    }
  }

  const schedule = (): void => {
    if (closed) return
    if (timer !== undefined) clearTimeout(timer)
    timer = setTimeout(() => {
      timer = undefined
      void reload()
    }, debounceMs)
    timer.unref()
  }

  let watcher: FSWatcher | undefined
  if (options.fsWatch !== false) {
    try {
      watcher = watch(dir, { persistent: false }, schedule)
      watcher.on('error', () => {
        // The poll still covers the directory; fs.watch is only the fast path.
        watcher?.close()
        watcher = undefined
      })
    } catch {
      watcher = undefined
    }
  }

  const poll = setInterval(() => {
    if (!closed && timer === undefined && !loading && stamp() !== signature) schedule()
  }, pollMs)
  poll.unref()

  return {
    current: () => current,
    close: () => {
      closed = true
      if (timer !== undefined) clearTimeout(timer)
      clearInterval(poll)
      watcher?.close()
    },
  }
}
