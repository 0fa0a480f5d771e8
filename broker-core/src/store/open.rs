//! Opening a store: the log's recovery scan from the checkpoint, and the
//! re-dispatch of every record it found past it (index entries that lag
//! the log are rebuilt here, before the store serves anything).

use super::*;

/// A record found by recovery past the checkpoint, to re-dispatch.
#[derive(Debug)]
struct Redo {
    topic: String,
    queue: u16,
    queue_offset: u64,
    id: Uuid,
    keys: Vec<String>,
    entry: Entry,
}

fn redo_of(pos: u64, size: usize, m: RecordMeta) -> Redo {
    Redo {
        entry: Entry {
            log_pos: pos,
            size: size as u32,
            tag_hash: m.tag_hash,
            stored_ms: m.stored_ms,
            copy: m.copy,
        },
        topic: m.topic,
        queue: m.queue,
        queue_offset: m.queue_offset,
        id: m.id,
        keys: m.keys,
    }
}

impl Store {
    /// Opens the store in `dir`, recovering from a crash if need be.
    pub fn open(dir: &Path, cfg: StoreConfig) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        let cp: Checkpoint = read_json(&dir.join("checkpoint.json"))?.unwrap_or_default();
        let mut redo = Vec::new();
        let log = Arc::new(CommitLog::open(
            &dir.join("log"),
            cfg.log.clone(),
            cp.scan_from,
            VecDeque::new(),
            |pos, size, m| {
                redo.push(redo_of(pos, size, m));
                Ok(())
            },
        )?);
        let end = log.durable();
        let topic_queues: HashMap<String, u16> =
            read_json(&dir.join("topics.json"))?.unwrap_or_default();
        let mut topics = TopicMap::default();
        for (name, n) in topic_queues {
            topics.insert(name.clone(), Arc::new(open_topic(dir, &name, n, end)?));
        }
        let keys = KeyIndex::open(&dir.join("keys.idx"), end)?;
        let store = Store {
            dir: dir.to_owned(),
            cfg,
            log: log.clone(),
            topics: RwLock::new(topics),
            dispatch: Arc::new(Dispatcher::new(log, keys, end)),
            dispatcher: Mutex::new(None),
            checkpoint: JsonFile::default(),
        };
        let n = redo.len();
        let mut metas = Vec::with_capacity(n.min(4096));
        let mut last = None;
        let mut buffers = crate::dispatch::Buffers::default();
        let mut redo = redo.into_iter().peekable();
        while redo.peek().is_some() {
            metas.clear();
            for r in redo.by_ref().take(4096) {
                metas.push(store.meta_of_redo(r, &mut last)?);
            }
            store.dispatch.write_entries(metas.iter(), &mut buffers)?;
        }
        for t in store.topics.read().map_err(|_| Error::Closed)?.values() {
            for q in &t.queues {
                q.assigned.store(q.len(), Ordering::Release);
            }
        }
        tracing::info!(dir = %dir.display(), end, redispatched = n, "store open");
        store.write_checkpoint()?;
        let handle = store.dispatch.start()?;
        *store.dispatcher.lock().map_err(|_| Error::Closed)? = Some(handle);
        Ok(store)
    }

    /// A recovered record's meta; creates its topic if the `topics.json`
    /// write that announced it was lost.
    fn meta_of_redo(&self, r: Redo, last: &mut Option<Arc<Topic>>) -> Result<Meta> {
        let topic = match last.as_ref().filter(|t| t.name == r.topic) {
            Some(t) => t.clone(),
            None => {
                let known = self
                    .topics
                    .read()
                    .map_err(|_| Error::Closed)?
                    .get(&r.topic)
                    .cloned();
                let t = match known {
                    Some(t) => t,
                    None => {
                        let n = r.queue.saturating_add(1).max(self.cfg.default_queues);
                        self.create_topic(&r.topic, n)?;
                        self.topic(&r.topic)?
                    }
                };
                *last = Some(t.clone());
                t
            }
        };
        let keys = KeyHashes::of(topic.crc, &topic.name, &r.keys);
        Ok(Meta {
            topic,
            queue: r.queue,
            queue_offset: r.queue_offset,
            id: r.id,
            keys,
            entry: r.entry,
        })
    }
}
