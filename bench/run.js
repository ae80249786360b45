// `npm run bench`: every workload against our broker and the baselines, alternating, on pinned CPUs; writes
// bench/results/<timestamp>.json, latest.json, latest.md and latest.svg.
//
//   npm run bench                       # full: every workload, 3 runs each
//   npm run bench -- --quick            # every workload once with small counts (under 3 minutes)
//   npm run bench -- --only connect,publish --runs 5
//   npm run bench -- --only publish --targets zt,aedes   # only some servers (tuning; ratios need the baselines)
//   npm run bench -- --keep             # keep the temp dir (bench CA home, broker logs) for inspection
//   npm run bench -- --profile          # our broker under node --cpu-prof (profiles in bench/results/profiles/)
//   node bench/run.js --render bench/results/<timestamp>.json   # re-render latest.md/latest.svg from a results file
//
// The broker under test runs on CPU 0 (taskset), this process (the load generator) on CPU 1. Needs `npm run build`
// (npm run bench does it), Redis on 127.0.0.1:6379 for the revocation workload, and Mosquitto (installed with
// apt-get when missing and root) for that baseline.
import { execFileSync } from 'node:child_process'
import { generateKeyPairSync, sign } from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { makeBenchPki } from './lib/pki.mjs'
import { CPUS, killAll, pinSelf } from './lib/proc.mjs'
import { chartRows, LABELS, ratioSvg, summarize, workloadMarkdown } from './lib/report.mjs'
import { ensureMosquitto } from './lib/targets.mjs'
import * as issuance from './workloads/issuance.mjs'
import * as connect from './workloads/connect.mjs'
import * as publish from './workloads/publish.mjs'
import * as idle from './workloads/idle.mjs'
import * as revocation from './workloads/revocation.mjs'
import * as policy from './workloads/policy.mjs'

const WORKLOADS = [issuance, connect, publish, idle, revocation, policy]
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const outDir = path.join(root, 'bench/results')
const log = (msg) => { process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`) }

let args
try {
  args = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      only: { type: 'string' },
      targets: { type: 'string' },
      runs: { type: 'string' },
      rate: { type: 'string' },
      redis: { type: 'string', default: 'redis://127.0.0.1:6379' },
      keep: { type: 'boolean', default: false },
      profile: { type: 'boolean', default: false },
      render: { type: 'string' },
      docs: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  }).values
} catch (err) {
  console.error(`bench: ${err.message}`)
  process.exit(2)
}
if (args.help) {
  console.log([
    'usage: npm run bench -- [--quick] [--only issuance,connect,publish,idle,revocation,policy] [--targets zt,floor,aedes,mosquitto] [--runs N] [--rate MSG_PER_S] [--redis URL] [--keep] [--profile]',
    '       node bench/run.js --render bench/results/FILE.json     # re-render latest.md/latest.svg from a results file',
    '  --targets  run only these servers (A/B runs while tuning; ratios need the baselines)',
    '  --profile  run our broker under node --cpu-prof; profiles go to bench/results/profiles/ (open in Chrome DevTools)',
    '  --docs     also put the tables into README.md (between its bench:results markers)',
  ].join('\n'))
  process.exit(0)
}

function oneLine (err) {
  return String(err?.message ?? err).split('\n')[0].slice(0, 300)
}

/**
 * How fast this machine's CPU was during the run: node:crypto ECDSA P-256 signatures per second on the load CPU, at
 * the start and at the end. Shared machines vary by 2x from day to day; ratios survive that, absolute targets do not.
 */
function machineSpeed () {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const data = Buffer.alloc(64, 1)
  const until = performance.now() + 300
  let n = 0
  while (performance.now() < until) { sign('sha256', data, privateKey); n++ }
  return Math.round(n / 0.3)
}

function speedNote (meta) {
  const s = meta.ecdsaP256SignPerS
  return s === undefined ? '' : ` · CPU speed (ECDSA P-256 signs/s, start → end) ${s.start.toLocaleString('en-US')} → ${s.end === undefined ? '?' : s.end.toLocaleString('en-US')}`
}

function tally (verdicts) {
  return `${verdicts.filter((v) => v.met === true).length} met, ${verdicts.filter((v) => v.met === false).length} missed, ${verdicts.filter((v) => v.met === null).length} not judged`
}

/** Summaries, markdown and SVG from raw per-run values (what a run collects, or what a results file holds). */
function render (results) {
  const { meta } = results
  const sections = []
  const rows = []
  const verdicts = []
  for (const w of WORKLOADS) {
    const r = results.workloads[w.name]
    if (r === undefined) continue
    if (r.skipped !== undefined) { sections.push(`### ${w.title}\n\nSkipped: ${r.skipped}\n`); continue }
    const workload = { ...w, targets: r.targets, goals: w.goalsFor !== undefined ? w.goalsFor(meta.opts) : (w.goals ?? []) }
    const summary = summarize(workload, r.raw)
    r.summary = summary
    verdicts.push(...summary.verdicts)
    sections.push(workloadMarkdown(workload, summary, { runs: meta.runs, quick: meta.quick, description: w.describe(meta.opts), notes: r.notes, errors: r.errors }))
    rows.push(...chartRows(workload, summary))
  }
  const header = [
    `## Benchmark results${meta.quick ? ' (--quick: small counts, one run, indicative only)' : ''}`,
    '',
    `${meta.startedAt} · ${meta.cpus} × ${meta.cpu} · Node ${meta.node} · Mosquitto ${meta.mosquitto ?? 'not run'} · Linux ${meta.kernel} · ` +
      `broker on CPU ${meta.pinning.broker}, load generator on CPU ${meta.pinning.loadGenerator} · ${meta.runs} run${meta.runs === 1 ? '' : 's'} per workload · ` +
      `load average at start ${meta.loadAverageAtStart.join(' ')}${speedNote(meta)} · took ${meta.durationS} s${meta.commit === null ? '' : ` · commit ${meta.commit}${meta.dirty ? ' + uncommitted changes' : ''}`}`,
    '',
    `Targets: ${tally(verdicts.filter((v) => !v.proposed))}.${verdicts.some((v) => v.proposed) ? ` Proposed targets (not the issue's): ${tally(verdicts.filter((v) => v.proposed))}.` : ''}`,
    '',
    '![ours ÷ baselines](latest.svg)',
    '',
  ].join('\n')
  return {
    md: header + '\n' + sections.join('\n'),
    svg: ratioSvg(rows, { title: `aedes-zero-trust vs baselines${meta.quick ? ' (--quick)' : ''}, ${meta.startedAt.slice(0, 10)}` }),
  }
}

