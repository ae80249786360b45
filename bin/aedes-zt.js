#!/usr/bin/env node
// Entry point for `aedes-zt`: the compiled CLI lives in dist/ (built by `npm ci` through `prepare`).
import { main } from '../dist/cli/main.js'

main(process.argv.slice(2)).then((code) => { process.exitCode = code })
