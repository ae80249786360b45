// Hot reload: a valid change reaches compiled authorizers within about a second; an invalid one keeps the last good set.
import { mkdtempSync, renameSync, rmSync, unlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { compileFor } from '../policies/engine.js'
import type { PolicySet } from '../policies/set.js'
import { watchPolicies, type PolicyWatcher } from '../policies/watch.js'

const policy = (name: string, topic: string): string => `policies:\n  - name: ${name}\n    allow: { publish: ["${topic}"] }\n`

/** Polls until `check` holds; generous timeout, because this asserts that it happens, not how fast. */
async function eventually (check: () => boolean, timeoutMs = 8000): Promise<void> {
  const start = Date.now()
  while (!check()) {
    if (Date.now() - start > timeoutMs) throw new Error('condition not reached in time')
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
}

describe('watchPolicies', () => {
  let watcher: PolicyWatcher | undefined
  let dir = ''
  afterEach(() => {
    watcher?.close()
    rmSync(dir, { recursive: true, force: true })
  })

  function start (debounceMs?: number, pollMs?: number, fsWatch = true): { reloads: PolicySet[], errors: unknown[] } {
    dir = mkdtempSync(join(tmpdir(), 'zt-watch-'))
    writeFileSync(join(dir, 'a.yaml'), policy('v1', 'one'))
    const reloads: PolicySet[] = []
    const errors: unknown[] = []
    watcher = watchPolicies(dir, {
      onReload: (s) => reloads.push(s),
      onError: (e) => errors.push(e),
      ...(debounceMs === undefined ? {} : { debounceMs }),
      ...(pollMs === undefined ? {} : { pollMs }),
      fsWatch,
    })
    return { reloads, errors }
  }

  it('loads at once and applies a valid change to a live authorizer', async () => {
    const { reloads } = start()
    const w = watcher as PolicyWatcher
    const a = compileFor(w, { id: 'd1', kind: 'device', groups: [] })
    expect(w.current().statements.map((s) => s.name)).toEqual(['v1'])
    expect(a.publish('one').effect).toBe('allow')
    writeFileSync(join(dir, 'a.yaml'), policy('v2', 'two'))
    await eventually(() => a.publish('two').effect === 'allow')
    expect(a.publish('one').effect).toBe('deny')
    expect(reloads.at(-1)?.statements.map((s) => s.name)).toEqual(['v2'])
  })

  it('picks up added and removed files', async () => {
    start()
    const w = watcher as PolicyWatcher
    writeFileSync(join(dir, 'b.json'), JSON.stringify({ policies: [{ name: 'extra', allow: { publish: ['x'] } }] }))
    await eventually(() => w.current().statements.length === 2)
    unlinkSync(join(dir, 'b.json'))
    await eventually(() => w.current().statements.length === 1)
  })

  it('keeps the last good set on an invalid change, reports it once, and recovers', async () => {
    const { errors } = start()
    const w = watcher as PolicyWatcher
    const good = w.current()
    writeFileSync(join(dir, 'a.yaml'), policy('broken', 'a/#/b'))
    await eventually(() => errors.length > 0)
    expect(String((errors[0] as Error).message)).toContain('\'#\' must be the last level')
    expect(w.current()).toBe(good)
    await new Promise((resolve) => setTimeout(resolve, 1500))
    expect(errors).toHaveLength(1)
    // Atomic replace, as deployment tools do it.
    writeFileSync(join(dir, 'a.yaml.tmp'), policy('v3', 'three'))
    renameSync(join(dir, 'a.yaml.tmp'), join(dir, 'a.yaml'))
    await eventually(() => w.current().statements[0]?.name === 'v3')
  })

  it('notices changes through the poll alone, within about a second by default', async () => {
    start(undefined, undefined, false)
    const w = watcher as PolicyWatcher
    writeFileSync(join(dir, 'a.yaml'), policy('polled', 'p'))
    await eventually(() => w.current().statements[0]?.name === 'polled')
  })

  it('does not report a reload when the content did not change', async () => {
    const { reloads } = start()
    writeFileSync(join(dir, 'a.yaml'), policy('v1', 'one'))
    await new Promise((resolve) => setTimeout(resolve, 1500))
    expect(reloads).toHaveLength(0)
  })

  it('throws at start when the initial load fails', () => {
    dir = mkdtempSync(join(tmpdir(), 'zt-watch-'))
    writeFileSync(join(dir, 'a.yaml'), 'policies: [')
    expect(() => watchPolicies(dir)).toThrow(/invalid YAML/)
    watcher = undefined
  })
})
