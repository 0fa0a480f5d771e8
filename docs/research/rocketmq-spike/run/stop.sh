#!/bin/bash
# stop the servers started by start.sh: SIGTERM, wait up to 10 s, then SIGKILL (the broker sometimes hangs on SIGTERM)
R=/tmp/rmqrun
for f in broker namesrv; do
  P=$(cat $R/$f.pid 2>/dev/null) || continue
  kill $P 2>/dev/null
  for i in $(seq 100); do kill -0 $P 2>/dev/null || break; sleep 0.1; done
  kill -0 $P 2>/dev/null && { echo "$f still alive after 10 s, SIGKILL"; kill -9 $P; }
done
