// Turns raw per-run values into medians, ratios and target verdicts, and renders them as markdown and an SVG chart.
import { spread } from './stats.mjs'

export const LABELS = {
  zt: 'aedes-zero-trust',
  floor: 'node:tls floor',
  aedes: 'plain Aedes',
  mosquitto: 'Mosquitto',
  openssl: 'openssl x509 loop',
}
const SHORT = { zt: 'ours', floor: 'floor', aedes: 'Aedes', mosquitto: 'Mosquitto', openssl: 'openssl' }

/**
 * Per workload: for each metric and target, median/min/max over runs; the ratio ours ÷ each baseline (medians);
 * and each goal's verdict with the margin.
 */
export function summarize (workload, raw) {
  const stats = {}
  for (const metric of Object.keys(workload.metrics)) {
    stats[metric] = {}
    for (const t of workload.targets) stats[metric][t] = spread((raw[t] ?? []).map((v) => v?.[metric]))
  }
  const baselines = workload.targets.filter((t) => t !== 'zt')
  const ratios = {}
  for (const metric of Object.keys(workload.metrics)) {
    ratios[metric] = {}
    for (const b of baselines) {
      const ours = stats[metric].zt?.median
      const base = stats[metric][b]?.median
      ratios[metric][b] = Number.isFinite(ours) && Number.isFinite(base) && base !== 0 ? ours / base : NaN
    }
  }
  const verdicts = (workload.goals ?? []).map((g) => judge(workload, g, stats))
  return { stats, ratios, verdicts }
}

function fmt (x, digits = 2) {
  if (!Number.isFinite(x)) return '–'
  if (Math.abs(x) >= 1000 && digits <= 1) return Math.round(x).toLocaleString('en-US')
  return x.toFixed(digits)
}

function judge (workload, g, stats) {
  const m = workload.metrics[g.metric]
  const value = stats[g.metric]?.[g.of ?? 'zt']?.median
  const unit = m.unit === '' ? '' : ` ${m.unit}`
  const v = { text: g.text, metric: g.metric, value, met: null, detail: '', proposed: g.proposed === true }
  if (!Number.isFinite(value)) { v.detail = 'not measured'; return v }
  if (g.maxRatio !== undefined) {
    const vs = typeof g.vs === 'string' ? { target: g.vs, metric: g.metric } : g.vs
    const base = stats[vs.metric]?.[vs.target]?.median
    if (!Number.isFinite(base) || base === 0) { v.detail = `no ${LABELS[vs.target]} figure to compare with`; return v }
    const ratio = value / base
    v.ratio = ratio
    v.limit = g.maxRatio * base
    v.met = ratio <= g.maxRatio
    const what = `${fmt(value, m.digits)}${unit} = ${ratio.toFixed(2)}× ${LABELS[vs.target]} (${fmt(base, m.digits)}${unit}); target ≤ ${g.maxRatio}× (${fmt(v.limit, m.digits)}${unit})`
    v.detail = v.met ? what : `missed by ${((ratio / g.maxRatio - 1) * 100).toFixed(0)}%: ${what}`
    return v
  }
  if (g.below !== undefined) {
    v.met = value < g.below
    v.detail = v.met ? `${fmt(value, m.digits)}${unit} (target < ${g.below}${unit})` : `missed by ${fmt(value - g.below, m.digits)}${unit} (${((value / g.below - 1) * 100).toFixed(0)}%): ${fmt(value, m.digits)}${unit}, target < ${g.below}${unit}`
    return v
  }
  if (g.max !== undefined) {
    v.met = value <= g.max
    v.detail = v.met ? `${fmt(value, m.digits)}${unit} (target ≤ ${g.max}${unit})` : `missed by ${fmt(value - g.max, m.digits)}${unit}: ${fmt(value, m.digits)}${unit}, target ≤ ${g.max}${unit}`
    return v
  }
  if (g.min !== undefined) {
    v.met = value >= g.min
    v.detail = v.met ? `${fmt(value, m.digits)}${unit} (target ≥ ${g.min}${unit})` : `missed by ${fmt(g.min - value, m.digits)}${unit} (${((1 - value / g.min) * 100).toFixed(0)}% short): ${fmt(value, m.digits)}${unit}, target ≥ ${g.min}${unit}`
    return v
  }
  return v
}

