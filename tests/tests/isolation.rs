//! Tenant isolation: ANT and BETA share cells and logical names, and never
//! see, settle or learn the names of each other's messages. Logs hold no
//! tokens and no bodies.

#![allow(clippy::unwrap_used)]

use cellgate_tests::rocketmq::{start_on, Backend};
use cellgate_tests::server::{ANT, BETA};
use cellgate_tests::Api;
use serde_json::json;

cellgate_tests::on_both_backends!(
    /// On RocketMQ the tenants' topics and groups share one cluster: only
    /// their physical names (`NS|CELL%NAME`) keep them apart.
    tenants_share_names_but_nothing_else,
    tenants_share_names_but_nothing_else_on_rocketmq,
    isolation
);

async fn isolation(backend: Backend) {
    let (_d, _bed, s) = start_on(backend, &[]);
    let ant = Api::new(&s, ANT, "RZ00A");
    let beta = Api::new(&s, BETA, "RZ00A");
    let a = ant
        .publish(
            "T",
            &json!({"body": "ant-secret-body-1", "keys": ["k1"], "properties": {"p": "ant"}}),
        )
        .await
        .unwrap();
    beta.publish("T", &json!({"body": "beta-secret-body-2", "keys": ["k1"]}))
        .await
        .unwrap();

    let got_b = beta.receive("G", "T", &json!({})).await.unwrap();
    assert_eq!(got_b.len(), 1);
    assert_eq!(got_b[0]["body"], "beta-secret-body-2");
    let got_a = ant.receive("G", "T", &json!({})).await.unwrap();
    assert_eq!(got_a.len(), 1);
    assert_eq!(got_a[0]["body"], "ant-secret-body-1");

    // BETA cannot read ANT's message by id or key, in any cell.
    let id = a["message_id"].as_str().unwrap();
    let (st, v) = beta
        .get(&format!("/v1/topics/T/messages/{id}"))
        .await
        .unwrap();
    assert_eq!(st, 404, "{v}");
    let (st, v) = beta.get("/v1/topics/T/messages?key=k1").await.unwrap();
    assert_eq!(st, 200);
    let found = v["messages"].as_array().unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["body"], "beta-secret-body-2");
    // Nor settle it.
    let (st, v) = beta
        .post(
            "/v1/groups/G/topics/T/ack",
            &json!({"receipt_handles": [got_a[0]["receipt_handle"]]}),
        )
        .await
        .unwrap();
    assert_eq!(st, 400, "{v}");
    // Lag is per tenant.
    let (_, lag) = beta.get("/v1/groups/G/topics/T/lag").await.unwrap();
    assert_eq!(lag["lag"], 1);
    beta.ack("G", "T", &got_b).await.unwrap();
    let (_, lag) = beta.get("/v1/groups/G/topics/T/lag").await.unwrap();
    let (_, ant_lag) = ant.get("/v1/groups/G/topics/T/lag").await.unwrap();
    assert_eq!(
        (lag["lag"].clone(), ant_lag["lag"].clone()),
        (json!(0), json!(1))
    );

    // Nothing BETA is shown names ANT or a physical name.
    for text in [
        v.to_string(),
        lag.to_string(),
        found[0].to_string(),
        got_b[0].to_string(),
    ] {
        assert!(!text.contains("ANT") && !text.contains('|'), "{text}");
    }
    // The log has neither tokens nor bodies.
    drop(s.signal(nix::sys::signal::Signal::SIGTERM));
    std::thread::sleep(std::time::Duration::from_millis(500));
    let log = s.log_text();
    assert!(log.contains("listening"), "the log is being written: {log}");
    for secret in [ANT, BETA, "ant-secret-body-1", "beta-secret-body-2"] {
        assert!(!log.contains(secret), "the log contains {secret}");
    }
}
