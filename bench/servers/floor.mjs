// Baseline (0), the floor: a bare node:tls server that completes the mutual-TLS handshake and nothing else (no MQTT).
// Same TLS settings as the broker (our CA only, client certificate required). Prints "listening on port N".
//
//   node bench/servers/floor.mjs --home DIR [--port 0]
import tls from 'node:tls'
import { parseArgs } from 'node:util'
import { brokerTlsOptions } from './tls-options.mjs'

const { values } = parseArgs({ options: { home: { type: 'string' }, port: { type: 'string', default: '0' } } })
if (values.home === undefined) { console.error('floor: --home DIR is required'); process.exit(2) }

const server = tls.createServer(brokerTlsOptions(values.home), (socket) => {
  socket.setNoDelay(true)
  socket.on('error', () => {})
  // Hold the connection until the client ends it, as a broker holds an idle session.
  socket.on('end', () => { socket.end() })
})
server.on('tlsClientError', (_err, socket) => { socket.destroy() })
server.listen(Number(values.port), '127.0.0.1', () => {
  console.log(`listening on port ${server.address().port}`)
})
const stop = () => { server.close(); process.exit(0) }
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
