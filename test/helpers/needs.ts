import { existsSync } from 'node:fs'

/**
 * Whether a test that needs an outside program may run. Under CI=true a
 * missing program is a failure, never a skip; elsewhere the test is skipped
 * with the reason (the returned string, for tap's `skip` option).
 */
export function needs (path: string, install: string): string | false {
  if (existsSync(path)) return false
  const reason = `${path} is missing: ${install}`
  if (process.env.CI === 'true') throw new Error(`CI=true and ${reason}`)
  return reason
}
