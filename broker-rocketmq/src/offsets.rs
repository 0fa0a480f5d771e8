//! A group's progress in the broker: loading committed offsets, writing
//! them, and the calls that read or move them (lag, reset).

use cellgate_broker_core::{ConsumeMode, Error, QueueLag, Result};
use rocketmq_protocol::protocol::header::query_consumer_offset_request_header::QueryConsumerOffsetRequestHeader;
use rocketmq_protocol::protocol::header::update_consumer_offset_header::UpdateConsumerOffsetRequestHeader;

use crate::consume::{offset_group, QueueState, Source, Sub};
use crate::error::{contended, remote, response_code, QUERY_NOT_FOUND};
use crate::group::Reload;
use crate::journal::{self, journal_group, journal_topic, Rec};
use crate::{now_ms, RocketMqBroker};

/// Each queue's committed offset, main then retry.
fn committed(sub: &Sub) -> Vec<(Source, usize, u64)> {
    sub.all_queues()
        .map(|(s, q, st)| (s, q, st.committed))
        .collect()
}

/// Attempts of a reset to become the journal's start.
const RESET_TRIES: usize = 3;

/// Queues of a retry topic: RocketMQ gives `%RETRY%` topics one.
const RETRY_QUEUES: u16 = 1;

// === impl RocketMqBroker: group progress ===

