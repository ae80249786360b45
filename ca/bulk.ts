// `cert issue-bulk`: a CSV manifest in, one PEM bundle (and key, when generated) per row out, recorded in batches.
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { ZtError } from '../common/errors.js'
import type { Kind } from '../common/ids.js'
import type { Authority, IssueRequest, IssuedBundle } from './authority.js'
import { discardStaged, flushStaged, fsyncDir, stageFileSync, type StagedFile } from './fsutil.js'

const OP = 'cert issue-bulk'

export interface ManifestRow {
  /** 1-based line in the manifest, for error reports. */
  line: number
  id: string
  kind: string
  groups: string[]
  /** Absolute path of the row's CSR, or undefined to generate a key. */
  csr: string | undefined
}

/** Splits CSV text into records (RFC 4180: quoted fields, "" inside quotes, CRLF or LF). */
function parseCsv (text: string, file: string): Array<{ line: number, fields: string[] }> {
  const records: Array<{ line: number, fields: string[] }> = []
  let fields: string[] = []
  let field = ''
  let quoted = false
  let line = 1
  let recordLine = 1
  let fieldStarted = false
  for (let i = 0; i < text.length; i++) {
    const c = text[i] as string
    if (quoted) {
      if (c === '"') {
        if (text[i + 1] === '"') { field += '"'; i++ } else quoted = false
      } else {
        if (c === '\n') line++
        field += c
      }
      continue
    }
    if (c === '"' && !fieldStarted) { quoted = true; fieldStarted = true } else if (c === ',') { fields.push(field); field = ''; fieldStarted = false } else if (c === '\n' || c === '\r') {
      if (c === '\r' && text[i + 1] === '\n') i++
      fields.push(field)
      records.push({ line: recordLine, fields })
      fields = []; field = ''; fieldStarted = false
      line++
      recordLine = line
    } else { field += c; fieldStarted = true }
  }
  if (quoted) throw new ZtError('ZT_BAD_MANIFEST', `${OP}: ${file} line ${recordLine}: unterminated quoted field`, { file, line: recordLine })
  if (field !== '' || fields.length > 0) { fields.push(field); records.push({ line: recordLine, fields }) }
  return records
}

/**
 * Parses a manifest: columns id,kind,groups,csr (a header row with those names is optional); groups separated
 * by ';' or '|'; csr relative to the manifest's directory, empty to generate a key. Blank lines and lines
 * starting with '#' are skipped. Values are checked when each row is issued, so one bad row does not hide the rest.
 */
export function parseManifest (text: string, manifestPath: string): ManifestRow[] {
  const base = path.dirname(path.resolve(manifestPath))
  const rows: ManifestRow[] = []
  let first = true
  for (const { line, fields } of parseCsv(text, manifestPath)) {
    if (fields.every((f) => f.trim() === '') || (fields[0] ?? '').trimStart().startsWith('#')) continue
    const cells = fields.map((f) => f.trim())
    if (first && (cells[0] ?? '').toLowerCase() === 'id') { first = false; continue }
    first = false
    if (cells.length > 4) {
      throw new ZtError('ZT_BAD_MANIFEST', `${OP}: ${manifestPath} line ${line}: ${cells.length} columns, expected id,kind,groups,csr`, { file: manifestPath, line })
    }
    const [id = '', kind = '', groups = '', csr = ''] = cells
    rows.push({
      line,
      id,
      kind: kind === '' ? 'device' : kind,
      groups: groups.split(/[;|]/).map((g) => g.trim()).filter((g) => g !== ''),
      csr: csr === '' ? undefined : path.resolve(base, csr),
    })
  }
  return rows
}

export interface BulkOptions {
  outDir: string
  /** Stop at the first failing row instead of reporting it and going on. @default false */
  stopOnError?: boolean
  /** Rows signed, recorded (one inventory write) and written per batch. @default 100 */
  batchSize?: number
  onProgress?: (done: number, total: number) => void
  /** Called for each failed row as it happens. */
  onRowError?: (failure: BulkFailure) => void
}

export interface BulkFailure {
  line: number
  id: string
  message: string
}

export interface BulkSummary {
  total: number
  issued: number
  failed: BulkFailure[]
  /** Rows not attempted because of stopOnError. */
  skipped: number
  elapsedMs: number
  outDir: string
}

function message (err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).replace(/\s*\n\s*/g, ' ')
}

interface Prepared { row: ManifestRow, req: IssueRequest, files: string[] }

/** Reads the row's CSR and checks that its outputs are free; the CA checks id, kind and groups when signing. */
async function prepare (row: ManifestRow, outDir: string, claimed: Map<string, number>): Promise<Prepared> {
  const earlier = claimed.get(row.id)
  if (earlier !== undefined) throw new ZtError('ZT_BAD_MANIFEST', `${OP}: id ${JSON.stringify(row.id)} already appears on line ${earlier}`)
  claimed.set(row.id, row.line)
  const req: IssueRequest = { id: row.id, kind: row.kind as Kind, groups: row.groups }
  if (row.csr !== undefined) {
    try {
      req.csr = await fs.readFile(row.csr)
    } catch (err) {
      throw new ZtError('ZT_BAD_CSR', `${OP}: cannot read CSR ${row.csr} (${(err as NodeJS.ErrnoException).code ?? message(err)})`, { file: row.csr })
    }
  } else {
    req.generateKey = true
  }
  // Output names are built only from ids the CA accepts, so no '/' or '..' can escape outDir.
  const files = [path.join(outDir, `${row.id}.pem`), ...(req.generateKey === true ? [path.join(outDir, `${row.id}.key`)] : [])]
  for (const f of files) {
    if (await fs.lstat(f).then(() => true, () => false)) throw new ZtError('ZT_IO', `${OP}: ${f} already exists; refusing to overwrite it`, { file: f })
  }
  return { row, req, files }
}