function cell (s, digits) {
  if (s === undefined || s.n === 0) return '–'
  if (s.n === 1 || s.min === s.max) return fmt(s.median, digits)
  return `${fmt(s.median, digits)} (${fmt(s.min, digits)}–${fmt(s.max, digits)})`
}

/** One markdown section for a workload. */
export function workloadMarkdown (workload, summary, { runs, quick, description, notes = [], errors = [] }) {
  const t = workload.targets
  const baselines = t.filter((x) => x !== 'zt')
  const lines = [`### ${workload.title}`, '', description, '']
  const head = ['metric', ...t.map((x) => LABELS[x]), ...baselines.map((b) => `ours ÷ ${SHORT[b]}`)]
  lines.push(`| ${head.join(' | ')} |`, `|${head.map((_, i) => (i === 0 ? '---' : '--:')).join('|')}|`)
  for (const [key, m] of Object.entries(workload.metrics)) {
    const row = [`${m.label}${m.unit === '' ? '' : ` (${m.unit})`}${m.better === 'lower' ? ' ↓' : m.better === 'higher' ? ' ↑' : ''}`]
    for (const x of t) row.push(cell(summary.stats[key][x], m.digits))
    for (const b of baselines) {
      const r = summary.ratios[key][b]
      row.push(Number.isFinite(r) && key !== 'failed' && key !== 'lost' && !m.noRatio ? `${r.toFixed(2)}×` : '–')
    }
    lines.push(`| ${row.join(' | ')} |`)
  }
  lines.push('', `${quick ? '**--quick run: small counts, 1 run — indicative only.** ' : ''}Median (min–max) over ${runs} run${runs === 1 ? '' : 's'}; ↓ lower is better, ↑ higher is better; ratios are of medians.`)
  if (summary.verdicts.length > 0) {
    lines.push('', 'Targets:')
    for (const v of summary.verdicts) lines.push(`- ${v.met === true ? 'met' : v.met === false ? '**MISSED**' : 'not judged'}: ${v.text} — ${v.detail}`)
  }
  const extra = [...new Set([...notes, ...errors.map((e) => `error: ${e}`)])]
  if (extra.length > 0) {
    lines.push('', 'Notes:')
    for (const n of extra.slice(0, 20)) lines.push(`- ${n}`)
    if (extra.length > 20) lines.push(`- … ${extra.length - 20} more in the JSON`)
  }
  lines.push('')
  return lines.join('\n')
}

function esc (s) {
  return String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')
}

/**
 * A horizontal bar chart of ours ÷ baseline for the charted metrics, on a log scale centred on 1×, with each target's
 * limit drawn as a tick. Hand-written SVG: no dependency.
 */