impl RocketMqBroker {
    /// The committed offsets of `topic` for `group`, or each queue's oldest
    /// offset for a group that has none yet (a new group reads what is
    /// retained, as the embedded broker does).
    pub(crate) async fn load_queues(&self, group: &str, topic: &str) -> Result<Vec<QueueState>> {
        let route = match self.client.route(topic).await {
            Ok(r) => r,
            Err(Error::UnknownTopic(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::with_capacity(route.queues.len());
        for q in &route.queues {
            let req = QueryConsumerOffsetRequestHeader {
                consumer_group: group.into(),
                topic: topic.into(),
                queue_id: q.queue_id,
                set_zero_if_not_found: Some(false),
                topic_request_header: q.topic_header(),
            };
            let h = self.client.handle();
            let off = match h
                .query_consumer_offset(q.addr.as_str(), req, self.client.cfg.timeout_ms)
                .await
            {
                Ok(o) => o.max(0) as u64,
                Err(e) if response_code(&e) == Some(QUERY_NOT_FOUND) => {
                    h.min_offset(q.addr.as_str(), &q.mq(topic), self.client.cfg.timeout_ms)
                        .await
                        .map_err(|e| remote("read a queue's oldest offset", &e))?
                        .max(0) as u64
                }
                Err(e) => return Err(remote("read a committed offset", &e).into()),
            };
            out.push(QueueState::at(off));
        }
        Ok(out)
    }

    pub(crate) async fn load(&self, group: &str, topic: &str, mode: &ConsumeMode) -> Result<Sub> {
        let og = offset_group(group, mode);
        let main = self.load_queues(&og, topic).await?;
        let retry = match mode {
            ConsumeMode::Clustering => {
                // The retry topic exists from the group's first receive on,
                // as RocketMQ creates `%RETRY%<group>` when a consumer
                // registers: a receive then never looks up a missing route.
                let retry = crate::consume::retry_topic(group, topic);
                self.ensure_topic(&retry, RETRY_QUEUES).await?;
                self.load_queues(&og, &retry).await?
            }
            ConsumeMode::Broadcast { .. } => Vec::new(),
        };
        let mut sub = Sub {
            group: og,
            topic: topic.to_owned(),
            main,
            retry,
            ordered: false,
            journal: Default::default(),
            me: self.me,
        };
        let loaded = committed(&sub);
        self.replay(&mut sub).await?;
        // Acks journaled by a gateway that could not move the offset
        // (another's acks it had not read yet filled the gap), or a
        // snapshot's floor above what a stale gateway wrote.
        for (s, q, now) in committed(&sub) {
            let was = loaded.iter().find(|(ls, lq, _)| *ls == s && *lq == q);
            if now > was.map_or(0, |(_, _, was)| *was) {
                self.commit(&sub, s, q, now).await?;
            }
        }
        Ok(sub)
    }

    /// Whether the journal has records this process has not read: another
    /// gateway of the group wrote them since this one's last append. The
    /// queue's end offset says so without reading a record.
    pub(crate) async fn journal_moved(&self, sub: &Sub) -> Result<bool> {
        let jt = journal_topic(&sub.group, &sub.topic);
        let route = self.client.route(&jt).await?;
        let Some(qr) = route.queues.first() else {
            return Ok(false);
        };
        Ok(self.max_offset(&jt, qr).await? > sub.journal.next)
    }

    /// [`RocketMqBroker::journal_moved`], asked again after a linger if
    /// not: the other gateway's append is acknowledged a moment before a
    /// pull can read it, and its consumer may be that quick.
    pub(crate) async fn journal_moved_soon(&self, sub: &Sub) -> Result<bool> {
        if self.journal_moved(sub).await? {
            return Ok(true);
        }
        tokio::time::sleep(journal::LINGER).await;
        self.journal_moved(sub).await
    }

    /// Applies the subscription's journal from its start, and writes a
    /// snapshot when that was long (see `journal.rs`).
    async fn replay(&self, sub: &mut Sub) -> Result<()> {
        let jt = journal_topic(&sub.group, &sub.topic);
        self.ensure_topic(&jt, 1).await?;
        let jg = journal_group(&sub.group);
        let start = self
            .load_queues(&jg, &jt)
            .await?
            .first()
            .map_or(0, |q| q.committed);
        let route = self.client.route(&jt).await?;
        let qr = route
            .queues
            .first()
            .ok_or_else(|| Error::UnknownTopic(jt.clone()))?;
        let mut next = start;
        let mut replayed = 0usize;
        // The store time of the journal's start.
        let mut oldest_ms = None;
        loop {
            // Pulled as the journal's group: the pull also creates that
            // group in the broker, which its offset commit needs.
            let got = self.pull(&jg, &jt, (0, qr), next, 64, "*").await?;
            let Some(last) = got.messages.last().map(|m| m.queue_offset) else {
                if got.next > next {
                    // The start is below what the broker retains (a group
                    // quiet for longer than the retention): what was there
                    // is gone, and the committed offsets stand for it.
                    tracing::warn!(
                        topic = jt,
                        from = next,
                        to = got.next,
                        "journal start not retained; replaying from the oldest record"
                    );
                    next = got.next;
                    continue;
                }
                break;
            };
            oldest_ms.get_or_insert(got.messages.first().map_or(0, |m| m.stored_ms));
            for m in got.messages {
                let at = journal::At {
                    offset: m.queue_offset,
                    first: replayed == 0,
                };
                match serde_json::from_slice::<Vec<Rec>>(&m.body) {
                    Ok(recs) => recs.into_iter().for_each(|r| sub.apply(r, at)),
                    Err(e) => tracing::warn!(
                        topic = jt,
                        offset = m.queue_offset,
                        error = %e,
                        "a journal message that is not records: skipped"
                    ),
                }
                replayed += 1;
            }
            next = last + 1;
        }
        sub.journal.next = next;
        sub.journal.replayed_to = next;
        // Not one per load: gateways sharing a group reload often, and a
        // snapshot is the whole state. A long replay counts toward the next;
        // an old start is moved up before retention can remove it.
        sub.journal.since_snapshot = u32::try_from(replayed).unwrap_or(u32::MAX);
        let old = oldest_ms.is_some_and(|t| now_ms() - t > journal::SNAPSHOT_AGE_MS);
        if sub.journal.since_snapshot >= journal::SNAPSHOT_EVERY || old {
            self.snapshot(sub).await?;
        }
        Ok(())
    }

    /// Appends the whole state and moves the journal's start to it. What
    /// was pending goes first, in the same message: should the snapshot
    /// land after another gateway's records (and replay skip it), those
    /// records still count.
    pub(crate) async fn snapshot(&self, sub: &mut Sub) -> Result<()> {
        if sub.journal.stale {
            // This state missed another gateway's records: a snapshot of
            // it, landing where expected, would replay as the whole state
            // and wipe them.
            return journal::flush(&self.client.producer, sub).await.map(drop);
        }
        let jt = journal_topic(&sub.group, &sub.topic);
        let snapshot = sub.snapshot(sub.journal.next);
        let Some(at) = journal::append_pending(&self.client.producer, sub, Some(snapshot)).await?
        else {
            tracing::warn!(
                topic = jt,
                "the state is over the snapshot limit: not written"
            );
            return journal::flush(&self.client.producer, sub).await.map(drop);
        };
        sub.journal.since_snapshot = 0;
        if sub.journal.stale {
            // Records of another gateway came first: the snapshot lacks
            // them, so the journal keeps its start (replay skips it).
            return Ok(());
        }
        self.commit_offset(&journal_group(&sub.group), &jt, 0, at)
            .await
    }

    /// Writes a queue's committed offset to the broker.
    pub(crate) async fn commit(&self, sub: &Sub, s: Source, q: usize, offset: u64) -> Result<()> {
        self.commit_offset(&sub.group, &sub.topic_of(s), q, offset)
            .await
    }

    /// Writes `group`'s committed offset of queue `q` of `topic`.
    async fn commit_offset(&self, group: &str, topic: &str, q: usize, offset: u64) -> Result<()> {
        let route = self.client.route(topic).await?;
        let Some(qr) = route.queues.get(q) else {
            return Ok(());
        };
        let req = UpdateConsumerOffsetRequestHeader {
            consumer_group: group.into(),
            topic: topic.into(),
            queue_id: qr.queue_id,
            commit_offset: offset as i64,
            topic_request_header: qr.topic_header(),
        };
        crate::busy::retry("commit an offset", crate::busy::Call::Repeatable, || {
            self.client.handle().update_consumer_offset(
                &qr.addr,
                req.clone(),
                self.client.cfg.timeout_ms,
            )
        })
        .await
        .map_err(|e| remote("commit an offset", &e).into())
    }

    pub(crate) async fn lag_impl(
        &self,
        group: &str,
        topic: &str,
        mode: &ConsumeMode,
    ) -> Result<Vec<QueueLag>> {
        let route = self.client.route(topic).await?;
        let slot = self.slot(&offset_group(group, mode), topic);
        let mut guard = slot.lock().await;
        let mut sub = self
            .loaded(&mut guard, group, topic, mode, Reload::IfStale)
            .await?;
        if self.journal_moved(sub).await? {
            // Another gateway's acks and deliveries count too.
            sub = self
                .loaded(&mut guard, group, topic, mode, Reload::Always)
                .await?;
        }
        let mut out = Vec::new();
        for (q, qr) in route.queues.iter().enumerate() {
            let max = self.max_offset(topic, qr).await?;
            let (committed, done, inflight) = sub.main.get(q).map_or((0, 0, 0), |st| {
                (st.committed, st.done.len() as u64, st.inflight.len())
            });
            out.push(QueueLag {
                queue: q as u16,
                committed,
                max,
                lag: max.saturating_sub(committed).saturating_sub(done),
                inflight,
            });
        }
        Ok(out)
    }

    pub(crate) async fn reset_impl(
        &self,
        group: &str,
        topic: &str,
        mode: &ConsumeMode,
        ms: i64,
    ) -> Result<()> {
        let route = self.client.route(topic).await?;
        let offsets = self.offsets_at(topic, &route, ms).await?;
        let slot = self.slot(&offset_group(group, mode), topic);
        let mut guard = slot.lock().await;
        for attempt in 0..RESET_TRIES {
            let when = if attempt == 0 {
                Reload::IfStale
            } else {
                Reload::Always
            };
            let sub = self.loaded(&mut guard, group, topic, mode, when).await?;
            sub.main.resize_with(offsets.len(), QueueState::default);
            for (q, off) in offsets.iter().enumerate() {
                sub.main[q].jump_to(*off);
                self.commit(sub, Source::Main, q, *off).await?;
            }
            // The journal's records before the reset no longer apply: it
            // must start at this snapshot, which it does only if no other
            // gateway wrote meanwhile (else replay would skip it, and the
            // older start's offsets would undo the reset).
            self.snapshot(sub).await?;
            if !sub.journal.stale {
                return Ok(());
            }
        }
        Err(contended("reset a group"))
    }
}
