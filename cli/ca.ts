// `aedes-zt ca ...`, `cert ...` and `crl`: thin adapters from arguments to the CA in ca/.
import type { Command } from './main.js'

export const commands: Command[] = []