export function ratioSvg (rows, { title }) {
  const W = 900
  const rowH = 26
  const left = 360
  const right = 70
  const top = 56
  const H = top + rows.length * rowH + 48
  const lo = 1 / 4
  const hi = 8
  const x = (r) => left + ((Math.log2(Math.min(hi, Math.max(lo, r))) - Math.log2(lo)) / (Math.log2(hi) - Math.log2(lo))) * (W - left - right)
  const out = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="#fff"/>`,
    `<text x="${W / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">${esc(title)}</text>`,
    `<text x="${W / 2}" y="40" text-anchor="middle" fill="#555">ours ÷ baseline, broker cost per unit of work (log scale): left of 1× we spend less; black ticks = target limits</text>`,
  ]
  for (const r of [0.25, 0.5, 1, 2, 4, 8]) {
    out.push(`<line x1="${x(r)}" y1="${top - 6}" x2="${x(r)}" y2="${top + rows.length * rowH}" stroke="${r === 1 ? '#333' : '#ddd'}" stroke-width="${r === 1 ? 1.5 : 1}"/>`)
    out.push(`<text x="${x(r)}" y="${top + rows.length * rowH + 16}" text-anchor="middle" fill="#555">${r}×</text>`)
  }
  rows.forEach((row, i) => {
    const y = top + i * rowH
    out.push(`<text x="${left - 8}" y="${y + 17}" text-anchor="end">${esc(row.label)}</text>`)
    if (!Number.isFinite(row.ratio)) {
      out.push(`<text x="${x(1) + 6}" y="${y + 17}" fill="#999">not measured</text>`)
      return
    }
    const x0 = x(1)
    const x1 = x(row.ratio)
    const colour = row.met === true ? '#2e8b57' : row.met === false ? '#c0392b' : '#4a78b5'
    out.push(`<rect x="${Math.min(x0, x1)}" y="${y + 5}" width="${Math.max(1, Math.abs(x1 - x0))}" height="${rowH - 10}" fill="${colour}"/>`)
    if (Number.isFinite(row.limit)) out.push(`<line x1="${x(row.limit)}" y1="${y + 1}" x2="${x(row.limit)}" y2="${y + rowH - 1}" stroke="#000" stroke-width="2"/>`)
    const clipped = row.ratio > hi || row.ratio < lo ? ' (off scale)' : ''
    out.push(`<text x="${Math.max(x0, x1) + 5}" y="${y + 17}" fill="#222">${row.ratio.toFixed(2)}×${clipped}</text>`)
  })
  const ly = top + rows.length * rowH + 34
  out.push(`<rect x="${left}" y="${ly - 9}" width="10" height="10" fill="#2e8b57"/><text x="${left + 14}" y="${ly}">target met</text>`)
  out.push(`<rect x="${left + 100}" y="${ly - 9}" width="10" height="10" fill="#c0392b"/><text x="${left + 114}" y="${ly}">target missed</text>`)
  out.push(`<rect x="${left + 220}" y="${ly - 9}" width="10" height="10" fill="#4a78b5"/><text x="${left + 234}" y="${ly}">no target</text>`)
  out.push('</svg>', '')
  return out.join('\n')
}

/**
 * The chart's rows: every charted metric (metric.chart: true or a short label; costs only, so left is always better)
 * against every baseline, coloured by the goal that compares the same pair.
 */
export function chartRows (workload, summary) {
  const rows = []
  for (const [key, m] of Object.entries(workload.metrics)) {
    if (m.chart === undefined || m.chart === false) continue
    for (const b of workload.targets.filter((t) => t !== 'zt')) {
      const ratio = summary.ratios[key][b]
      const goal = summary.verdicts.find((v, i) => {
        const g = workload.goals[i]
        return g.metric === key && g.maxRatio !== undefined && (typeof g.vs === 'string' ? g.vs === b : g.vs.target === b && g.vs.metric === key)
      })
      const gi = goal === undefined ? -1 : summary.verdicts.indexOf(goal)
      rows.push({
        label: `${workload.name}: ${m.chart === true ? m.label : m.chart} vs ${SHORT[b]}`,
        ratio,
        met: goal?.met ?? null,
        limit: gi >= 0 ? workload.goals[gi].maxRatio : NaN,
      })
    }
  }
  // Goals that compare with another metric of a baseline (resumed reconnect vs Mosquitto's full handshake).
  summary.verdicts.forEach((v, i) => {
    const g = workload.goals[i]
    if (g.maxRatio === undefined || typeof g.vs === 'string' || g.vs.metric === g.metric) return
    rows.push({ label: `${workload.name}: ${g.chart ?? `${workload.metrics[g.metric].label} vs ${SHORT[g.vs.target]}`}`, ratio: v.ratio ?? NaN, met: v.met, limit: g.maxRatio })
  })
  return rows
}
