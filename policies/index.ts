// Public entry point `aedes-zero-trust/policies`: load, compile per identity, decide, explain, watch.
export { ACTIONS, VARIABLES } from './model.js'
export type { Action, Decision, Effect, Entry, EntryLists, Identity, Principals, Qos, Reason, Statement, TemplateLevel, Variable } from './model.js'
export { PolicySet, globToRegExp } from './set.js'
export type { PolicySource } from './set.js'
export { POLICY_EXTENSIONS, listPolicyFilesSync, loadPolicies, loadPoliciesSync, parsePolicies, parseTemplate, resolvePoliciesDir, shippedPoliciesDir } from './load.js'
export { DEFAULT_CACHE_SIZE, compileFor, describeDecision, explain } from './engine.js'
export type { Authorizer, CompileOptions, Explanation, MessageOptions, Request, SubscribeOptions } from './engine.js'
export { watchPolicies } from './watch.js'
export type { PolicyWatcher, WatchOptions } from './watch.js'
export {
  HASH, PLUS, covers, coversLevels, formatFilter, isValidTopicFilter, isValidTopicName, matchLevels, matches,
  overlaps, overlapsLevels, parseFilter, topicFilterProblem, topicNameProblem,
} from './topic.js'
export type { FilterLevel, FilterLevels } from './topic.js'
