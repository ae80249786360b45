// `cert issue-bulk`: a CSV manifest in, one PEM bundle (and key, when generated) per row out, recorded in batches.
import { lstatSync, promises as fs, readFileSync } from 'node:fs'
import path from 'node:path'
import { oneLine, ZtError } from '../common/errors.js'
import { checkId, type Kind } from '../common/ids.js'
import type { IssuedCert } from '../store/types.js'
import type { Authority, IssuedBundle, IssueRequest } from './authority.js'
import { discardStaged, fsyncDir, linkStaged, makeDir, stageFileSync, syncStaged, type StagedFile } from './fsutil.js'

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

/** Splits CSV text into records (RFC 4180: quoted fields, "" inside quotes, CRLF, LF or CR). */
export function parseCsv (text: string, file: string): Array<{ line: number, fields: string[] }> {
  const records: Array<{ line: number, fields: string[] }> = []
  // Where the next quote, LF and CR are (-1: none left), looked up again only once passed: linear in the text.
  let quote = -2
  let lf = -2
  let cr = -2
  let line = 1
  for (let i = 0; i < text.length;) {
    if (quote !== -1 && quote < i) quote = text.indexOf('"', i)
    if (lf !== -1 && lf < i) lf = text.indexOf('\n', i)
    if (cr !== -1 && cr < i) cr = text.indexOf('\r', i)
    const eol = lf === -1 ? (cr === -1 ? text.length : cr) : cr === -1 ? lf : Math.min(lf, cr)
    if (quote === -1 || quote > eol) {
      // No quote in this record (the usual manifest): its fields are what lies between the commas.
      records.push({ line, fields: text.slice(i, eol).split(',') })
      i = eol + (text[eol] === '\r' && text[eol + 1] === '\n' ? 2 : 1)
      line++
      continue
    }
    const record = parseQuotedRecord(text, i, line, file)
    if (record.fields.length > 0) records.push({ line, fields: record.fields })
    i = record.next
    line = record.nextLine
  }
  return records
}

/** One CSV record with quoted fields from `start`: its fields, where the next one starts, and its first line. */
function parseQuotedRecord (text: string, start: number, line: number, file: string): { fields: string[], next: number, nextLine: number } {
  const recordLine = line
  const fields: string[] = []
  let field = ''
  let quoted = false
  let fieldStarted = false
  for (let i = start; i < text.length; i++) {
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
      return { fields, next: i + 1, nextLine: line + 1 }
    } else { field += c; fieldStarted = true }
  }
  if (quoted) throw new ZtError('ZT_BAD_MANIFEST', `${OP}: ${file} line ${recordLine}: unterminated quoted field`, { file, line: recordLine })
  // At the end of the text: a record only if it holds something ("" alone is a blank line).
  if (field !== '' || fields.length > 0) fields.push(field)
  return { fields, next: text.length, nextLine: line + 1 }
}

/** Relative paths whose segments are plain names (none empty, none starting with '.'), '/'-separated. */
const PLAIN_RELATIVE = /^[^/\\.][^/\\]*(?:\/[^/\\.][^/\\]*)*$/

/** path.resolve(dir, file): for the plain relative names a manifest usually holds, without parsing the result again. */
function resolveBeside (dir: string, file: string): string {
  return path.sep === '/' && PLAIN_RELATIVE.test(file) ? `${dir === '/' ? '' : dir}/${file}` : path.resolve(dir, file)
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
      csr: csr === '' ? undefined : resolveBeside(base, csr),
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

interface Prepared { row: ManifestRow, req: IssueRequest, files: string[] }

/** Whether a name is taken; errors other than ENOENT count as free, and linking will report them. */
function taken (file: string): boolean {
  try {
    return lstatSync(file, { throwIfNoEntry: false }) !== undefined
  } catch {
    return false
  }
}

/**
 * Reads the row's CSR and checks that its outputs are free; the CA checks id, kind and groups when signing.
 * Synchronous on purpose: a CSR is a small file in the page cache, and in the thread pool its reads would queue
 * behind the previous batch's fsyncs, stalling the signing loop that has nothing else to do.
 */
function prepare (row: ManifestRow, outPrefix: string, claimed: Map<string, number>): Prepared {
  const earlier = claimed.get(row.id)
  if (earlier !== undefined) throw new ZtError('ZT_BAD_MANIFEST', `${OP}: id ${JSON.stringify(row.id)} already appears on line ${earlier}`)
  claimed.set(row.id, row.line)
  const req: IssueRequest = { id: row.id, kind: row.kind as Kind, groups: row.groups }
  if (row.csr !== undefined) {
    try {
      req.csr = readFileSync(row.csr)
    } catch (err) {
      throw new ZtError('ZT_BAD_CSR', `${OP}: cannot read CSR ${row.csr} (${(err as NodeJS.ErrnoException).code ?? oneLine(err)})`, { file: row.csr })
    }
  } else {
    req.generateKey = true
  }
  // Output names are built only from ids the CA accepts (checked here, before any name is looked at), so no '/' or
  // '..' can escape the output directory (outPrefix: its path and a separator).
  checkId(row.id, OP)
  const files = [`${outPrefix}${row.id}.pem`, ...(req.generateKey === true ? [`${outPrefix}${row.id}.key`] : [])]
  for (const f of files) {
    if (taken(f)) throw new ZtError('ZT_IO', `${OP}: ${f} already exists; refusing to overwrite it`, { file: f })
  }
  return { row, req, files }
}

/** A signed row, its outputs not written yet. */
interface SignedRow { p: Prepared, bundle: IssuedBundle }

/** A signed row whose outputs are written under temporary names. */
interface StagedRow { p: Prepared, record: IssuedCert, files: StagedFile[] }

/** Lets I/O callbacks run (the previous batch's flush and record) between rows of the CPU-bound signing loop. */
const YIELD_EVERY = 4
function yieldToIo (): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve))
}

