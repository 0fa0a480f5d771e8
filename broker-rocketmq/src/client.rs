//! The connection to one RocketMQ cluster, and the routes of its topics.
//!
//! rocketmq-client-rust insists on its own tokio runtime (a `RuntimeOwner`)
//! with a `ClientRuntime` bound to it; its futures may be awaited from
//! cellgate's runtime. What the client offers, and what each part is used
//! for here, is in `docs/research/rocketmq-spike.md`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use cheetah_string::CheetahString;
use rocketmq_client_rust::{
    ClientConfig, ClientInstanceHandle, ClientRuntime, ClientRuntimeConfig, DefaultMQAdminExt,
    DefaultMQProducer, MQAdminReadExt, TelemetryHandle, TransactionListener, TransactionMQProducer,
};
use rocketmq_model::common::message::message_queue::MessageQueue;
use rocketmq_protocol::protocol::header::namesrv::topic_operation_header::TopicRequestHeader;
use rocketmq_protocol::RpcRequestHeader;
use rocketmq_runtime::{RuntimeConfig, RuntimeOwner};

use crate::error::{remote, Error};
use crate::Config;

/// One queue of a topic, on one broker (the master).
#[derive(Debug, Clone)]
pub(crate) struct QueueRef {
    pub broker_name: CheetahString,
    pub addr: CheetahString,
    pub queue_id: i32,
}

impl QueueRef {
    pub fn mq(&self, topic: &str) -> MessageQueue {
        MessageQueue::from_parts(topic, self.broker_name.clone(), self.queue_id)
    }

    /// The header offset calls need to name the broker.
    pub fn topic_header(&self) -> Option<TopicRequestHeader> {
        Some(TopicRequestHeader {
            lo: None,
            rpc: Some(RpcRequestHeader {
                broker_name: Some(self.broker_name.clone()),
                ..Default::default()
            }),
        })
    }
}

/// A topic's queues, numbered 0.. across its brokers in (broker name, queue
/// id) order: cellgate's queue `n` is `queues[n]`.
#[derive(Debug)]
pub(crate) struct Route {
    pub queues: Vec<QueueRef>,
}

/// Routes by topic, as looked up so far.
pub(crate) type RouteCache = Arc<RwLock<HashMap<String, Arc<Route>>>>;

/// The client side of one cluster.
pub(crate) struct Client {
    pub cfg: Config,
    /// Sends take `&self`: one producer serves every task.
    pub producer: DefaultMQProducer,
    /// `create_topic`, `view_message` and `query_message` take `&mut self`;
    /// they are rare, so one producer behind an async mutex serves them.
    pub admin: tokio::sync::Mutex<DefaultMQProducer>,
    /// The topic list (name server); `&mut` for start and shutdown only.
    pub lister: tokio::sync::Mutex<DefaultMQAdminExt>,
    /// Each handle serialises its calls (an async mutex inside the client),
    /// so concurrent pulls and offset calls spread over a few of them.
    handles: Vec<ClientInstanceHandle>,
    next: AtomicUsize,
    /// Topic → route. RwLock: read on every call, written when a route is
    /// first looked up or refreshed after a failure. Shared with the
    /// transaction listener, which cannot await a lookup.
    routes: RouteCache,
    client: Arc<ClientRuntime>,
    /// The client's runtime; shut down last.
    owner: Option<RuntimeOwner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("name_servers", &self.cfg.name_servers)
            .finish_non_exhaustive()
    }
}

/// Distinct instance names: two clients of one process that share a name
/// lose messages (spike, "broadcast").
fn instance_name(cfg: &Config, role: &str) -> CheetahString {
    CheetahString::from_string(format!(
        "cellgate-{}-{}-{role}",
        std::process::id(),
        cfg.instance
    ))
}

fn client_config(cfg: &Config, role: &str) -> ClientConfig {
    let mut c = ClientConfig::default();
    c.set_namesrv_addr(cfg.name_servers.join(";").into());
    c.set_instance_name(instance_name(cfg, role));
    // A transaction producer's group reaches the brokers with the next
    // heartbeat; until then the broker has nobody to check back with.
    c.set_heartbeat_broker_interval(HEARTBEAT_MS);
    c
}

/// Between heartbeats to the brokers: the client's minimum (RocketMQ's
/// default is 30 s).
const HEARTBEAT_MS: u32 = 10_000;

// === impl Client ===

impl Client {
    pub async fn connect(cfg: Config) -> Result<Client, Error> {
        let owner = RuntimeOwner::plan(RuntimeConfig {
            thread_name: "rocketmq-client".into(),
            worker_threads: cfg.client_threads,
            ..Default::default()
        })
        .map_err(|e| Error::Runtime(e.to_string()))?
        .build()
        .map_err(|e| Error::Runtime(e.to_string()))?;
        let client = ClientRuntime::try_new(
            owner.root_context().component("cellgate"),
            ClientRuntimeConfig::default(),
            TelemetryHandle::noop(),
        )
        .map_err(|e| remote("start the client runtime", &e))?;
        let producer = start_producer(&client, &cfg, "send").await?;
        let admin = start_producer(&client, &cfg, "admin").await?;
        let mut lister = DefaultMQAdminExt::new(client.clone());
        *lister.client_config_mut() = client_config(&cfg, "lister");
        lister
            .start()
            .await
            .map_err(|e| remote("start the admin client", &e))?;
        let mut handles = Vec::with_capacity(cfg.handles);
        for i in 0..cfg.handles.max(1) {
            // Domain ids keep each handle its own client instance.
            let domain = 1000 + cfg.instance * 64 + i as u64;
            let h = ClientInstanceHandle::get_or_create(
                &client,
                domain,
                client_config(&cfg, &format!("pull{i}")),
                None,
            )
            .map_err(|e| remote("create a client handle", &e))?;
            h.start()
                .await
                .map_err(|e| remote("start a client handle", &e))?;
            handles.push(h);
        }
        Ok(Client {
            cfg,
            producer,
            admin: tokio::sync::Mutex::new(admin),
            lister: tokio::sync::Mutex::new(lister),
            handles,
            next: AtomicUsize::new(0),
            routes: RouteCache::default(),
            client,
            owner: Some(owner),
        })
    }

