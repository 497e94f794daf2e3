#!/usr/bin/env bash
# Scheduled scan of every watch for cron or a systemd timer: `echoimage scan --watches`
# under a lock of its own, logged to "$DATA_DIR/scan.log" (ECHOIMAGE_SCAN_LOG). It is
# reindex-cron.sh with ECHOIMAGE_CRON_JOB=scan (see there for the lock, the log and the
# exit status); new findings make it print one line on stdout and exit 0.
#
#   ECHOIMAGE_DATA_DIR=/srv/echoimage scripts/scan-cron.sh
#   scripts/scan-cron.sh /srv/echoimage
set -euo pipefail
export ECHOIMAGE_CRON_JOB=scan
exec bash "$(dirname -- "${BASH_SOURCE[0]}")/reindex-cron.sh" "$@"
