import { readFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import { describe, expect, it } from 'vitest'
import { ErrorCodes, oneLine, ZtError } from '../common/errors.js'

describe('error codes', () => {
  it('every stable code is documented in the README "Error codes" table', async () => {
    const readme = await readFile(fileURLToPath(new URL('../README.md', import.meta.url)), 'utf8')
    const start = readme.indexOf('\n## Error codes')
    expect(start).toBeGreaterThan(0)
    const section = readme.slice(start, readme.indexOf('\n## ', start + 1))
    const missing = Object.keys(ErrorCodes).filter((code) => !section.includes(`| \`${code}\` |`))
    expect(missing).toEqual([])
  })

  it('messages are one line and carry their code', () => {
    const err = new ZtError('ZT_BAD_ID', 'cert issue: id "a/b"\ncontains \'/\'', { id: 'a/b' })
    expect(err.code).toBe('ZT_BAD_ID')
    expect(oneLine(err)).toBe('cert issue: id "a/b" contains \'/\'')
    expect(Object.isFrozen(err.context)).toBe(true)
  })
})
