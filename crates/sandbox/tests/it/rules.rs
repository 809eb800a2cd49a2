//! MiniMax's parameter rules, each refused with 2013 and MiniMax's wording.

use serde_json::{json, Value};

use crate::helpers::{data_url, png, t2v, TestSandbox};

async fn refused(sb: &TestSandbox, body: Value) -> String {
    let v = sb.create(&body).await;
    assert_eq!(v["task_id"], "", "{v}");
    assert_eq!(v["base_resp"]["status_code"], 2013, "{body} -> {v}");
    v["base_resp"]["status_msg"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn model_mode_resolution_duration() {
    let sb = TestSandbox::fast().await;
    let cases = [
        (
            json!({"model": "MiniMax-Hailuo-2.3-Fast", "prompt": "x"}),
            "invalid params, model MiniMax-Hailuo-2.3-Fast does not support Text-to-Video mode",
        ),
        (
            json!({"model": "MiniMax-Hailuo-2.3", "prompt": "x", "duration": 10, "resolution": "1080P"}),
            "invalid params, model MiniMax-Hailuo-2.3 does not support the combination of duration 10s and resolution 1080P",
        ),
        (
            json!({"model": "MiniMax-Hailuo-2.3", "prompt": "x", "resolution": "720P"}),
            "invalid params, model MiniMax-Hailuo-2.3 does not support resolution 720P, supported resolutions: 768P, 1080P",
        ),
        (
            json!({"model": "MiniMax-Hailuo-02", "prompt": "x", "resolution": "512P"}),
            "invalid params, model MiniMax-Hailuo-02 does not support resolution 512P, supported resolutions: 768P, 1080P",
        ),
        (
            json!({"model": "MiniMax-Hailuo-02", "prompt": "x", "duration": 5}),
            "invalid params, model MiniMax-Hailuo-02 does not support duration 5s, supported durations: 6s, 10s",
        ),
        (json!({"model": "hailuo-2.3", "prompt": "x"}), "invalid params, unsupported model: hailuo-2.3"),
        (json!({"prompt": "x"}), "invalid params, model is required"),
        (json!({"model": "MiniMax-Hailuo-2.3"}), "invalid params, prompt is required"),
        (json!({"model": "MiniMax-Hailuo-2.3", "prompt": "x", "duration": "6"}), "invalid params, duration must be an integer"),
        (json!({"model": "MiniMax-Hailuo-2.3", "prompt": "x", "aigc_watermark": "yes"}), "invalid params, aigc_watermark must be a boolean"),
    ];
    for (body, msg) in cases {
        assert_eq!(refused(&sb, body).await, msg);
    }
    let msg = refused(&sb, json!({"model": "MiniMax-Hailuo-2.3", "prompt": "x".repeat(2001)})).await;
    assert!(msg.starts_with("invalid params, prompt length 2001 exceeds"), "{msg}");

    // Accepted: exactly 2000 characters, the ignored flags, the 01 series at 720P.
    let ok = [
        json!({"model": "MiniMax-Hailuo-2.3", "prompt": "é".repeat(2000)}),
        json!({"model": "MiniMax-Hailuo-2.3", "prompt": "x", "aigc_watermark": true, "fast_pretreatment": true, "prompt_optimizer": false}),
        json!({"model": "MiniMax-Hailuo-02", "prompt": "x", "duration": 10, "resolution": "768P"}),
        json!({"model": "T2V-01-Director", "prompt": "x [Pan left]"}),
    ];
    for body in ok {
        sb.create_ok(&body).await;
    }
    let bad_json = sb
        .http
        .post(format!("{}/v1/video_generation", sb.base))
        .bearer_auth(&sb.key)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_json.status(), 200);
    let v: Value = bad_json.json().await.unwrap();
    assert_eq!(v["base_resp"]["status_code"], 2013);
    sb.sandbox.shutdown().await;
}

#[tokio::test]
async fn image_rules() {
    let sb = TestSandbox::fast().await;
    let i2v = |image: String| json!({"model": "MiniMax-Hailuo-2.3", "first_frame_image": image});
    let cases = [
        (data_url("image/png", &png(300, 600)), "short side must be greater than 300px"),
        (data_url("image/png", &png(400, 1000)), "aspect ratio 400x1000 is not supported"),
        (data_url("image/png", &png(1000, 400)), "aspect ratio 1000x400 is not supported"),
        (data_url("image/gif", b"GIF89a\x01\x00\x01\x00"), "format is not supported"),
        // The declared MIME type does not matter: the bytes do.
        (data_url("image/png", b"\xff\xd8\xff garbage"), "could not be read"),
        // A sound header over a broken body is caught at create, not at render time.
        (data_url("image/png", &png(640, 360)[..300]), "could not be read"),
        ("data:image/png;base64,@@@@".to_owned(), "is not valid base64"),
        ("ftp://example.com/a.png".to_owned(), "must be a public URL or a base64 data URL"),
    ];
    for (image, needle) in cases {
        let msg = refused(&sb, i2v(image)).await;
        assert!(msg.starts_with("invalid params, first_frame_image"), "{msg}");
        assert!(msg.contains(needle), "{msg} should contain {needle}");
    }
    // 20 MB or more is refused before any pixel is looked at.
    let big = data_url("image/png", &vec![0x89; 20 * 1024 * 1024]);
    assert!(refused(&sb, i2v(big)).await.contains("less than 20MB"));
    // Just inside the limits passes; the last frame is checked too.
    sb.create_ok(&i2v(data_url("image/jpeg", &png(301, 752)))).await;
    let fl = json!({"model": "MiniMax-Hailuo-02", "first_frame_image": data_url("image/png", &png(640, 360)),
                    "last_frame_image": data_url("image/png", &png(200, 200))});
    assert!(refused(&sb, fl).await.starts_with("invalid params, last_frame_image"));
    let fl23 = json!({"model": "MiniMax-Hailuo-2.3", "last_frame_image": data_url("image/png", &png(640, 360))});
    assert!(refused(&sb, fl23).await.contains("does not support First-and-Last-Frame-to-Video mode"));
    let t2v_with_image = json!({"model": "T2V-01", "first_frame_image": data_url("image/png", &png(640, 360))});
    assert!(refused(&sb, t2v_with_image).await.contains("T2V-01 does not support Image-to-Video mode"));
    let _ = t2v;
    sb.sandbox.shutdown().await;
}

#[tokio::test]
async fn images_by_http_url() {
    let sb = TestSandbox::fast().await;
    // Serve a PNG from a throwaway server.
    let image = png(640, 480);
    let app = axum::Router::new().route(
        "/a.png",
        axum::routing::get(move || {
            let image = image.clone();
            async move { ([("content-type", "image/png")], image) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let body = json!({"model": "MiniMax-Hailuo-2.3", "first_frame_image": format!("{base}/a.png")});
    let id = sb.create_ok(&body).await;
    let done = sb.wait_done(&id).await;
    assert_eq!((done["video_width"].as_u64(), done["video_height"].as_u64()), (Some(1024), Some(768)));
    let missing = json!({"model": "MiniMax-Hailuo-2.3", "first_frame_image": format!("{base}/missing.png")});
    assert!(refused(&sb, missing).await.contains("could not be downloaded: HTTP 404"));
    sb.sandbox.shutdown().await;
}
