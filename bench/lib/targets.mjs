// The servers under test: our broker (the real CLI), and the baselines it is compared with. Each is started fresh as a
// child process pinned to the broker CPU; start() resolves with its PID (for /proc) and port once it accepts.
import { execFileSync, spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { performance } from 'node:perf_hooks'
import { SERVICE_ID } from './pki.mjs'
import { CPUS, freePort, spawnPinned, stopChild, waitForLog, waitForPort } from './proc.mjs'

/** Environment for children: no REDIS_URL/AEDES_ZT_HOME/LOG_LEVEL leaking in from the developer's shell. */
export function childEnv (extra = {}) {
  const env = { ...process.env }
  delete env.REDIS_URL
  delete env.AEDES_ZT_HOME
  delete env.LOG_LEVEL
  delete env.NODE_OPTIONS
  return { ...env, ...extra }
}

let seq = 0

async function started (name, child, logFile, port, t0) {
  return {
    name,
    pid: child.pid,
    port,
    child,
    logFile,
    startMs: performance.now() - t0,
    stop: () => stopChild(child),
  }
}

/**
 * Our broker: `aedes-zt broker` on the bench home, file store unless redisUrl, shipped policies, log level info (the
 * default: one audit line per accepted connection, as Mosquitto logs one per connection by default).
 */
export async function startZt (ctx, { redisUrl, name = 'zt', cpu = CPUS.broker } = {}) {
  const logFile = path.join(ctx.dir, `${name}-${++seq}.log`)
  // --profile: a V8 CPU profile per broker process, written when it exits (SIGTERM is a clean shutdown).
  const args = ctx.profileDir === undefined ? [] : ['--cpu-prof', `--cpu-prof-dir=${ctx.profileDir}`, `--cpu-prof-name=${name}-${seq + 1}.cpuprofile`]
  args.push(path.join(ctx.root, 'bin/aedes-zt.js'), '--home', ctx.pki.home)
  if (redisUrl !== undefined) args.push('--redis', redisUrl)
  args.push('broker', '--port', '0', '--http-port', '0', '--host', '127.0.0.1', '--policies', path.join(ctx.root, 'policies'))
  const t0 = performance.now()
  const child = spawnPinned(cpu, process.execPath, args, { logFile, env: childEnv({ LOG_LEVEL: 'info' }), cwd: ctx.root })
  const m = await waitForLog(child, logFile, /MQTT over mutual TLS on port (\d+)/)
  return started(name, child, logFile, Number(m[1]), t0)
}

async function startNodeScript (ctx, name, script) {
  const logFile = path.join(ctx.dir, `${name}-${++seq}.log`)
  const t0 = performance.now()
  const child = spawnPinned(CPUS.broker, process.execPath, [script, '--home', ctx.pki.home], { logFile, env: childEnv(), cwd: ctx.root })
  const m = await waitForLog(child, logFile, /listening on port (\d+)/)
  return started(name, child, logFile, Number(m[1]), t0)
}

export function startFloor (ctx) {
  return startNodeScript(ctx, 'floor', path.join(ctx.root, 'bench/servers/floor.mjs'))
}

export function startAedes (ctx) {
  return startNodeScript(ctx, 'aedes', path.join(ctx.root, 'bench/baseline-aedes.mjs'))
}

/** `mosquitto` on PATH, installing Debian's package with apt-get when missing (root only). Returns its version or null. */
export function ensureMosquitto (log) {
  const version = () => {
    const r = spawnSync('mosquitto', ['-h'], { encoding: 'utf8' })
    if (r.error !== undefined) return null
    return /mosquitto version (\S+)/.exec(r.stdout + r.stderr)?.[1] ?? 'unknown'
  }
  let v = version()
  if (v !== null) return v
  if (process.getuid?.() !== 0) { log('mosquitto is not installed and the bench is not root: Mosquitto baseline skipped (apt-get install mosquitto)'); return null }
  log('mosquitto not found: apt-get install -y mosquitto ...')
  try {
    execFileSync('apt-get', ['install', '-y', '--no-install-recommends', 'mosquitto'], { stdio: 'ignore', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }, timeout: 300_000 })
  } catch {
    try {
      execFileSync('apt-get', ['update'], { stdio: 'ignore', timeout: 300_000 })
      execFileSync('apt-get', ['install', '-y', '--no-install-recommends', 'mosquitto'], { stdio: 'ignore', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }, timeout: 300_000 })
    } catch (err) {
      log(`apt-get install mosquitto failed (${err.message.split('\n')[0]}): Mosquitto baseline skipped`)
      return null
    }
  }
  v = version()
  return v
}

/**
 * Baseline (b): Debian's Mosquitto with its own config on a free port: our CA, require_certificate,
 * use_identity_as_username (the CN), our signed CRL, and an ACL giving each device devices/<CN>/# and the ingest
 * service devices/+/telemetry. Everything else is Mosquitto's default.
 */
export async function startMosquitto (ctx) {
  const n = ++seq
  const dir = path.join(ctx.dir, `mosquitto-${n}`)
  fs.mkdirSync(dir, { recursive: true })
  const port = await freePort()
  const acl = path.join(dir, 'acl')
  fs.writeFileSync(acl, [
    '# %u is the username, which use_identity_as_username makes the certificate CN',
    'pattern readwrite devices/%u/#',
    '',
    `user ${SERVICE_ID}`,
    'topic read devices/+/telemetry',
    '',
  ].join('\n'))
  const conf = path.join(dir, 'mosquitto.conf')
  const p = ctx.pki.paths
  fs.writeFileSync(conf, [
    // Running as root, Mosquitto would switch to the "mosquitto" user, which cannot read the temp home.
    `user ${os.userInfo().username}`,
    'persistence false',
    `listener ${port} 127.0.0.1`,
    `cafile ${p.chain}`,
    `certfile ${p.serverCert}`,
    `keyfile ${p.serverKey}`,
    'require_certificate true',
    'use_identity_as_username true',
    `crlfile ${ctx.pki.crlFile}`,
    `acl_file ${acl}`,
    '',
  ].join('\n'))
  const logFile = path.join(ctx.dir, `mosquitto-${n}.log`)
  const t0 = performance.now()
  const child = spawnPinned(CPUS.broker, 'mosquitto', ['-c', conf], { logFile, env: childEnv(), cwd: dir })
  await waitForPort(port, child)
  return started('mosquitto', child, logFile, port, t0)
}

/** The comparison set, in the order of the tables: ours first, then the floor and the two baselines. */
export const TARGETS = {
  zt: { label: 'aedes-zero-trust', short: 'ours', start: startZt, mqtt: true },
  floor: { label: 'node:tls floor', short: 'floor', start: startFloor, mqtt: false },
  aedes: { label: 'plain Aedes', short: 'Aedes', start: startAedes, mqtt: true },
  mosquitto: { label: 'Mosquitto', short: 'Mosquitto', start: startMosquitto, mqtt: true },
}
export const BASELINES = ['floor', 'aedes', 'mosquitto']