const DOCS = path.join(root, 'README.md')
const START = '<!-- bench:results:start (written by `node bench/run.js --render bench/results/latest.json --docs`) -->'
const END = '<!-- bench:results:end -->'

/** Replaces the results section of README.md (between the markers) with this run's tables. */
function updateDocs (md) {
  const text = fs.readFileSync(DOCS, 'utf8')
  const a = text.indexOf(START)
  const b = text.indexOf(END)
  if (a < 0 || b < a) throw new Error(`${DOCS} has no results markers`)
  const body = md.replace('](latest.svg)', '](bench/results/latest.svg)').replace(/^## /m, '#### ').replace(/^### (?!Benchmark results)/gm, '##### ')
  fs.writeFileSync(DOCS, `${text.slice(0, a + START.length)}\n\n${body.trim()}\n\n${text.slice(b)}`)
}

function writeOutputs (results, { stamp }) {
  fs.mkdirSync(outDir, { recursive: true })
  const { md, svg } = render(results)
  if (args.docs) updateDocs(md)
  const json = JSON.stringify(results, null, 2) + '\n'
  if (stamp !== undefined) fs.writeFileSync(path.join(outDir, `${stamp}.json`), json)
  fs.writeFileSync(path.join(outDir, 'latest.json'), json)
  fs.writeFileSync(path.join(outDir, 'latest.md'), md)
  fs.writeFileSync(path.join(outDir, 'latest.svg'), svg)
  return md
}

if (args.render !== undefined) {
  const results = JSON.parse(fs.readFileSync(args.render, 'utf8'))
  process.stdout.write(writeOutputs(results, {}))
  log(`re-rendered ${args.render} into bench/results/latest.{json,md,svg}`)
  process.exit(0)
}

// ---- options -------------------------------------------------------------------------------------------------------
const quick = args.quick
const only = args.only === undefined ? null : args.only.split(',').map((s) => s.trim()).filter(Boolean)
for (const n of only ?? []) {
  if (!WORKLOADS.some((w) => w.name === n)) { console.error(`bench: unknown workload "${n}"; known: ${WORKLOADS.map((w) => w.name).join(', ')}`); process.exit(2) }
}
const TARGET_KEYS = ['zt', 'floor', 'aedes', 'mosquitto']
const onlyTargets = args.targets === undefined ? null : args.targets.split(',').map((s) => s.trim()).filter(Boolean)
for (const t of onlyTargets ?? []) {
  if (!TARGET_KEYS.includes(t)) { console.error(`bench: unknown target "${t}"; known: ${TARGET_KEYS.join(', ')}`); process.exit(2) }
}
const runs = args.runs !== undefined ? Number(args.runs) : quick ? 1 : 3
if (!Number.isInteger(runs) || runs < 1 || runs > 20) { console.error('bench: --runs must be an integer from 1 to 20'); process.exit(2) }
if (!/^redis:\/\/(127\.0\.0\.1|localhost)(:\d+)?\/?$/.test(args.redis)) { console.error('bench: --redis must be a redis:// URL on 127.0.0.1, without a path or query'); process.exit(2) }

/** Counts and durations; --quick keeps every workload small enough for the whole run to take under 3 minutes. */
const FULL = {
  issuanceCount: 1_000, opensslCount: 50,
  connectCount: 2_000, connectWarmup: 100, inFlight: 50,
  publishers: 20, publishWarmupMs: 1_000, publishMs: 5_000, window: 32, rate: 5_000, drainMs: 3_000,
  idleCount: 5_000, idleSettleMs: 2_000,
  revDevices: 1_000, revocations: 100, revLoadCount: 1_000_000,
  policyStatements: 10_000,
  phaseDeadlineMs: 300_000,
}
const QUICK = {
  opensslCount: 10,
  connectCount: 300, connectWarmup: 50,
  publishWarmupMs: 500, publishMs: 1_500, drainMs: 2_000,
  idleCount: 500, idleSettleMs: 1_000,
  revDevices: 150, revocations: 20, revLoadCount: 100_000,
  phaseDeadlineMs: 60_000,
}
const opts = quick ? { ...FULL, ...QUICK } : { ...FULL }
if (args.rate !== undefined) opts.rate = Number(args.rate)
if (!Number.isFinite(opts.rate) || opts.rate < 100 || opts.rate > 200_000) { console.error('bench: --rate must be 100-200000 messages/s'); process.exit(2) }
opts.redisUrl = args.redis.replace(/\/$/, '')

if (!fs.existsSync(path.join(root, 'dist/ca/index.js')) || !fs.existsSync(path.join(root, 'dist/cli/main.js'))) {
  console.error('bench: dist/ is missing; run `npm run build` (npm run bench does it)')
  process.exit(1)
}

// ---- cleanup: children killed and the temp dir removed on any exit; async cleanups (Redis keys) on signals and at the end
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'aedes-zt-bench-'))
const asyncCleanups = []
let cleaning = null
function cleanup () {
  cleaning ??= (async () => {
    killAll()
    for (const c of asyncCleanups.splice(0).reverse()) {
      try { await Promise.race([c(), new Promise((resolve) => setTimeout(resolve, 5_000))]) } catch { /* best effort */ }
    }
  })()
  return cleaning
}
process.on('exit', () => {
  killAll()
  if (!args.keep) fs.rmSync(dir, { recursive: true, force: true })
})
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.once(sig, () => {
    log(`${sig}: stopping`)
    cleanup().finally(() => process.exit(130))
  })
}
// Everything stops by itself: a hard ceiling on the whole run.
const ceilingMs = quick ? 10 * 60_000 : 120 * 60_000
setTimeout(() => {
  log(`the whole run exceeded ${ceilingMs / 60_000} minutes: stopping`)
  cleanup().finally(() => process.exit(3))
}, ceilingMs).unref()

