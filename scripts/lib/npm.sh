# shellcheck shell=bash
# Shared by scripts/install-test-deps.sh and the examples' run.sh; sourced.

# npm_ci_if_stale DIR: `npm ci` in DIR unless its node_modules already
# match package-lock.json (npm keeps a copy of what it installed as
# node_modules/.package-lock.json); `npm ci` wipes and reinstalls, so it is
# skipped when there is nothing to do.
npm_ci_if_stale() {
    local dir="$1"
    if [ -f "$dir/node_modules/.package-lock.json" ] && node -e '
        const [a, b] = process.argv.slice(1).map((f) => JSON.parse(require("fs").readFileSync(f, "utf8")).packages);
        const strip = (p) => JSON.stringify(Object.fromEntries(Object.entries(p).filter(([k]) => k !== "").map(([k, v]) => [k, v.version])));
        process.exit(strip(a) === strip(b) ? 0 : 1);
      ' "$dir/package-lock.json" "$dir/node_modules/.package-lock.json" 2>/dev/null; then
        echo "== $dir: node_modules up to date"
    else
        echo "== npm ci in $dir"
        (cd "$dir" && npm ci --no-audit --no-fund)
    fi
}
