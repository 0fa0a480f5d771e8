//! The transports: HTTP/1.1, h2c (prior knowledge), and TLS with ALPN h2,
//! with a client certificate standing in for a bearer token (mTLS).

#![allow(clippy::unwrap_used)]

use std::path::Path;

use cellgate_tests::server::ANT;
use cellgate_tests::{edited_example, Api, Server};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use serde_json::json;
use sha2::Digest;

#[tokio::test]
async fn h2c_and_http1() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        &cellgate_tests::example("ldc.yaml"),
        &dir.path().join("data"),
        &[],
    )
    .unwrap();
    for (client, version) in [
        (
            reqwest::Client::builder()
                .http2_prior_knowledge()
                .build()
                .unwrap(),
            reqwest::Version::HTTP_2,
        ),
        (
            reqwest::Client::builder().http1_only().build().unwrap(),
            reqwest::Version::HTTP_11,
        ),
    ] {
        let resp = client
            .post(s.url("/v1/topics/T/messages"))
            .bearer_auth(ANT)
            .header("X-Cell", "RZ00A")
            .json(&json!({"body": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.version(), version);
        assert_eq!(resp.status(), 200);
        let mut api = Api::new(&s, ANT, "RZ00A");
        api.http = client;
        let got = api.receive("G", "T", &json!({})).await.unwrap();
        assert_eq!(got.len(), 1);
        api.ack("G", "T", &got).await.unwrap();
    }
}

struct Pki {
    ca_pem: String,
    server_cert: String,
    server_key: String,
    client_pem: String,
    client_fingerprint: String,
    stranger_pem: String,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let leaf = |issuer: &CertifiedIssuer<'_, KeyPair>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["app.ant.example".to_owned()])
            .unwrap()
            .signed_by(&key, issuer)
            .unwrap();
        let fp = hex::encode(sha2::Sha256::digest(cert.der()));
        (format!("{}{}", cert.pem(), key.serialize_pem()), fp)
    };
    let (client_pem, client_fingerprint) = leaf(&ca);
    let mut other_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    other_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let other_ca =
        CertifiedIssuer::self_signed(other_params, KeyPair::generate().unwrap()).unwrap();
    let (stranger_pem, _) = leaf(&other_ca);
    Pki {
        ca_pem: ca.pem(),
        server_cert: server.pem(),
        server_key: server_key.serialize_pem(),
        client_pem,
        client_fingerprint,
        stranger_pem,
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[tokio::test]
async fn tls_with_alpn_h2_and_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    // ANT lists the client certificate's fingerprint like a token hash.
    let token = format!(
        "permissions: [publish, subscribe]\n      - name: ant-app-cert\n        sha256: {}\n        permissions: [publish, subscribe]\n    cells: [\"*\"]\n    topics:",
        pki.client_fingerprint
    );
    let (rules, _) = edited_example(
        dir.path(),
        "ldc.yaml",
        &[(
            "permissions: [publish, subscribe]\n    cells: [\"*\"]\n    topics:",
            &token,
        )],
    );
    let cert = write(dir.path(), "server.pem", &pki.server_cert);
    let key = write(dir.path(), "server.key", &pki.server_key);
    let ca = write(dir.path(), "ca.pem", &pki.ca_pem);
    let s = Server::start(
        &rules,
        &dir.path().join("data"),
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &ca,
        ],
    )
    .unwrap();
    let url = format!("https://127.0.0.1:{}/v1/topics/T/messages", s.addr.port());
    let root = reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap();
    let client = |identity: Option<&str>| {
        let mut b = reqwest::Client::builder()
            .add_root_certificate(root.clone())
            .use_rustls_tls();
        if let Some(pem) = identity {
            b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
        }
        b.build().unwrap()
    };
    // A bearer token over TLS; ALPN picks h2.
    let resp = client(None)
        .post(&url)
        .bearer_auth(ANT)
        .header("X-Cell", "RZ00A")
        .json(&json!({"body": "over tls"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    // The client certificate alone authenticates as ANT.
    let resp = client(Some(&pki.client_pem))
        .post(&url)
        .header("X-Cell", "RZ00A")
        .json(&json!({"body": "by certificate"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    // No certificate and no token: 401.
    let resp = client(None)
        .post(&url)
        .header("X-Cell", "RZ00A")
        .json(&json!({"body": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // A certificate from another CA fails the handshake.
    let r = client(Some(&pki.stranger_pem))
        .post(&url)
        .header("X-Cell", "RZ00A")
        .json(&json!({"body": "x"}))
        .send()
        .await;
    assert!(r.is_err() || r.unwrap().status() != 200);
    // Plain HTTP to the TLS port is not served.
    let r = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/healthz", s.addr.port()))
        .send()
        .await;
    assert!(r.is_err() || r.unwrap().status() != 200);
}