pinSelf(CPUS.load)
if (CPUS.broker === CPUS.load) log('only one CPU: broker and load generator share it; ratios still compare, absolute figures do not')

const selected = WORKLOADS.filter((w) => only === null || only.includes(w.name))
const mosquittoVersion = selected.some((w) => w.targets.includes('mosquitto')) ? ensureMosquitto(log) : null
const poolSize = Math.max(
  selected.includes(connect) ? opts.connectCount + opts.connectWarmup : 0,
  selected.includes(idle) ? opts.idleCount + 100 : 0,
  selected.includes(publish) ? opts.publishers + 10 : 0,
  selected.includes(revocation) ? opts.revDevices : 0,
)
let profileDir
if (args.profile) {
  profileDir = path.join(outDir, 'profiles', new Date().toISOString().replace(/[:.]/g, '-'))
  fs.mkdirSync(profileDir, { recursive: true })
}
const ctx = { root, dir, opts, log, pki: null, quick, asyncCleanups, profileDir }
const t0 = Date.now()
if (poolSize > 0) {
  log(`bench CA in ${dir}: issuing ${poolSize} device certificates + 1 service certificate`)
  ctx.pki = await makeBenchPki(root, dir, poolSize)
  log(`issued in ${(ctx.pki.issueMs / 1000).toFixed(1)} s`)
}

