#!/usr/bin/env bash
# Scheduled re-index for cron or a systemd timer: `echoimage index update` under a lock.
# Every recorded source is read again: folders and catalogue files, and web pages, which
# are scraped again (new images indexed, changed ones re-indexed, vanished ones marked gone;
# README, "Keep a website current").
#
#   ECHOIMAGE_DATA_DIR=/srv/echoimage scripts/reindex-cron.sh
#   scripts/reindex-cron.sh /srv/echoimage          # the data directory as an argument
#
# * Runs never overlap: the script holds `flock -n` on "$DATA_DIR/reindex.lock" for the
#   whole update. A run that finds the lock taken logs "previous run still going" and
#   exits 0: an update outlasting its interval is normal for a big catalogue, the running
#   one reports its own result, and a non-zero exit would send cron mail / mark the systemd
#   unit failed every time. Only a holder older than ECHOIMAGE_REINDEX_STUCK_AFTER seconds
#   (default 86400) makes the skipped run exit 1, so a hung update gets noticed.
# * Everything the update prints (its `--json` summary, warnings, errors) is appended to
#   the log with a timestamp on every line, between a "start" and a "done"/"FAILED" line.
# * Exit status: 0 when the update succeeded (or a previous run is still going), the
#   update's own non-zero status when it failed (also one line on stderr, for cron mail
#   and the journal), 1 for a stuck previous run, 2 for a usage error, 127 when the
#   echoimage program is missing.
#
# Environment:
#   ECHOIMAGE_DATA_DIR              data directory (or the first argument); required
#   ECHOIMAGE_BIN                   echoimage program (default: the repo's .venv/bin/echoimage)
#   ECHOIMAGE_REINDEX_LOG           log file (default: "$DATA_DIR/reindex.log")
#   ECHOIMAGE_REINDEX_STUCK_AFTER   seconds after which a held lock counts as stuck
#   ECHOIMAGE_*                     every other setting reaches echoimage as usual
#                                   (e.g. ECHOIMAGE_DATABASE_URL, ECHOIMAGE_HTTP_TIMEOUT)
set -euo pipefail

script_dir=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
repo_dir=$(dirname -- "$script_dir")

DATA_DIR=${1:-${ECHOIMAGE_DATA_DIR:-}}
if [[ -z "$DATA_DIR" ]]; then
    echo "usage: ECHOIMAGE_DATA_DIR=DIR $0   (or: $0 DIR)" >&2
    exit 2
fi
ECHOIMAGE_BIN=${ECHOIMAGE_BIN:-$repo_dir/.venv/bin/echoimage}
LOG_FILE=${ECHOIMAGE_REINDEX_LOG:-$DATA_DIR/reindex.log}
STUCK_AFTER=${ECHOIMAGE_REINDEX_STUCK_AFTER:-86400}
LOCK_FILE=$DATA_DIR/reindex.lock

mkdir -p -- "$DATA_DIR" "$(dirname -- "$LOG_FILE")"

stamp() { printf '%(%Y-%m-%dT%H:%M:%S%z)T' -1; }
log() { printf '%s [%s] %s\n' "$(stamp)" "$$" "$*" >>"$LOG_FILE"; }

if ! command -v flock >/dev/null 2>&1; then
    log "FAILED: flock(1) not found (util-linux)"
    echo "reindex: flock(1) not found" >&2
    exit 127
fi

# fd 9 holds the lock until this script and the update it runs have both exited; the file
# is opened without truncating it, so a waiting run can read who holds it
exec 9>>"$LOCK_FILE"
if ! flock -n 9; then
    holder=$(head -c 200 -- "$LOCK_FILE" 2>/dev/null | head -n 1 || true)
    since=$(sed -n 's/.*epoch=\([0-9][0-9]*\).*/\1/p' -- "$LOCK_FILE" 2>/dev/null \
            | head -n 1 || true)
    age=""
    if [[ -n "$since" ]]; then
        age=$(( $(printf '%(%s)T' -1) - since ))
    fi
    if [[ -n "$age" && "$age" -gt "$STUCK_AFTER" ]]; then
        log "previous run still going after ${age} s (${holder:-holder unknown}): stuck? skipping"
        echo "reindex: previous run has held $LOCK_FILE for ${age} s: stuck?" >&2
        exit 1
    fi
    log "previous run still going (${holder:-holder unknown}); skipping this one"
    exit 0
fi
printf 'pid=%s started=%s epoch=%s\n' "$$" "$(stamp)" "$(printf '%(%s)T' -1)" >"$LOCK_FILE"

if [[ ! -x "$ECHOIMAGE_BIN" ]]; then
    log "FAILED: echoimage program not found or not executable: $ECHOIMAGE_BIN (set ECHOIMAGE_BIN)"
    echo "reindex: $ECHOIMAGE_BIN not found (set ECHOIMAGE_BIN)" >&2
    exit 127
fi

log "start: $ECHOIMAGE_BIN --data-dir $DATA_DIR index update -q --json"
started=$SECONDS
set +e
"$ECHOIMAGE_BIN" --data-dir "$DATA_DIR" index update -q --json </dev/null 2>&1 \
    | while IFS= read -r line || [[ -n "$line" ]]; do
        printf '%s [%s] %s\n' "$(stamp)" "$$" "$line"
      done >>"$LOG_FILE"
status=${PIPESTATUS[0]}
set -e
took=$(( SECONDS - started ))

if [[ "$status" -ne 0 ]]; then
    log "FAILED: index update exited with status $status after ${took} s"
    echo "reindex: index update failed with status $status after ${took} s; see $LOG_FILE" >&2
    exit "$status"
fi
log "done: index update ok in ${took} s"