    /// A handle for one call, round robin.
    pub fn handle(&self) -> &ClientInstanceHandle {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        &self.handles[i]
    }

    /// The topic's route, looked up once and cached.
    pub async fn route(&self, topic: &str) -> Result<Arc<Route>, cellgate_broker_core::Error> {
        if let Some(r) = self.routes.read().ok().and_then(|m| m.get(topic).cloned()) {
            return Ok(r);
        }
        self.refresh_route(topic).await
    }

    /// Looks the route up again (after a failure or a topic's creation).
    pub async fn refresh_route(
        &self,
        topic: &str,
    ) -> Result<Arc<Route>, cellgate_broker_core::Error> {
        let data = self
            .handle()
            .topic_route(topic, self.cfg.timeout_ms)
            .await
            .map_err(|e| {
                if crate::error::response_code(&e) == Some(crate::error::TOPIC_NOT_EXIST) {
                    cellgate_broker_core::Error::UnknownTopic(topic.to_owned())
                } else {
                    remote("look up a topic route", &e).into()
                }
            })?
            .ok_or_else(|| cellgate_broker_core::Error::UnknownTopic(topic.to_owned()))?;
        let mut queues = Vec::new();
        let mut qds = data.queue_datas.clone();
        qds.sort_by(|a, b| a.broker_name().cmp(b.broker_name()));
        for qd in &qds {
            // The master (broker id 0) takes writes and serves offsets.
            let Some(addr) = data
                .broker_datas
                .iter()
                .find(|b| b.broker_name() == qd.broker_name())
                .and_then(|b| b.broker_addrs().get(&0).cloned())
            else {
                continue;
            };
            for q in 0..qd.read_queue_nums().min(qd.write_queue_nums()) {
                queues.push(QueueRef {
                    broker_name: qd.broker_name().clone(),
                    addr: addr.clone(),
                    queue_id: q as i32,
                });
            }
        }
        if queues.is_empty() {
            return Err(cellgate_broker_core::Error::UnknownTopic(topic.to_owned()));
        }
        let route = Arc::new(Route { queues });
        if let Ok(mut m) = self.routes.write() {
            m.insert(topic.to_owned(), route.clone());
        }
        Ok(route)
    }

    /// The route cache, for the transaction listener (called synchronously
    /// by the client: it reads routes looked up before).
    pub fn route_cache(&self) -> RouteCache {
        self.routes.clone()
    }

    /// A started producer of `group` whose listener answers the broker's
    /// check-backs. It shares the send producer's client instance: that
    /// instance knows every broker cellgate sends to, so its heartbeats
    /// register the group with each (a producer of its own would know no
    /// broker until it sent something itself).
    pub async fn start_txn_producer(
        &self,
        group: &str,
        listener: impl TransactionListener,
    ) -> Result<TransactionMQProducer, Error> {
        let mut p = TransactionMQProducer::builder(self.client.clone())
            .producer_group(group)
            .name_server_addr(self.cfg.name_servers.join(";"))
            .client_config(client_config(&self.cfg, "send"))
            .send_msg_timeout(self.cfg.timeout_ms as u32)
            .transaction_listener(listener)
            .build();
        p.start()
            .await
            .map_err(|e| remote("start a transaction producer", &e))?;
        Ok(p)
    }

    /// Every topic the name server knows.
    pub async fn topic_names(&self) -> Result<Vec<String>, cellgate_broker_core::Error> {
        let list = self
            .lister
            .lock()
            .await
            .fetch_all_topic_list()
            .await
            .map_err(|e| remote("list topics", &e))?;
        Ok(list.topic_list.iter().map(|t| t.to_string()).collect())
    }

    /// Shuts the client down in the order the crate wants.
    pub async fn shutdown(&mut self) {
        self.producer.shutdown().await;
        self.admin.lock().await.shutdown().await;
        self.lister.lock().await.shutdown().await;
        for h in &self.handles {
            h.shutdown_owned().await;
        }
        let report = self.client.shutdown().await;
        if !report.is_healthy() {
            tracing::warn!(report = %report.to_json(), "RocketMQ client shut down unhealthy");
        }
        if let Some(owner) = self.owner.take() {
            let _ = owner.shutdown_tasks().await;
            let _ = owner.shutdown_background();
        }
    }
}

async fn start_producer(
    client: &Arc<ClientRuntime>,
    cfg: &Config,
    role: &str,
) -> Result<DefaultMQProducer, Error> {
    let mut p = DefaultMQProducer::builder(client.clone())
        .producer_group(format!("CELLGATE_{role}").to_uppercase())
        .name_server_addr(cfg.name_servers.join(";"))
        .client_config(client_config(cfg, role))
        .send_msg_timeout(cfg.timeout_ms as u32)
        .build();
    p.start()
        .await
        .map_err(|e| remote("start a producer", &e))?;
    Ok(p)
}
