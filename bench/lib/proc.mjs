// Child processes of the bench: pinned spawns, readiness from their log, CPU and RSS from /proc, and cleanup on exit.
import { execFileSync, spawn } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'

let clkTck = 100
try { clkTck = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100 } catch { /* Linux default */ }
/** Clock ticks per second of utime/stime in /proc/PID/stat. */
export const CLK_TCK = clkTck

/** The CPUs: the broker under test on one, the load generator on the other (both 0 on a one-core machine). */
export const CPUS = os.cpus().length >= 2 ? { broker: 0, load: 1 } : { broker: 0, load: 0 }

const children = new Set()

/** Kills every child still running: SIGKILL, synchronous, safe to call from an 'exit' handler. */
export function killAll () {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) {
      try { process.kill(child.pid, 'SIGKILL') } catch { /* already gone */ }
    }
  }
  children.clear()
}

/** Pins every thread of this process (the load generator) to one CPU; new threads inherit it. */
export function pinSelf (cpu) {
  execFileSync('taskset', ['-a', '-p', '-c', String(cpu), String(process.pid)], { stdio: 'ignore' })
}

/**
 * Spawns `taskset -c CPU cmd args...` (taskset execs, so the PID is the program's), stdout and stderr to logFile.
 * The child is tracked and killed when the bench exits.
 */
export function spawnPinned (cpu, cmd, args, { logFile, env = process.env, cwd = process.cwd() } = {}) {
  const fd = logFile === undefined ? 'ignore' : fs.openSync(logFile, 'a')
  const child = spawn('taskset', ['-c', String(cpu), cmd, ...args], { cwd, env, stdio: ['ignore', fd, fd] })
  if (typeof fd === 'number') fs.closeSync(fd)
  children.add(child)
  child.exited = new Promise((resolve) => {
    child.once('exit', (code, signal) => { children.delete(child); resolve({ code, signal }) })
    child.once('error', (err) => { children.delete(child); resolve({ code: -1, signal: null, error: err }) })
  })
  return child
}

/**
 * Polls a child's log file until `re` matches (every 5 ms, so start-up times are measured to that resolution).
 * Rejects when the child exits first or after timeoutMs, quoting the log's tail.
 */
export async function waitForLog (child, logFile, re, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs
  let exited = null
  child.exited.then((e) => { exited = e })
  for (;;) {
    let text = ''
    try { text = fs.readFileSync(logFile, 'utf8') } catch { /* not created yet */ }
    const m = re.exec(text)
    if (m !== null) return m
    if (exited !== null) throw new Error(`${child.spawnargs.slice(3, 5).join(' ')} exited (${exited.code ?? exited.signal}) before it was ready: ${tail(text)}`)
    if (Date.now() > deadline) throw new Error(`${child.spawnargs.slice(3, 5).join(' ')} not ready within ${timeoutMs} ms: ${tail(text)}`)
    await sleep(5)
  }
}

function tail (text) {
  return text.trim().split('\n').slice(-3).join(' | ').slice(0, 600) || '(empty log)'
}

/** SIGTERM, then SIGKILL after graceMs. */
export async function stopChild (child, graceMs = 3_000) {
  if (child.exitCode !== null || child.signalCode !== null) return
  try { child.kill('SIGTERM') } catch { /* gone */ }
  const t = setTimeout(() => { try { child.kill('SIGKILL') } catch { /* gone */ } }, graceMs)
  await child.exited
  clearTimeout(t)
}

/** CPU time (user + system, all threads) a process has used, in ms. */
export function cpuMs (pid) {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
  // comm (field 2) may contain spaces and parentheses: count fields after the last ')'; field 3 is index 0.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLK_TCK
}

/** Resident set size of a process, in KiB. */
export function rssKb (pid) {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))
  return m === null ? NaN : Number(m[1])
}

/** A free TCP port on 127.0.0.1 (for servers that cannot bind port 0 and report it, like Mosquitto). */
export function freePort () {
  return new Promise((resolve, reject) => {
    const s = net.createServer()
    s.once('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address()
      s.close(() => { resolve(port) })
    })
  })
}

/** Resolves once a TCP connection to 127.0.0.1:port succeeds, or rejects after timeoutMs. */
export async function waitForPort (port, child, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const ok = await new Promise((resolve) => {
      const s = net.connect(port, '127.0.0.1')
      s.once('connect', () => { s.destroy(); resolve(true) })
      s.once('error', () => { resolve(false) })
    })
    if (ok) return
    if (child.exitCode !== null) throw new Error(`${child.spawnargs[3]} exited (${child.exitCode}) before listening on ${port}`)
    if (Date.now() > deadline) throw new Error(`nothing listens on ${port} after ${timeoutMs} ms`)
    await sleep(20)
  }
}

export function sleep (ms) {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

/** Runs a command to completion (pinned), collecting stdout; rejects on non-zero exit or after timeoutMs. */
export function runPinned (cpu, cmd, args, { env = process.env, cwd = process.cwd(), timeoutMs = 600_000, stopWhen } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn('taskset', ['-c', String(cpu), cmd, ...args], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] })
    children.add(child)
    let out = ''
    let err = ''
    let stopped = false
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`${args[0] ?? cmd} timed out after ${timeoutMs} ms`)) }, timeoutMs)
    child.stdout.on('data', (d) => {
      out += d
      // Some scripts keep a handle open after printing their result: stop them once it is out.
      if (!stopped && stopWhen !== undefined && stopWhen(out)) { stopped = true; child.kill('SIGTERM') }
    })
    child.stderr.on('data', (d) => { err += d })
    child.once('error', (e) => { clearTimeout(timer); children.delete(child); reject(e) })
    child.once('exit', (code) => {
      clearTimeout(timer)
      children.delete(child)
      if (code === 0 || stopped) resolve({ stdout: out, stderr: err })
      else reject(new Error(`${[cmd, ...args].join(' ').slice(0, 200)} exited ${code}: ${err.trim().split('\n').slice(-3).join(' | ')}`))
    })
  })
}
