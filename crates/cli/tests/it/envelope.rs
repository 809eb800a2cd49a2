//! Every refusal is JSON in Apiframe's envelope, also the ones axum's extractors make:
//! path segments that are not UTF-8 and callback bodies over axum's own 2 MiB limit.

use std::net::SocketAddr;

use reqwest::Method;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::TestApp;

#[tokio::test]
async fn path_segments_that_are_not_utf8_are_400_in_the_envelope_on_every_route() {
    // The engine runs, so the callback and results routes get as far as they can.
    let app = TestApp::spawn_engine(|_, _| {}).await;
    let key = app.create_key(100).await;
    let cases: [(Method, &str, &str, Option<&str>); 6] = [
        (Method::GET, "/v2/jobs/{id}", "/v2/jobs/%ff", Some(&key.key)),
        (Method::GET, "/v2/jobs/{id}/webhooks", "/v2/jobs/%ff/webhooks", Some(&key.key)),
        (Method::POST, "/v2/jobs/{id}/cancel", "/v2/jobs/%ff/cancel", Some(&key.key)),
        (Method::GET, "/v2/results/{id}/{file}", "/v2/results/%ff/token.mp4", None),
        (Method::GET, "/v2/results/{id}/{file}", &format!("/v2/results/{}/%ff.mp4", uuid::Uuid::new_v4()), None),
        (Method::POST, "/v1/minimax/callback/{id}/{token}", "/v1/minimax/callback/%ff/token", None),
    ];
    for (method, template, path, key) in cases {
        // `call` fails the test on a body that is not JSON.
        let r = app.call(method.clone(), template, path, key, None, &[]).await;
        assert_eq!(r.status, 400, "{method} {path}: {:?}", r.body);
        let message = r.body["error"].as_str().unwrap_or_else(|| panic!("{method} {path}: {:?}", r.body));
        assert!(message.contains("UTF-8"), "{method} {path}: {message}");
        assert_eq!(r.body.as_object().unwrap().len(), 1, "{method} {path}: {:?}", r.body);
    }
    assert_eq!(app.balance_and_ledger(key.account_id).await, (100, 100));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn callback_bodies_over_the_limit_are_413_in_the_envelope_whatever_their_size() {
    let app = TestApp::spawn_engine(|_, _| {}).await;
    let path = format!("/v1/minimax/callback/{}/token", uuid::Uuid::new_v4());
    // Over our 64 KiB limit, then over axum's own 2 MiB one, with and without a
    // declared length.
    for (size, chunked) in [(100 * 1024, false), (3 << 20, false), (3 << 20, true)] {
        let (status, body) = post_raw(app.addr, &path, &vec![b' '; size], chunked).await;
        assert_eq!(status, 413, "{size} bytes, chunked {chunked}: {body}");
        let body: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{size} bytes: not JSON ({e}): {body:?}"));
        assert!(body["error"].as_str().is_some_and(|m| m.contains("too large")), "{body}");
    }
    app.stop().await.unwrap();
}

/// Posts `body` over a raw connection and returns the status and the response body.
/// The server may answer before taking the whole body and close the connection, so the
/// answer is read while the body is still being written.
async fn post_raw(addr: SocketAddr, path: &str, body: &[u8], chunked: bool) -> (u16, String) {
    let conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = conn.into_split();
    let framing =
        if chunked { "Transfer-Encoding: chunked".to_string() } else { format!("Content-Length: {}", body.len()) };
    let head = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{framing}\r\nConnection: close\r\n\r\n");
    let body = body.to_vec();
    let writing = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        for chunk in body.chunks(64 * 1024) {
            if chunked {
                writer.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await?;
                writer.write_all(chunk).await?;
                writer.write_all(b"\r\n").await?;
            } else {
                writer.write_all(chunk).await?;
            }
        }
        if chunked {
            writer.write_all(b"0\r\n\r\n").await?;
        }
        std::io::Result::Ok(writer)
    });
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    // Up to the end of the response, or a reset after it.
    while let Ok(n) = reader.read(&mut buf).await {
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let _ = writing.await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status: {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}