/** Issues every row of a manifest; see BulkOptions. Outputs of a row appear only once the row is fully done. */
export async function issueBulk (authority: Authority, manifestPath: string, options: BulkOptions): Promise<BulkSummary> {
  const started = Date.now()
  let text: string
  try {
    text = await fs.readFile(manifestPath, 'utf8')
  } catch (err) {
    throw new ZtError('ZT_BAD_MANIFEST', `${OP}: cannot read manifest ${manifestPath} (${(err as NodeJS.ErrnoException).code ?? message(err)})`, { file: manifestPath })
  }
  const rows = parseManifest(text, manifestPath)
  if (rows.length === 0) throw new ZtError('ZT_BAD_MANIFEST', `${OP}: manifest ${manifestPath} has no rows`, { file: manifestPath })
  const outDir = path.resolve(options.outDir)
  try {
    await fs.mkdir(outDir, { recursive: true, mode: 0o700 })
  } catch (err) {
    throw new ZtError('ZT_IO', `${OP}: cannot create output directory ${outDir} (${(err as NodeJS.ErrnoException).code ?? message(err)})`, { dir: outDir })
  }

  const batchSize = options.batchSize ?? 100
  const failed: BulkFailure[] = []
  const claimed = new Map<string, number>()
  let issued = 0
  let done = 0
  let stopped = false
  const fail = (row: ManifestRow, err: unknown): void => {
    const f: BulkFailure = { line: row.line, id: row.id, message: message(err).replace(new RegExp(`^${OP}: `), '') }
    failed.push(f)
    options.onRowError?.(f)
    if (options.stopOnError === true) stopped = true
  }

  const commitBatch = async (staged: Array<{ p: Prepared, files: StagedFile[] }>): Promise<void> => {
    await Promise.all(staged.map(async ({ p, files }) => {
      const committed: string[] = []
      try {
        for (let k = 0; k < files.length; k++) { await flushStaged(files[k] as StagedFile, p.files[k] as string); committed.push(p.files[k] as string) }
        issued++
      } catch (err) {
        // A row's key without its certificate (or the reverse) is a half-written output: take it back.
        for (const f of committed) await fs.rm(f, { force: true })
        files.forEach(discardStaged)
        fail(p.row, new ZtError('ZT_IO', `${OP}: cannot write ${p.files.join(', ')} (${(err as NodeJS.ErrnoException).code ?? message(err)})`))
      }
    }))
  }
  let committing: Promise<void> = Promise.resolve()

  for (let start = 0; start < rows.length && !stopped; start += batchSize) {
    const batch = rows.slice(start, start + batchSize)
    // CSR reads overlap; signing is CPU-bound and done in order, so stopOnError stops at the first bad row.
    const prepared = await Promise.all(batch.map(async (row) => await prepare(row, outDir, claimed).catch((err: unknown) => err as Error)))
    const good: Array<{ p: Prepared, bundle: IssuedBundle }> = []
    for (let i = 0; i < batch.length && !stopped; i++) {
      const row = batch[i] as ManifestRow
      const p = prepared[i]
      done++
      if (p instanceof Error || p === undefined) { fail(row, p); continue }
      try {
        good.push({ p, bundle: await authority.sign(p.req, OP) })
      } catch (err) {
        fail(row, err)
      }
    }
    // Recorded before any file appears: a certificate never exists outside the inventory the broker checks.
    await authority.store.recordIssued(good.map((g) => g.bundle.record))
    const staged: Array<{ p: Prepared, files: StagedFile[] }> = []
    for (const { p, bundle } of good) {
      const data = [bundle.bundlePem, ...(bundle.keyPem !== undefined ? [bundle.keyPem] : [])]
      const files: StagedFile[] = []
      try {
        p.files.forEach((f, k) => { files.push(stageFileSync(f, data[k] as string, f.endsWith('.key') ? 0o600 : 0o644)) })
        staged.push({ p, files })
      } catch (err) {
        files.forEach(discardStaged)
        fail(p.row, new ZtError('ZT_IO', `${OP}: cannot write ${p.files.join(', ')} (${(err as NodeJS.ErrnoException).code ?? message(err)})`))
      }
    }
    // The disk flushes of this batch run in the thread pool while the next batch is signed; a batch's files
    // appear (link) only once flushed, so a visible output is always complete, even after a power cut.
    await committing
    const doneSoFar = done
    committing = commitBatch(staged).then(() => options.onProgress?.(doneSoFar, rows.length))
  }
  await committing
  await fsyncDir(outDir)
  failed.sort((a, b) => a.line - b.line)
  return { total: rows.length, issued, failed, skipped: rows.length - done, elapsedMs: Date.now() - started, outDir }
}
