//! Delivery to consumer groups: redelivery of expired in-flight
//! messages, scanning new offsets through the tag filter and the
//! property predicate, dead-lettering, and settling receipts (the module
//! docs of `embedded` describe the walk).

use super::*;

impl EmbeddedBroker {
    pub(super) fn backoff(&self, attempt: u32) -> Duration {
        let i = (attempt.max(1) - 1) as usize;
        let levels = &self.cfg.retry_levels;
        levels
            .get(i)
            .or(levels.last())
            .copied()
            .unwrap_or(Duration::from_secs(10))
    }

    /// One pass over the queues: returns deliveries, dead letters and the
    /// earliest time an in-flight message becomes visible again.
    pub(super) fn collect(
        &self,
        key: &str,
        topic: &str,
        queues: u16,
        opts: &ReceiveOptions,
    ) -> Result<(Vec<Delivery>, Vec<Dead>, Option<i64>)> {
        let pass = Pass {
            topic,
            opts,
            now: now_ms(),
            invisible: opts.invisible.as_millis() as i64,
        };
        let start = self.rr.fetch_add(1, Ordering::Relaxed);
        self.groups.with(key, topic, queues, |states| {
            let mut out = Vec::new();
            let mut dead = Vec::new();
            for i in 0..usize::from(queues) {
                let q = ((start + i) % usize::from(queues)) as u16;
                let st = &mut states[usize::from(q)];
                self.redeliver(&pass, q, st, &mut out, &mut dead)?;
                if !opts.ordered {
                    self.scan_new(&pass, q, st, &mut out, opts.max_messages)?;
                } else if st.inflight.is_empty() {
                    // Ordered: the queue's next message only once the one
                    // before it is acked or dead-lettered.
                    let limit = (out.len() + 1).min(opts.max_messages);
                    self.scan_new(&pass, q, st, &mut out, limit)?;
                }
                if out.len() >= opts.max_messages {
                    break;
                }
            }
            let next = states
                .iter()
                .flat_map(|s| s.inflight.values())
                .map(|f| f.visible_at)
                .min();
            Ok((out, dead, next))
        })?
    }

    pub(super) fn redeliver(
        &self,
        p: &Pass<'_>,
        q: u16,
        st: &mut QueueState,
        out: &mut Vec<Delivery>,
        dead: &mut Vec<Dead>,
    ) -> Result<()> {
        let (topic, opts, now, invisible) = (p.topic, p.opts, p.now, p.invisible);
        let due: Vec<(u64, InFlight)> = st
            .inflight
            .iter()
            .filter(|(_, f)| f.visible_at <= now)
            .map(|(o, f)| (*o, *f))
            .collect();
        for (offset, f) in due {
            if out.len() >= opts.max_messages {
                break;
            }
            let message = match self.store.entries(topic, q, offset, 1)?.first() {
                Some(e) => match self.store.read(e) {
                    Ok(m) => m,
                    Err(err) => {
                        tracing::warn!(topic, queue = q, offset, error = %err, "skipping unreadable message");
                        st.complete(offset);
                        continue;
                    }
                },
                None => {
                    st.complete(offset);
                    continue;
                }
            };
            let attempt = f.attempt + 1;
            if attempt > self.cfg.max_attempts {
                // Parked until the dead letter is written.
                st.inflight.insert(
                    offset,
                    InFlight {
                        visible_at: i64::MAX,
                        ..f
                    },
                );
                dead.push(Dead {
                    queue: q,
                    offset,
                    message,
                    attempts: f.attempt,
                });
                continue;
            }
            let n = nonce();
            st.inflight.insert(
                offset,
                InFlight {
                    attempt,
                    visible_at: now + invisible,
                    nonce: n,
                },
            );
            out.push(Delivery {
                message,
                receipt: receipt(q, offset, n),
                attempt,
            });
        }
        Ok(())
    }

