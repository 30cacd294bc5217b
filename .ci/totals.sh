# Sourced by .ci/run and .ci/node-versions: the plain "N passed, N failed" line from a tap log.
totals_line () {
  # tap's last summary line: "# { total: 664, pass: 663, fail: 1 }" (fail absent when 0).
  local totals passed failed
  totals=$(grep -E '^# \{ total: [0-9]+' "$1" | tail -n 1 || true)
  passed=$(sed -nE 's/.*pass: ([0-9]+).*/\1/p' <<<"$totals")
  failed=$(sed -nE 's/.*fail: ([0-9]+).*/\1/p' <<<"$totals")
  if [ -z "$passed" ]; then
    # No totals: the build or the type-check failed before any test ran.
    passed=0
    failed=1
  fi
  echo "${passed} passed, ${failed:-0} failed"
}