const git = (...a) => { try { return execFileSync('git', a, { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim() } catch { return null } }
const meta = {
  startedAt: new Date(t0).toISOString(),
  quick,
  runs,
  cpu: os.cpus()[0]?.model ?? 'unknown',
  cpus: os.cpus().length,
  pinning: { broker: CPUS.broker, loadGenerator: CPUS.load },
  node: process.version,
  mosquitto: mosquittoVersion,
  kernel: os.release(),
  loadAverageAtStart: os.loadavg().map((x) => +x.toFixed(2)),
  ecdsaP256SignPerS: { start: machineSpeed() },
  commit: git('rev-parse', '--short', 'HEAD'),
  dirty: (git('status', '--porcelain') ?? '') !== '',
  opts,
}
const results = { meta, workloads: {} }

// ---- the runs ------------------------------------------------------------------------------------------------------
for (const w of selected) {
  const targets = w.targets.filter((t) => (t !== 'mosquitto' || mosquittoVersion !== null) && (onlyTargets === null || onlyTargets.includes(t)))
  const raw = Object.fromEntries(targets.map((t) => [t, []]))
  const notes = []
  const errors = []
  if (w.available !== undefined) {
    const why = await w.available(ctx)
    if (why !== null) {
      log(`${w.name}: skipped (${why})`)
      results.workloads[w.name] = { skipped: why }
      continue
    }
  }
  if (mosquittoVersion === null && w.targets.includes('mosquitto')) notes.push('Mosquitto baseline not run: mosquitto is not installed')
  for (let r = 0; r < runs; r++) {
    if (w.runAll !== undefined) {
      log(`${w.name} run ${r + 1}/${runs}`)
      try {
        const res = await w.runAll(ctx, r)
        for (const t of targets) raw[t].push(res.byTarget[t] ?? null)
        notes.push(...(res.notes ?? []))
      } catch (err) {
        errors.push(`run ${r + 1}: ${oneLine(err)}`)
        log(`${w.name} run ${r + 1} failed: ${oneLine(err)}`)
        for (const t of targets) raw[t].push(null)
      }
      continue
    }
    // Alternate: each run starts with a different server, so ours and the baselines interleave over time.
    const order = targets.map((_, i) => targets[(i + r) % targets.length])
    for (const t of order) {
      log(`${w.name} run ${r + 1}/${runs}: ${LABELS[t]}`)
      try {
        const res = await w.run(ctx, t, r)
        raw[t].push(res.values)
        notes.push(...(res.notes ?? []))
      } catch (err) {
        errors.push(`${LABELS[t]} run ${r + 1}: ${oneLine(err)}`)
        log(`${w.name} ${t} run ${r + 1} failed: ${oneLine(err)}`)
        raw[t].push(null)
      }
    }
  }
  results.workloads[w.name] = { targets, raw, notes: [...new Set(notes)], errors }
  const workload = { ...w, targets, goals: w.goalsFor !== undefined ? w.goalsFor(opts) : (w.goals ?? []) }
  for (const v of summarize(workload, raw).verdicts) log(`${w.name}: ${v.met === true ? 'met' : v.met === false ? 'MISSED' : 'not judged'}: ${v.text} — ${v.detail}`)
}
meta.ecdsaP256SignPerS.end = machineSpeed()
meta.finishedAt = new Date().toISOString()
meta.durationS = Math.round((Date.now() - t0) / 1000)
await cleanup()

const stamp = meta.startedAt.replace(/[:.]/g, '-')
process.stdout.write(writeOutputs(results, { stamp }))
log(`results: bench/results/${stamp}.json, latest.json, latest.md, latest.svg${args.keep ? `; temp dir kept: ${dir}` : ''}${profileDir === undefined ? '' : `; profiles: ${path.relative(root, profileDir)}`}`)
process.exit(0)