/**
 * Issues every row of a manifest; see BulkOptions. Outputs of a row appear only once the row is fully done.
 *
 * Per batch: sign each row (in memory); once the previous batch is committed, write the outputs under temporary
 * names; fsync them all in the thread pool while the next batch is signed; record the rows whose files are durable in
 * the inventory (one write); only then link each file to its name. The output directory is synced once at the end,
 * before returning (also when the run stops on an error). So a certificate's content is flushed before it is
 * recorded, no certificate is visible before it is recorded, no output is ever visible empty or partial, and
 * everything reported issued survives a power cut once this returns. A crash between recording and that final sync
 * can leave a recorded certificate whose file is not there (at worst under its temporary name); it is in the
 * inventory, so `cert list` shows it and it can be revoked.
 */
export async function issueBulk (authority: Authority, manifestPath: string, options: BulkOptions): Promise<BulkSummary> {
  const started = Date.now()
  let text: string
  try {
    text = await fs.readFile(manifestPath, 'utf8')
  } catch (err) {
    throw new ZtError('ZT_BAD_MANIFEST', `${OP}: cannot read manifest ${manifestPath} (${(err as NodeJS.ErrnoException).code ?? oneLine(err)})`, { file: manifestPath })
  }
  const rows = parseManifest(text, manifestPath)
  if (rows.length === 0) throw new ZtError('ZT_BAD_MANIFEST', `${OP}: manifest ${manifestPath} has no rows`, { file: manifestPath })
  const outDir = path.resolve(options.outDir)
  const outPrefix = outDir.endsWith(path.sep) ? outDir : outDir + path.sep
  // Directories whose entries change: outDir itself (every output's name), and the parent of each directory made here.
  let dirsToSync: string[]
  try {
    dirsToSync = await makeDir(outDir, 0o700)
  } catch (err) {
    throw new ZtError('ZT_IO', `${OP}: cannot create output directory ${outDir} (${(err as NodeJS.ErrnoException).code ?? oneLine(err)})`, { dir: outDir })
  }

  const batchSize = options.batchSize ?? 100
  const failed: BulkFailure[] = []
  const claimed = new Map<string, number>()
  let issued = 0
  let done = 0
  let stopped = false
  /** With stopOnError, the first failed line: rows after it that were already signed (the next batch) are dropped. */
  let stoppedAt = Infinity
  const fail = (row: ManifestRow, err: unknown): void => {
    const f: BulkFailure = { line: row.line, id: row.id, message: oneLine(err).replace(new RegExp(`^${OP}: `), '') }
    failed.push(f)
    options.onRowError?.(f)
    if (options.stopOnError === true) {
      stopped = true
      stoppedAt = Math.min(stoppedAt, row.line)
    }
  }
  const writeFailure = (s: StagedRow, err: unknown, more = ''): void => {
    fail(s.p.row, new ZtError('ZT_IO', `${OP}: cannot write ${s.p.files.join(', ')} (${(err as NodeJS.ErrnoException).code ?? oneLine(err)})${more}`))
  }

  /** fsync (thread pool) → record the durable rows → link them into place. Runs while the next batch is signed. */
  const commitBatch = async (staged: StagedRow[], doneSoFar: number): Promise<void> => {
    const synced = await Promise.all(staged.map(async (s) => {
      try {
        await Promise.all(s.files.map(syncStaged))
        return true
      } catch (err) {
        s.files.forEach(discardStaged)
        writeFailure(s, err)
        return false
      }
    }))
    // A flush of an earlier row may have failed while this batch was being signed: with stopOnError, nothing after it.
    const durable = staged.filter((s, k) => {
      if (!synced[k]) return false
      if (s.p.row.line < stoppedAt) return true
      s.files.forEach(discardStaged)
      done--
      return false
    })
    try {
      // Recorded once its content is durable and before it has a name: a certificate never exists outside the
      // inventory the broker checks, and the inventory never lists one whose file was not written.
      await authority.store.recordIssued(durable.map((s) => s.record))
    } catch (err) {
      durable.forEach((s) => { s.files.forEach(discardStaged) })
      throw err
    }
    for (const s of durable) {
      const linked: string[] = []
      try {
        s.files.forEach((f, k) => { linkStaged(f, s.p.files[k] as string); linked.push(s.p.files[k] as string) })
        issued++
      } catch (err) {
        // A row's key without its certificate (or the reverse) is a half-written output: take it back. The
        // certificate is already in the inventory, so say which serial to revoke.
        for (const f of linked) await fs.rm(f, { force: true })
        s.files.forEach(discardStaged)
        writeFailure(s, err, `; serial ${s.record.serial} is recorded as issued: revoke it with \`cert revoke ${s.record.serial}\``)
      }
    }
    options.onProgress?.(doneSoFar, rows.length)
  }
  let committing: Promise<void> = Promise.resolve()

  /**
   * Writes a signed batch's outputs under temporary names, synchronously. Called once the previous batch's fsyncs are
   * done: a file created while fsyncs commit the filesystem journal takes longer (ext4 here: ~35 µs against ~22 µs),
   * and this thread has the signing to do.
   */
  const stageBatch = (signed: SignedRow[]): StagedRow[] => {
    const staged: StagedRow[] = []
    try {
      for (const { p, bundle } of signed) {
        // With stopOnError, a failed row (here or in the previous batch's flush) drops the signed rows after it.
        if (p.row.line > stoppedAt) { done--; continue }
        const s: StagedRow = { p, record: bundle.record, files: [] }
        const data = [bundle.bundlePem, ...(bundle.keyPem !== undefined ? [bundle.keyPem] : [])]
        try {
          p.files.forEach((f, k) => { s.files.push(stageFileSync(f, data[k] as string, f.endsWith('.key') ? 0o600 : 0o644)) })
        } catch (err) {
          s.files.forEach(discardStaged)
          writeFailure(s, err)
          continue
        }
        staged.push(s)
      }
    } catch (err) {
      // Only a caller's onRowError can throw here: leave no temporary file behind.
      staged.forEach((s) => { s.files.forEach(discardStaged) })
      throw err
    }
    return staged
  }

  /**
   * Signs rows [start, end) in memory while the previous batch flushes. CPU-bound and in order, so stopOnError stops
   * at the first bad row. A function of its own so that the JIT optimizes this loop, not all of issueBulk.
   */
  const signBatch = async (start: number, end: number): Promise<SignedRow[]> => {
    const signed: SignedRow[] = []
    for (let i = start; i < end && !stopped; i++) {
      const row = rows[i] as ManifestRow
      done++
      try {
        const p = prepare(row, outPrefix, claimed)
        signed.push({ p, bundle: await authority.sign(p.req, OP) })
      } catch (err) {
        fail(row, err)
        continue
      }
      if ((i - start) % YIELD_EVERY === YIELD_EVERY - 1) await yieldToIo()
    }
    return signed
  }

  try {
    for (let start = 0; start < rows.length && !stopped; start += batchSize) {
      const signed = await signBatch(start, Math.min(rows.length, start + batchSize))
      // At most one batch flushing at a time: bounded open files, inventory written in order.
      await committing
      committing = commitBatch(stageBatch(signed), done)
      // Rejections surface at the next await of committing; until then, do not report them as unhandled.
      committing.catch(() => {})
    }
    await committing
  } finally {
    await committing.catch(() => {})
    // Once for the whole run rather than per file, and also when the run stops on an error: the names linked by
    // earlier batches were reported issued.
    await Promise.all(dirsToSync.map(fsyncDir))
  }
  failed.sort((a, b) => a.line - b.line)
  return { total: rows.length, issued, failed, skipped: rows.length - done, elapsedMs: Date.now() - started, outDir }
}
