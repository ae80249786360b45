// @peculiar/x509 resolves its parsers through tsyringe, which needs the Reflect polyfill loaded first.
import 'reflect-metadata'