    pub(super) fn scan_new(
        &self,
        p: &Pass<'_>,
        q: u16,
        st: &mut QueueState,
        out: &mut Vec<Delivery>,
        limit: usize,
    ) -> Result<()> {
        let (topic, opts, now, invisible) = (p.topic, p.opts, p.now, p.invisible);
        let (min, max) = self.store.queue_range(topic, q)?;
        if st.committed < min {
            // Retention removed messages this group had not finished.
            st.jump_to(min);
        }
        while out.len() < limit && st.next < max {
            let entries = self.store.entries(topic, q, st.next, 32)?;
            if entries.is_empty() {
                break;
            }
            for e in entries {
                let offset = st.next;
                st.next += 1;
                // The tag hash rules most messages out without a read.
                if !opts.tags.may_match(e.tag_hash) {
                    st.complete(offset);
                    continue;
                }
                let m = match self.store.read(&e) {
                    Ok(m) => m,
                    Err(err) => {
                        tracing::warn!(topic, queue = q, offset, error = %err, "skipping unreadable message");
                        st.complete(offset);
                        continue;
                    }
                };
                let wanted = opts.tags.matches(m.tag.as_deref())
                    && opts.predicate.as_ref().is_none_or(|p| (p.0)(&m));
                if !wanted {
                    st.complete(offset);
                    continue;
                }
                let n = nonce();
                st.inflight.insert(
                    offset,
                    InFlight {
                        attempt: 1,
                        visible_at: now + invisible,
                        nonce: n,
                    },
                );
                out.push(Delivery {
                    message: m,
                    receipt: receipt(q, offset, n),
                    attempt: 1,
                });
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(())
    }

    pub(super) async fn dead_letter(
        &self,
        group: &str,
        key: &str,
        topic: &str,
        queues: u16,
        dead: Vec<Dead>,
    ) -> Result<()> {
        for d in dead {
            self.trace.record(vec![Hop::dead_letter(
                d.message.id,
                now_ms(),
                group,
                d.attempts,
            )]);
            let mut props = d.message.properties;
            mark_dead(&mut props, topic, &d.message.id, d.attempts);
            let copy = Message {
                topic: dlq_topic(group),
                body: d.message.body,
                tag: d.message.tag,
                keys: d.message.keys,
                properties: props,
                born_ms: d.message.born_ms,
            };
            self.store.put(copy, QueueSelect::Queue(0)).await?;
            self.groups.with(key, topic, queues, |s| {
                s[usize::from(d.queue)].complete(d.offset)
            })?;
        }
        Ok(())
    }

    pub(super) async fn receive_impl(
        &self,
        group: &str,
        topic: &str,
        opts: ReceiveOptions,
    ) -> Result<Vec<Delivery>> {
        let queues = match self.store.queues(topic) {
            Some(n) => n,
            None if self.store.config().auto_create_topics => {
                self.store
                    .create_topic(topic, self.store.config().default_queues)?;
                self.store.config().default_queues
            }
            None => return Err(Error::UnknownTopic(topic.to_owned())),
        };
        let key = group_key(group, &opts.mode);
        let deadline = Instant::now() + opts.wait;
        let mut appended = self.store.appended();
        loop {
            appended.borrow_and_update();
            let (out, dead, next_visible) = self.collect(&key, topic, queues, &opts)?;
            if !dead.is_empty() {
                self.dead_letter(group, &key, topic, queues, dead).await?;
            }
            let now = Instant::now();
            if !out.is_empty() || now >= deadline {
                return Ok(out);
            }
            let mut until = deadline;
            if let Some(v) = next_visible {
                let in_ms = (v - now_ms()).max(0) as u64;
                until = until.min(now + Duration::from_millis(in_ms));
            }
            tokio::select! {
                changed = appended.changed() => { changed.map_err(|_| Error::Closed)?; }
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    pub(super) fn settle(
        &self,
        group: &str,
        topic: &str,
        mode: &ConsumeMode,
        r: &str,
        ack: bool,
    ) -> Result<()> {
        let (q, offset, n) = parse_receipt(r)?;
        let queues = self
            .store
            .queues(topic)
            .ok_or_else(|| Error::UnknownTopic(topic.to_owned()))?;
        if q >= queues {
            return Err(Error::BadReceipt);
        }
        let backoff = |attempt| self.backoff(attempt).as_millis() as i64;
        self.groups
            .with(&group_key(group, mode), topic, queues, |s| {
                let st = &mut s[usize::from(q)];
                match st.inflight.get_mut(&offset) {
                    Some(f) if f.nonce == n => {
                        if ack {
                            st.complete(offset);
                        } else {
                            f.visible_at = now_ms() + backoff(f.attempt);
                        }
                        Ok(())
                    }
                    // Acking what is already done is a no-op; anything else is
                    // a stale (redelivered) or foreign handle.
                    None if ack && (offset < st.committed || st.done.contains(&offset)) => Ok(()),
                    _ => Err(Error::BadReceipt),
                }
            })?
    }
}
