#!/bin/sh
# Runs the container's command in the foreground as PID 1, so SIGTERM reaches the service and it stops
# cleanly. An app.py command given alone ("secrets list", "check", ...) runs as `python app.py <command>`.
set -eu

case "${1:-}" in
  "" ) set -- python app.py serve ;;
  serve | check | poll | audit | secrets | bindings | replay | backup | migrate-store | manifest | --config | --help | -h )
    set -- python app.py "$@" ;;
esac

exec "$@"
