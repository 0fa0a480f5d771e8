#!/bin/bash
# usage: start.sh  -> starts namesrv on 19876 and broker on 20911 under /tmp/rmqrun
R=/tmp/rmqrun; mkdir -p $R/home $R/store
export ROCKETMQ_HOME=$R/home HOME=$R/home
cd $R
T0=$(date +%s.%N)
/work/rmq/root/bin/rocketmq-namesrv-rust --listenPort 19876 --bindAddress 127.0.0.1 --rocketmqHome $R/home > $R/namesrv.log 2>&1 &
echo $! > $R/namesrv.pid
for i in $(seq 400); do (echo > /dev/tcp/127.0.0.1/19876) 2>/dev/null && break; sleep 0.05; done
T1=$(date +%s.%N)
/work/rmq/root/bin/rocketmq-broker-rust -c ${BROKER_CONF:-/work/rmqspike/run/broker.toml} > $R/broker.log 2>&1 &
echo $! > $R/broker.pid
for i in $(seq 1200); do (echo > /dev/tcp/127.0.0.1/20911) 2>/dev/null && break; kill -0 $(cat $R/broker.pid) || { echo broker died; tail $R/broker.log; exit 1; }; sleep 0.05; done
T2=$(date +%s.%N)
echo "namesrv port open after $(echo "$T1-$T0"|bc)s, broker port open after $(echo "$T2-$T1"|bc)s"
